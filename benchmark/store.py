"""The results store: one SQLite file per results directory (WAL mode).

A completed run and all its per-case, per-organ rows are written in one transaction, so a
killed or failed run never leaves half its rows. Failed runs are recorded with their error;
`unfit` runs (fitted models that fail the sanity gate) with their scores and the reason.
A run's learning curve (samples seen, training loss, validation DSC) is kept in `curves`;
the protocol's ceiling (its test ground truth resized to the slice size and back, scored as
a prediction) in `ceilings`, once per protocol hash, data set and split.

Per-case scores are kept in long format, one row per (run, case, organ, metric), so a metric
declared by a protocol needs no column of its own; `metrics` and `ceilings` read them back
wide (one column per metric).

The schema carries a version (`PRAGMA user_version`); opening an older store migrates it in
place, step by step, in one transaction, keeping every row (`benchmark.store_schema`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.errors import StoreError, nearest_existing
from benchmark.provenance import Provenance
from benchmark.store_schema import SCHEMA, SCHEMA_VERSION, migrate, not_a_store

DEFAULT_RESULTS = Path("runs")
DB_NAME = "labelbench.sqlite"

FINISHED = ("completed", "unfit")
"""Statuses of a run that ran to its end (an unfit run is done: rerunning gives the same)."""
_FINISHED_SQL = f"({', '.join(repr(s) for s in FINISHED)})"

MetricRow = tuple[str, int, str, str, float]
"""(case_id, organ_id, organ, metric, value): one row of `case_metrics` (and of `ceilings`)."""
ROW_KEYS = ["case_id", "organ_id", "organ"]


def wide(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Long (…, metric, value) rows → one row per `keys` and one column per metric, metrics
    in order of first appearance, rows in order of first appearance."""
    if rows.empty:
        return pd.DataFrame(columns=keys)
    names = list(dict.fromkeys(rows["metric"]))
    table = rows.pivot_table(index=keys, columns="metric", values="value", sort=False)
    table = table.reindex(columns=names).reset_index()
    table.columns.name = None
    return table


JSON_COLUMNS = ("config", "budget_ids", "versions", "phases", "info", "real_ids")


@dataclass(frozen=True, kw_only=True)
class RunRecord(Provenance):
    """Everything recorded with one run's numbers: its `Provenance` and what follows."""

    run_id: str
    run_key: str
    status: str
    error: str | None
    method: str
    config: dict[str, Any]
    budget: str
    n_labeled: int
    budget_ids: list[str]
    seed: int
    peak_mem_mb: float
    info: dict[str, Any]
    off_protocol: str | None = None
    """Why the run's compute differs from the protocol's budget (None: on-protocol)."""
    finetune_samples: int | None = None
    """Labeled slices seen in fine-tuning (None: the method's own schedule)."""
    pretrain_samples: int | None = None
    """Unlabeled slices seen in pretraining (0: none)."""
    val_dsc: float | None = None
    """Mean DSC of the fitted model on the validation cases."""
    train_dsc: float | None = None
    """Sanity gate: mean 2D DSC on its own labeled slices, over the organs present."""
    code: str | None = None
    """Code fingerprint (`benchmark.fingerprint`); None: recorded before fingerprints."""
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    """Learning curve (samples seen, training loss, validation DSC), stored in `curves`."""


@dataclass(frozen=True, kw_only=True)
class GenerativeRecord(Provenance):
    """One `bench fidelity`: samples of a pretrained model scored against real test slices,
    with its `Provenance`.

    Keyed like a run: `gen_key` hashes the protocol, data, split, method, config, pretraining
    cache key, sampler, steps, n, seed and feature extractor (with its weights file).
    Metrics: fid, sfid, kid, kid_std (lower is better); precision, recall, f1 (higher is
    better); ms_ssim (mean pairwise MS-SSIM of the samples; lower is more diverse).
    """

    gen_id: str
    gen_key: str
    method: str
    pretrain_cache: str
    config: dict[str, Any]
    sampler: str
    steps: int
    n: int
    seed: int
    extractor: str
    extractor_weights: str
    real_ids: list[str]
    fid: float
    sfid: float
    precision: float
    recall: float
    f1: float
    kid: float
    kid_std: float
    ms_ssim: float
    info: dict[str, Any]
    code: str = ""
    """`benchmark.fingerprint.fidelity_code` of what made the row; '' for rows recorded
    before it was (code unknown)."""


