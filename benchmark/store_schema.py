"""The results store's schema: the DDL of its tables, and the steps that bring an older store
to it.

The schema carries a version (`PRAGMA user_version`, `SCHEMA_VERSION`). A new store is made
from `SCHEMA`; an older one is migrated in place by `migrate`, step by step (`MIGRATIONS`),
in one transaction, keeping every row. `benchmark.store` opens stores and reads and writes
their rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

PROVENANCE_COLUMNS = {
    "protocol": "TEXT NOT NULL",
    "protocol_hash": "TEXT NOT NULL",
    "dataset_key": "TEXT NOT NULL",
    "split_hash": "TEXT NOT NULL",
    "versions": "TEXT NOT NULL",
    "git_commit": "TEXT NOT NULL",
    "device": "TEXT NOT NULL",
    "phases": "TEXT NOT NULL",
    "wall_s": "REAL NOT NULL",
    "started_at": "TEXT NOT NULL",
    "finished_at": "TEXT NOT NULL",
}
"""Column → SQL type of each field of `benchmark.provenance.Provenance`, in its order: the
columns that `runs` and `generative` share. Both tables have them in three groups
(`_provenance`), where their first versions put them."""


def _provenance(first: str, last: str) -> str:
    """The DDL lines of the provenance columns from `first` to `last`, in order."""
    names = list(PROVENANCE_COLUMNS)
    span = names[names.index(first) : names.index(last) + 1]
    return ",\n".join(f"    {name} {PROVENANCE_COLUMNS[name]}" for name in span)


_RUNS_V1_COLUMNS = f"""\
    run_id TEXT PRIMARY KEY,
    run_key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('completed', 'failed', 'unfit')),
    error TEXT,
{_provenance("protocol", "split_hash")},
    method TEXT NOT NULL,
    config TEXT NOT NULL,
    budget TEXT NOT NULL,
    n_labeled INTEGER NOT NULL,
    budget_ids TEXT NOT NULL,
    seed INTEGER NOT NULL,
{_provenance("versions", "wall_s")},
    peak_mem_mb REAL NOT NULL,
    info TEXT NOT NULL,
{_provenance("started_at", "finished_at")},
    off_protocol TEXT,
    finetune_samples INTEGER,
    pretrain_samples INTEGER,
    val_dsc REAL,
    train_dsc REAL"""
"""The columns of the runs table at version 1, frozen: step 0 → 1 builds exactly these,
and each later step adds its own (`RUNS_TABLE` is these plus theirs)."""

RUNS_TABLE = f"""
CREATE TABLE IF NOT EXISTS runs (
{_RUNS_V1_COLUMNS},
    code TEXT
);
"""

CASE_METRICS_TABLE = """
CREATE TABLE IF NOT EXISTS case_metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    case_id TEXT NOT NULL,
    organ_id INTEGER NOT NULL,
    organ TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, case_id, organ_id, metric)
);
"""

CEILINGS_TABLE = """
CREATE TABLE IF NOT EXISTS ceilings (
    protocol_hash TEXT NOT NULL,
    dataset_key TEXT NOT NULL,
    split_hash TEXT NOT NULL,
    code TEXT NOT NULL DEFAULT '',
    case_id TEXT NOT NULL,
    organ_id INTEGER NOT NULL,
    organ TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (protocol_hash, dataset_key, split_hash, code, case_id, organ_id, metric)
);
"""

SCHEMA = (
    RUNS_TABLE
    + """
CREATE UNIQUE INDEX IF NOT EXISTS one_completed_run ON runs (run_key)
    WHERE status IN ('completed', 'unfit');
CREATE TABLE IF NOT EXISTS curves (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    samples INTEGER NOT NULL,
    train_loss REAL NOT NULL,
    val_dsc REAL NOT NULL,
    PRIMARY KEY (run_id, samples)
);
"""
    + CASE_METRICS_TABLE
    + CEILINGS_TABLE
    + f"""
