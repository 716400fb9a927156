from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from benchmark.errors import StoreError
from benchmark.store import ResultsStore, RunRecord, check_results_dir


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


ROWS = [("c1", 1, "liver", 0.9, 0.8), ("c1", 2, "right_kidney", 0.7, 0.6)]


def test_write_and_read_back(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_run(record(), ROWS)
    assert store.completed_run("k1") == "r1"
    runs = store.runs("p")
    assert list(runs.run_id) == ["r1"] and runs.config[0] == '{"a": 1}'
    assert len(store.metrics(["r1"])) == 2
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
    store.write_run(record(run_id="r2"), ROWS[:1])
    assert store.completed_run("k1") == "r2"
    assert len(store.metrics(["r1"])) == 0 and len(store.metrics(["r2"])) == 1


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


def test_results_dir_is_checked_without_creating_it(tmp_path):
    check_results_dir(tmp_path / "new" / "runs")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="results path is a file"):
        check_results_dir(tmp_path / "file")
    with pytest.raises(StoreError, match="is a file; give --results a folder"):
        check_results_dir(tmp_path / "file" / "runs")
