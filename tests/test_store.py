from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import replace

import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmark import store_schema
from benchmark.cli import app
from benchmark.errors import StoreError
from benchmark.store import SCHEMA_VERSION, ResultsStore, RunRecord, check_results_dir


def record(run_id="r1", key="k1", status="completed", error=None) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        run_key=key,
        status=status,
        error=error,
        protocol="p",
        protocol_hash="h",
        dataset_key="d",
        split_hash="s",
        method="m",
        config={"a": 1},
        budget="1pct",
        n_labeled=3,
        budget_ids=["c:0001"],
        seed=0,
        versions={"torch": "x"},
        git_commit="abc",
        device="cpu",
        phases={"fit": 1.0},
        wall_s=1.0,
        peak_mem_mb=10.0,
        info={},
        started_at="t0",
        finished_at="t1",
    )


ROWS = [
    ("c1", 1, "liver", "dsc", 0.9),
    ("c1", 1, "liver", "nsd", 0.8),
    ("c1", 2, "right_kidney", "dsc", 0.7),
    ("c1", 2, "right_kidney", "nsd", 0.6),
]


def test_write_and_read_back(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_run(record(), ROWS)
    assert store.completed_run("k1") == "r1"
    runs = store.runs("p")
    assert list(runs.run_id) == ["r1"] and runs.config[0] == '{"a": 1}'
    wide = store.metrics(["r1"])
    assert list(wide.columns) == ["run_id", "case_id", "organ_id", "organ", "dsc", "nsd"]
    assert wide[["dsc", "nsd"]].to_numpy().tolist() == [[0.9, 0.8], [0.7, 0.6]]
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_runs_are_recorded_but_not_completed(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_run(record(status="failed", error="RuntimeError: boom"))
    assert store.completed_run("k1") is None
    failed = store.runs(status="failed")
    assert failed.error[0] == "RuntimeError: boom"


def test_force_replaces_completed_run_in_one_transaction(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_run(record(), ROWS)
    assert store.write_run(record(run_id="r2"), ROWS[:2], replace=True) is None
    assert store.completed_run("k1") == "r2"
    assert len(store.metrics(["r1"])) == 0 and len(store.metrics(["r2"])) == 1


def test_a_second_finished_run_of_one_key_is_discarded_and_the_first_kept(tmp_path):
    """Two sweeps that both ran a run: the one written first stays, so the run_id it reported
    is in the store; the later write says which run it found and writes nothing."""
    store = ResultsStore(tmp_path)
    assert store.write_run(record(), ROWS) is None
    later = replace(record(run_id="r2", status="unfit", error="sanity"), curve=[(4, 0.5, 0.1)])
    assert store.write_run(later, ROWS[:2]) == "r1"
    assert list(store.runs(status=None).run_id) == ["r1"]
    assert len(store.metrics(["r1"])) == 2 and len(store.metrics(["r2"])) == 0
    assert store.curves(["r2"]).empty
    assert store.write_run(record(run_id="r3", status="failed", error="boom")) is None
    assert sorted(store.runs(status=None).run_id) == ["r1", "r3"]


def test_a_failing_write_leaves_nothing(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_run(record(), ROWS)
    with pytest.raises(sqlite3.IntegrityError):
        # duplicate metric rows violate the primary key half-way through the insert
        store.write_run(replace(record(run_id="r3"), run_key="k2"), [ROWS[0], ROWS[0]])
    assert store.completed_run("k2") is None
    assert len(store.metrics(["r3"])) == 0 and store.completed_run("k1") == "r1"


def test_a_damaged_store_is_a_store_error_at_open_and_on_queries(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_run(record(), [(f"c{i}", 1, "liver", 0.5, 0.5) for i in range(300)])
    raw = bytearray(store.path.read_bytes())
    for i in range(4096, len(raw)):  # every page after the schema
        raw[i] ^= 0xFF
    store.path.write_bytes(bytes(raw))
    for query in (lambda: store.metrics(["r1"]), store.runs, lambda: check_results_dir(tmp_path)):
        with pytest.raises(StoreError, match=r"labelbench.sqlite: the results store is damaged"):
            query()
    store.path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match="file is not a database.*move it away"):
        store.completed_run("k1")


@pytest.mark.parametrize(
    ("ddl", "version", "message"),
    [
        ("CREATE TABLE foo (x INTEGER);", 0, r"not a labelbench results store \(its tables: foo\)"),
        ("CREATE TABLE runs (id INTEGER);", 0, r"not a labelbench results store \(its tables: ru"),
        ("", SCHEMA_VERSION + 1, "made by a newer labelbench"),
    ],
)
def test_another_programs_database_is_refused_and_left_as_it_was(tmp_path, ddl, version, message):
    """Before, our tables were added to it (or its own `runs` table crashed a migration)."""
    path = tmp_path / "labelbench.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(f"{ddl} PRAGMA user_version = {version};")
    before = path.read_bytes()
    for action in (lambda: check_results_dir(tmp_path), ResultsStore(tmp_path).runs):
        with pytest.raises(StoreError, match=message):
            action()
    assert path.read_bytes() == before and not (tmp_path / "labelbench.sqlite-wal").exists()
    r = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" not in r.output and "labelbench.sqlite" in r.output


def test_results_dir_is_checked_without_creating_it(tmp_path):
    check_results_dir(tmp_path / "new" / "runs")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="results path is a file"):
        check_results_dir(tmp_path / "file")
    with pytest.raises(StoreError, match="is a file; give --results a folder"):
        check_results_dir(tmp_path / "file" / "runs")


V1_TABLES = """
CREATE TABLE case_metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    case_id TEXT NOT NULL, organ_id INTEGER NOT NULL, organ TEXT NOT NULL,
    dsc REAL NOT NULL, nsd REAL NOT NULL, PRIMARY KEY (run_id, case_id, organ_id)
);
CREATE TABLE ceilings (
    protocol_hash TEXT NOT NULL, dataset_key TEXT NOT NULL, split_hash TEXT NOT NULL,
    case_id TEXT NOT NULL, organ_id INTEGER NOT NULL, organ TEXT NOT NULL,
    dsc REAL NOT NULL, nsd REAL NOT NULL,
    PRIMARY KEY (protocol_hash, dataset_key, split_hash, case_id, organ_id)
);
"""


@pytest.mark.parametrize("version", [1, 2])
def test_a_v1_or_v2_store_is_migrated_to_long_metrics_in_place(tmp_path, version):
    """Scores in wide columns (dsc, nsd) become long rows; nothing is lost or changed."""
    runs_v1 = store_schema.RUNS_TABLE.replace(",\n    code TEXT", "")
    assert "code" not in runs_v1
    db = tmp_path / "labelbench.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(runs_v1 + V1_TABLES)
        if version == 2:
            conn.execute("ALTER TABLE runs ADD COLUMN code TEXT")
        conn.execute(f"PRAGMA user_version = {version}")
    fields = {k: _json(v) for k, v in vars(record()).items() if k not in ("curve", "code")}
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"INSERT INTO runs ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
            list(fields.values()),
        )
        conn.executemany(
            "INSERT INTO case_metrics VALUES ('r1', ?, ?, ?, ?, ?)",
            [("c1", 1, "liver", 0.9, 0.8), ("c2", 1, "liver", 0.5, 0.25)],
        )
        conn.execute("INSERT INTO ceilings VALUES ('h', 'd', 's', 'c1', 1, 'liver', 1.0, 0.75)")
    store = ResultsStore(tmp_path)
    wide = store.metrics(["r1"])
    assert wide[["case_id", "dsc", "nsd"]].to_numpy().tolist() == [
        ["c1", 0.9, 0.8],
        ["c2", 0.5, 0.25],
    ]
    assert store.ceilings()[["dsc", "nsd"]].to_numpy().tolist() == [[1.0, 0.75]]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store_schema.SCHEMA_VERSION
        cols = [r[1] for r in conn.execute("PRAGMA table_info(case_metrics)")]
        assert cols == ["run_id", "case_id", "organ_id", "organ", "metric", "value"]
        assert "code" in [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
        assert conn.execute("SELECT count(*) FROM case_metrics").fetchone()[0] == 4
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert store.runs().run_id.tolist() == ["r1"]  # runs kept as they were (not re-marked)
    assert store.runs().off_protocol.isna().all()
    store.write_run(record("r2", "k2"), [("c1", 1, "liver", "hd95", 3.5)])
    assert store.metrics(["r2"])["hd95"].tolist() == [3.5]


def _json(value: object) -> object:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def _columns(db) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return [(r[1], r[2]) for r in conn.execute("PRAGMA table_info(runs)")]


def test_a_version_1_store_gets_the_code_column_keeping_every_row(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "labelbench.sqlite") as conn:
        v1 = store_schema._RUNS_V1.replace("runs_migrated", "runs")
        curves = store_schema.SCHEMA[
            store_schema.SCHEMA.index("CREATE TABLE IF NOT EXISTS curves") :
        ]
        conn.executescript(v1 + V1_TABLES + curves[: curves.index(");") + 2])
        conn.execute("PRAGMA user_version = 1")
        values = {k: _json(v) for k, v in vars(record("v1run", "k-v1")).items()}
        del values["curve"], values["code"]
        marks = ", ".join("?" * len(values))
        conn.execute(
            f"INSERT INTO runs ({', '.join(values)}) VALUES ({marks})", list(values.values())
        )
        conn.executemany(
            "INSERT INTO case_metrics VALUES ('v1run', ?, ?, ?, ?, ?)",
            [("c1", 1, "liver", 0.9, 0.8), ("c1", 2, "right_kidney", 0.7, 0.6)],
        )
        conn.execute("INSERT INTO curves VALUES ('v1run', 4, 0.5, 0.3)")
    v1_store = ResultsStore(old)
    runs = v1_store.runs()
    assert list(runs["run_id"]) == ["v1run"] and runs["code"].isna().all()
    assert v1_store.completed_run("k-v1") == "v1run"
    assert len(v1_store.metrics(["v1run"])) == 2 and len(v1_store.curves(["v1run"])) == 1
    assert runs["off_protocol"].isna().all()  # only step 0 → 1 marks runs off-protocol
    v1_store.write_run(replace(record("v2run", "k-v2"), code="core-method-packages"), ROWS)
    assert v1_store.runs().set_index("run_id").loc["v2run", "code"] == "core-method-packages"
    with sqlite3.connect(old / "labelbench.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    ResultsStore(tmp_path / "new").runs()  # a new store, made from the current schema
    assert _columns(old / "labelbench.sqlite") == _columns(tmp_path / "new" / "labelbench.sqlite")


def test_openers_of_a_new_store_at_once_never_take_it_for_an_old_one(tmp_path):
    """Tables and version are created in one transaction: an opener in between would see
    tables at version 0 and migrate a new store."""
    import threading

    for trial in range(10):
        errors: list[Exception] = []

        def open_store(folder=tmp_path / str(trial), errors=errors) -> None:
            try:
                ResultsStore(folder).runs()
            except Exception as exc:  # collected: a thread cannot fail the test itself
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with sqlite3.connect(tmp_path / str(trial) / "labelbench.sqlite") as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_runs_and_generative_share_the_provenance_columns(tmp_path):
    """`Provenance`'s fields are the columns `PROVENANCE_COLUMNS` declares, in both tables."""
    from dataclasses import fields

    from benchmark.provenance import Provenance

    declared = store_schema.PROVENANCE_COLUMNS
    assert list(declared) == [f.name for f in fields(Provenance)]
    ResultsStore(tmp_path).runs()
    with sqlite3.connect(tmp_path / "labelbench.sqlite") as conn:
        for table in ("runs", "generative"):
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            found = {r[1]: f"{r[2]} NOT NULL" if r[3] else r[2] for r in info}
            assert {name: found[name] for name in declared} == declared


def test_a_store_locked_past_the_wait_is_one_line(tmp_path, monkeypatch):
    """Another process holding a write lock: a StoreError naming the file, not a traceback."""
    from benchmark import store as store_module

    store = ResultsStore(tmp_path)
    store.write_run(record(), ROWS)
    monkeypatch.setattr(store_module, "LOCK_WAIT_S", 0.2)
    with closing(sqlite3.connect(store.path, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match=r"labelbench.sqlite: another process kept .* locked"):
            store.write_run(record("r2", "k2"), ROWS)
        holder.execute("ROLLBACK")
    store.write_run(record("r2", "k2"), ROWS)
    assert len(store.runs()) == 2


V3_CEILINGS = """
CREATE TABLE ceilings (
    protocol_hash TEXT NOT NULL, dataset_key TEXT NOT NULL, split_hash TEXT NOT NULL,
    case_id TEXT NOT NULL, organ_id INTEGER NOT NULL, organ TEXT NOT NULL,
    metric TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (protocol_hash, dataset_key, split_hash, case_id, organ_id, metric)
);
"""


def test_a_version_3_ceiling_gets_a_code_and_each_code_keeps_its_own(tmp_path):
    """Ceilings scored before they were keyed by code keep their rows under code '' (matched
    by no run); a ceiling scored by new code does not replace the one of older runs."""
    from benchmark.report.tables import ceiling_scores

    path = tmp_path / "labelbench.sqlite"
    today = store_schema.CEILINGS_TABLE
    with closing(sqlite3.connect(path)) as conn, conn:
        v3 = store_schema.SCHEMA.replace(today, V3_CEILINGS)
        conn.executescript(v3 + "PRAGMA user_version = 3;")
        conn.execute("INSERT INTO ceilings VALUES ('h', 'd', 's', 'c1', 1, 'liver', 'dsc', 0.9)")
    store = ResultsStore(tmp_path)
    old = store.ceilings()
    assert old[["code", "dsc"]].to_numpy().tolist() == [["", 0.9]]
    store.write_ceiling("h", "d", "s", "new-pk", [("c1", 1, "liver", "dsc", 0.7)])
    store.write_ceiling("h", "d", "s", "old-pk", [("c1", 1, "liver", "dsc", 0.8)])
    store.write_ceiling("h", "d", "s", "new-pk", [("c1", 1, "liver", "dsc", 0.6)])  # again
    assert store.has_ceiling("h", "d", "s", "old-pk") and not store.has_ceiling("h", "d", "s", "x")
    runs = pd.DataFrame(
        {"protocol_hash": ["h", "h", "h"], "dataset_key": ["d"] * 3, "split_hash": ["s"] * 3,
         "code": ["new-m1-pk", "new-m2-pk", None]}
    )  # fmt: skip
    assert ceiling_scores(runs, store.ceilings()) == {"dsc": 0.6}
    assert ceiling_scores(runs.assign(code=["old-m-pk"] * 3), store.ceilings()) == {"dsc": 0.8}
    assert ceiling_scores(runs.assign(code=["old-m-pk", "new-m-pk", None]), store.ceilings()) == {}


def test_a_version_4_store_gets_the_generative_code_column_keeping_its_rows(tmp_path):
    ResultsStore(tmp_path).runs()  # today's schema, then taken back to version 4
    db = tmp_path / "labelbench.sqlite"
    with closing(sqlite3.connect(db)) as conn, conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(generative)")]
        assert columns[-1] == "code"
        conn.execute("ALTER TABLE generative DROP COLUMN code")
        values = {c: (1 if c in ("steps", "n", "seed") else 0.5 if c[0] in "fkmpsrw" else c)
                  for c in columns[:-1]}  # fmt: skip
        values.update(gen_id="g1", gen_key="k1", protocol="p", method="m", sampler="ddim")
        conn.execute(
            f"INSERT INTO generative ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            list(values.values()),
        )
        conn.execute("PRAGMA user_version = 4")
    gen = ResultsStore(tmp_path).generative()
    assert list(gen.gen_id) == ["g1"] and gen.code.tolist() == [""]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [r[1] for r in conn.execute("PRAGMA table_info(generative)")] == columns