CREATE TABLE IF NOT EXISTS generative (
    gen_id TEXT PRIMARY KEY,
    gen_key TEXT NOT NULL UNIQUE,
{_provenance("protocol", "split_hash")},
    method TEXT NOT NULL,
    pretrain_cache TEXT NOT NULL,
    config TEXT NOT NULL,
    sampler TEXT NOT NULL,
    steps INTEGER NOT NULL,
    n INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    extractor TEXT NOT NULL,
    extractor_weights TEXT NOT NULL,
    real_ids TEXT NOT NULL,
    fid REAL NOT NULL,
    sfid REAL NOT NULL,
    precision REAL NOT NULL,
    recall REAL NOT NULL,
    f1 REAL NOT NULL,
    kid REAL NOT NULL,
    kid_std REAL NOT NULL,
    ms_ssim REAL NOT NULL,
{_provenance("versions", "wall_s")},
    info TEXT NOT NULL,
{_provenance("started_at", "finished_at")},
    code TEXT NOT NULL DEFAULT ''
);
"""
)

MIGRATED = (
    "recorded before the protocol's training budget: compute not matched, no validation "
    "selection, no sanity gate"
)


_RUNS_V1 = f"""
CREATE TABLE runs_migrated (
{_RUNS_V1_COLUMNS}
);
"""
"""The runs table of version 1 (see `_RUNS_V1_COLUMNS`), as step 0 → 1 builds it."""


def _to_v1_trust(conn: sqlite3.Connection) -> None:
    """0 → 1, the sanity gate: `unfit` status; compute, validation and gate columns; curves.

    The `runs` table is rebuilt (SQLite cannot change a CHECK constraint in place); foreign
    keys are off (see `migrate`), so dropping the old table does not cascade to
    `case_metrics`. Old runs trained without the protocol's training budget, validation or
    gate: they are marked off-protocol (shown, never ranked).
    """
    cols = ", ".join(r[1] for r in conn.execute("PRAGMA table_info(runs)"))
    conn.execute(_RUNS_V1)
    conn.execute(f"INSERT INTO runs_migrated ({cols}) SELECT {cols} FROM runs")
    conn.execute("DROP TABLE runs")  # its index goes with it; SCHEMA makes the new one
    conn.execute("ALTER TABLE runs_migrated RENAME TO runs")
    conn.execute("UPDATE runs SET off_protocol = ?", (MIGRATED,))


def _to_v2_code(conn: sqlite3.Connection) -> None:
    """1 → 2, code-versioned runs: the code fingerprint; NULL for older runs (code unknown)."""
    conn.execute("ALTER TABLE runs ADD COLUMN code TEXT")


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        is not None
    )


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _to_v3(conn: sqlite3.Connection) -> None:
    """2 → 3, declared metrics: scores in long format, each (dsc, nsd) row becoming a `dsc`
    row and an `nsd` row."""
    for table, ddl in (("case_metrics", CASE_METRICS_TABLE), ("ceilings", CEILINGS_TABLE)):
        if not _has_table(conn, table) or "metric" in _columns(conn, table):
            continue
        keys = [c for c in _columns(conn, table) if c not in ("dsc", "nsd")]
        cols = ", ".join(keys)
        conn.execute(ddl.replace(f"{table} (", f"{table}_long (", 1))
        for metric in ("dsc", "nsd"):
            conn.execute(
                f"INSERT INTO {table}_long ({cols}, metric, value) "
                f"SELECT {cols}, '{metric}', {metric} FROM {table} ORDER BY rowid"
            )
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE {table}_long RENAME TO {table}")


def _to_v4_ceiling_code(conn: sqlite3.Connection) -> None:
    """3 → 4, the ceiling keyed by the code that scored it (`benchmark.fingerprint.
    scoring_code`); older rows get '' (code unknown: matched by no run, scored again)."""
    if not _has_table(conn, "ceilings") or "code" in _columns(conn, "ceilings"):
        return  # none yet, or made by step 2 → 3 with today's table
    cols = ", ".join(_columns(conn, "ceilings"))
    conn.execute(CEILINGS_TABLE.replace("ceilings (", "ceilings_v4 (", 1))
    conn.execute(f"INSERT INTO ceilings_v4 ({cols}) SELECT {cols} FROM ceilings ORDER BY rowid")
    conn.execute("DROP TABLE ceilings")
    conn.execute("ALTER TABLE ceilings_v4 RENAME TO ceilings")


def _to_v5_generative_code(conn: sqlite3.Connection) -> None:
    """4 → 5, generative-quality rows record the code that made them
    (`benchmark.fingerprint.fidelity_code`); older rows get '' (code unknown)."""
    if _has_table(conn, "generative") and "code" not in _columns(conn, "generative"):
        conn.execute("ALTER TABLE generative ADD COLUMN code TEXT NOT NULL DEFAULT ''")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _to_v1_trust,
    _to_v2_code,
    _to_v3,
    _to_v4_ceiling_code,
    _to_v5_generative_code,
)
"""Step i brings a store of version i to version i + 1; append a step for a new version."""

SCHEMA_VERSION = len(MIGRATIONS)


def not_a_store(conn: sqlite3.Connection) -> str | None:
    """Why an SQLite file is not a results store this version can open, or None: it is one
    (of this or an older version), or it is empty (a new store). Read before anything is
    written, so a foreign database is never given our tables, migrated or switched to WAL."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        return (
            f"made by a newer labelbench (store version {version}; this one reads up to "
            f"{SCHEMA_VERSION}): upgrade labelbench to use it"
        )
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    if not tables or ("runs" in tables and "run_key" in _columns(conn, "runs")):
        return None
    return (
        f"an SQLite database but not a labelbench results store (its tables: "
        f"{', '.join(sorted(tables)[:5])}); give --results another folder"
    )


def migrate(conn: sqlite3.Connection) -> None:
    """Bring an older store to `SCHEMA_VERSION` in one transaction, keeping every row: the
    steps of `MIGRATIONS` from its version on, in order. A new store (no `runs` table yet)
    gets the current schema from `SCHEMA` instead."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return  # the usual case: no lock taken
    conn.execute("PRAGMA foreign_keys=OFF")  # outside a transaction, where it takes effect
    conn.execute("BEGIN IMMEDIATE")  # concurrent openers wait here, then see the new version
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION or not _has_table(conn, "runs"):
            conn.rollback()
            return
        for step in MIGRATIONS[version:]:
            step(conn)
        if conn.execute("PRAGMA foreign_key_check").fetchall():
            raise sqlite3.IntegrityError("migration would break case_metrics → runs")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