def _insert(table: str, record: RunRecord | GenerativeRecord) -> tuple[str, dict[str, Any]]:
    """An INSERT of a record's fields (JSON columns serialised) and its named parameters."""
    values = {
        k: json.dumps(v, sort_keys=True) if k in JSON_COLUMNS else v
        for k, v in record.__dict__.items()
        if k != "curve"  # its own table
    }
    cols, marks = ", ".join(values), ", ".join(f":{k}" for k in values)
    return f"INSERT INTO {table} ({cols}) VALUES ({marks})", values


def _finished_run(conn: sqlite3.Connection, run_key: str) -> str | None:
    """The run_id of the finished run with this key, if any (at most one: `one_completed_run`)."""
    row = conn.execute(
        f"SELECT run_id FROM runs WHERE run_key = ? AND status IN {_FINISHED_SQL}", (run_key,)
    ).fetchone()
    return row[0] if row else None


def _use_wal(conn: sqlite3.Connection, patience_s: float = 60.0) -> None:
    """Put the store in WAL mode (persistent in the file, so this is a no-op once done).
    SQLite answers a journal-mode switch that races another opener with SQLITE_BUSY at once,
    without its busy handler, so several processes creating one store together retry here."""
    deadline = time.monotonic() + patience_s
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == 5  # SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


# SQLite's primary result codes (sqlite3.h) for a file that is damaged or not a database,
# and for one that cannot be opened, read or written; other errors are bugs, not user input.
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_UNUSABLE = {3, 8, 10, 13, 14}  # SQLITE_PERM, _READONLY, _IOERR, _FULL, _CANTOPEN
_LOCKED = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED: another process held it past LOCK_WAIT_S
LOCK_WAIT_S = 60.0
"""How long a store operation waits for another process's write to end."""


def check_results_dir(results_dir: Path) -> None:
    """Raise `StoreError` unless runs can be recorded under `results_dir`; creates nothing.

    Called before any work (data loading, training), so that a results path that is a file,
    lies under a file, or is not writable, or a damaged store, fails in a second, not after
    an hour of training.
    """
    folder = Path(results_dir)
    if folder.exists() and not folder.is_dir():
        raise StoreError(
            f"{folder}: the results path is a file, not a folder; give --results a folder"
        )
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise StoreError(
            f"{folder}: cannot create the results folder, {existing} is a file; give --results "
            f"a folder path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StoreError(f"{existing}: results folder is not writable; give --results another one")
    store = ResultsStore(folder)
    if store.path.exists() or store.path.is_symlink():
        if not store.path.is_file():
            raise StoreError(f"{store.path}: the results store is not a file; move it away")
        store.check()


class ResultsStore:
    """Open (and create) `<results_dir>/labelbench.sqlite`.

    A damaged file (flipped bytes, not SQLite at all) raises `StoreError` with the path and
    what to do, whether it shows at open or only when a query reaches the damaged page.
    """

    def __init__(self, results_dir: Path):
        self.path = Path(results_dir) / DB_NAME

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open results store ({exc})") from None
        with self._errors():
            conn = sqlite3.connect(self.path, timeout=LOCK_WAIT_S)
            try:
                if reason := not_a_store(conn):
                    raise StoreError(f"{self.path}: {reason}")
                _use_wal(conn, LOCK_WAIT_S)
                migrate(conn)
                if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    # A new store: its tables and its version in one transaction, so that a
                    # concurrent opener never takes new tables without a version for old ones
                    # and migrates them.
                    conn.executescript(
                        f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\n"
                        "COMMIT;"
                    )
                conn.execute("PRAGMA foreign_keys=ON")
                conn.executescript(SCHEMA)  # tables added since a store's version, if any
            except BaseException:
                conn.close()
                raise
        return conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite's errors about the file itself into one-line `StoreError`s (also when
        pandas wraps them in its own `DatabaseError`)."""
        try:
            yield
        except Exception as exc:
            cause = exc if isinstance(exc, sqlite3.DatabaseError) else exc.__cause__
            if not isinstance(cause, sqlite3.DatabaseError):
                raise
            code = (getattr(cause, "sqlite_errorcode", None) or 0) & 0xFF
            if code in _DAMAGED:
                raise StoreError(
                    f"{self.path}: the results store is damaged ({cause}); move it away to "
                    f"start a new one, or restore it from a backup"
                ) from None
            if code in _UNUSABLE:
                raise StoreError(f"{self.path}: cannot use the results store ({cause})") from None
            if code in _LOCKED:
                raise StoreError(
                    f"{self.path}: another process kept the results store locked for "
                    f"{LOCK_WAIT_S:.0f} s ({cause}); try again when it is done"
                ) from None
            raise

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """An open connection, closed after use, with its errors as in `_errors`."""
        with closing(self._connect()) as conn, self._errors():
            yield conn

    def check(self) -> None:
        """Open the store and run SQLite's `quick_check` over every page; `StoreError` if it
        is damaged. Cheap for a results store (megabytes)."""
        with self._connection() as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            lines = [ln for p in problems for ln in p.splitlines() if not ln.startswith("***")]
            raise StoreError(
                f"{self.path}: the results store is damaged ({(lines or problems)[0]}); move it "
                f"away to start a new one, or restore it from a backup"
            )

    def completed_run(self, run_key: str) -> str | None:
        """The run_id of the finished (completed or unfit) run with this key, if any."""
        if not self.path.exists():
            return None
        with self._connection() as conn:
            return _finished_run(conn, run_key)

    def write_run(
        self,
        record: RunRecord,
        metrics: Iterable[MetricRow] = (),
        replace: bool = False,
        supersedes: Sequence[str] = (),
    ) -> str | None:
        """Insert a run, its (case_id, organ_id, organ, metric, value) rows and its learning
        curve in one transaction.

        A finished run whose key already has a finished run (another sweep or `bench run`
        finished it meanwhile) is discarded, and the run_id of the one kept is returned, so
        that a run_id once reported stays in the store. `replace` (`--force`) deletes the
        earlier run instead. `supersedes`: run_ids deleted in the same transaction (a
        submission scored again). Returns None when `record` was written.
        """
        sql, values = _insert("runs", record)
        with self._connection() as conn, conn:
            conn.execute("BEGIN IMMEDIATE")  # no other writer between the look and the write
            conn.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r in supersedes])
            if record.status in FINISHED:
                if replace:
                    conn.execute(
                        f"DELETE FROM runs WHERE run_key = ? AND status IN {_FINISHED_SQL}",
                        (record.run_key,),
                    )
                elif kept := _finished_run(conn, record.run_key):
                    return kept
            conn.execute(sql, values)
            conn.executemany(
                "INSERT INTO case_metrics (run_id, case_id, organ_id, organ, metric, value) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(record.run_id, *m) for m in metrics],
            )
            conn.executemany(
                "INSERT INTO curves VALUES (?, ?, ?, ?)",
                [(record.run_id, *point) for point in record.curve],
            )
        return None

    def runs(
        self, protocol: str | None = None, status: str | tuple[str, ...] | None = "completed"
    ) -> pd.DataFrame:
        """Runs as a DataFrame (JSON columns left as JSON text); `status` one or several."""
        where, args = [], []
        if protocol is not None:
            where.append("protocol = ?")
            args.append(protocol)
        if status is not None:
            statuses = (status,) if isinstance(status, str) else status
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        with self._connection() as conn:
            return pd.read_sql_query(sql + " ORDER BY finished_at", conn, params=args)

    def metrics(self, run_ids: Iterable[str]) -> pd.DataFrame:
        """Per-case, per-organ rows of these runs, wide: run_id, case_id, organ_id, organ and
        one column per metric, in the order the metrics were recorded."""
        return wide(self._of_runs("case_metrics", run_ids), ["run_id", *ROW_KEYS])

    def curves(self, run_ids: Iterable[str]) -> pd.DataFrame:
        """Learning-curve points (run_id, samples, train_loss, val_dsc) of these runs."""
        return self._of_runs("curves", run_ids)

    def _of_runs(self, table: str, run_ids: Iterable[str]) -> pd.DataFrame:
        ids = list(run_ids)
        with self._connection() as conn:
            if not ids:
                return pd.read_sql_query(f"SELECT * FROM {table} WHERE 0", conn)
            marks = ", ".join("?" * len(ids))
            return pd.read_sql_query(
                f"SELECT * FROM {table} WHERE run_id IN ({marks}) ORDER BY rowid", conn, params=ids
            )

    def has_ceiling(self, protocol_hash: str, dataset_key: str, split_hash: str, code: str) -> bool:
        """Whether the ceiling of this protocol, data and split was scored by `code`."""
        if not self.path.exists():
            return False
        with self._connection() as conn:
            return (
                conn.execute(
                    "SELECT 1 FROM ceilings WHERE protocol_hash = ? AND dataset_key = ? "
                    "AND split_hash = ? AND code = ? LIMIT 1",
                    (protocol_hash, dataset_key, split_hash, code),
                ).fetchone()
                is not None
            )

    def write_ceiling(
        self,
        protocol_hash: str,
        dataset_key: str,
        split_hash: str,
        code: str,
        metrics: Iterable[MetricRow],
    ) -> None:
        """The protocol's ceiling as `code` scores it: (case_id, organ_id, organ, metric,
        value) rows, in one transaction. Ceilings scored by other code stay, for their runs."""
        keys = (protocol_hash, dataset_key, split_hash, code)
        columns = "protocol_hash, dataset_key, split_hash, code, case_id, organ_id, organ, metric"
        with self._connection() as conn, conn:
            conn.execute(
                "DELETE FROM ceilings WHERE protocol_hash = ? AND dataset_key = ? "
                "AND split_hash = ? AND code = ?",
                keys,
            )
            conn.executemany(
                f"INSERT INTO ceilings ({columns}, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*keys, *m) for m in metrics],
            )

    def ceilings(self) -> pd.DataFrame:
        """Every stored ceiling row, wide (one column per metric)."""
        with self._connection() as conn:
            rows = pd.read_sql_query("SELECT * FROM ceilings ORDER BY rowid", conn)
        return wide(rows, ["protocol_hash", "dataset_key", "split_hash", "code", *ROW_KEYS])

    def write_generative(self, record: GenerativeRecord) -> None:
        """Insert a generative-quality row in one transaction, replacing one with the same key."""
        sql, values = _insert("generative", record)
        with self._connection() as conn, conn:
            conn.execute("DELETE FROM generative WHERE gen_key = ?", (record.gen_key,))
            conn.execute(sql, values)

    def generative(self, protocol: str | None = None) -> pd.DataFrame:
        """Generative-quality rows as a DataFrame (JSON columns left as JSON text)."""
        sql, args = "SELECT * FROM generative", []
        if protocol is not None:
            sql, args = sql + " WHERE protocol = ?", [protocol]
        with self._connection() as conn:
            return pd.read_sql_query(sql + " ORDER BY finished_at", conn, params=args)
