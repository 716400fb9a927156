"""`bench sweep`: a grid in one command, pretraining once, failures recorded, no lost rows.

Methods here come from a toy third-party package (a nearest-class-mean classifier, fast on
the tiny phantom) with variants that fail, kill their worker, or take their time, so that
every path of the sweep runs for real: real processes, a real local Ray cluster, a real
SQLite store.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.errors import ConfigError
from benchmark.progress import Progress
from benchmark.store import ResultsStore
from benchmark.sweep import SweepRequest, method_overrides, run_sweep
from tests.conftest import tiny_protocol_text

TOY = '''
import json
import os
import time
from pathlib import Path
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.config import positive
from benchmark.method import Method

if os.environ.get("TOY_IMPORT_FAIL"):
    raise RuntimeError("toy cannot be imported here")


@dataclass(frozen=True)
class Config:
    sleep: float = 0.0
    workers: int = positive(1, execution=True)  # changes nothing the run computes


def _mark(name):
    folder = Path(os.environ["TOY_MARKS"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}").touch()


class ToyMean(Method):
    """Nearest class-mean intensity, with a label-free 'pretraining' of the pool's mean."""

    name = "toy-mean"
    summary = "toy: nearest class-mean intensity"
    Config = Config
    uses_pretraining = True

    def pretrain_key(self, seed):
        return {"toy": "mean"}  # one pretraining for every seed and budget

    def pretrain(self, unlabeled, ctx):
        cached = ctx.cache_dir / "stats.json"
        if not cached.exists():
            _mark("pretrain")
            time.sleep(float(os.environ.get("TOY_PRETRAIN_SLEEP", "0")))
            if os.environ.get("TOY_PRETRAIN_FAIL"):
                raise RuntimeError("toy pretraining failure")
            cached.write_text(json.dumps({"n": len(unlabeled)}))
            _mark("pretrained")

    def fit(self, labeled, ctx):
        _mark(f"fit_{self.name}")
        time.sleep(self.config.sleep)
        waits_for = os.environ.get("TOY_WAIT_FOR")  # a mark another run leaves
        for _ in range(600 if waits_for else 0):
            if any(Path(os.environ["TOY_MARKS"]).glob(f"{waits_for}*")):
                break
            time.sleep(0.1)
        x, y = labeled.images()[:, 0], labeled.labels()
        self.means = torch.tensor(
            [x[y == k].mean() if (y == k).any() else 10.0 for k in range(ctx.num_classes)]
        )

    def predict(self, images):
        return (images - self.means.view(1, -1, 1, 1)).abs().argmin(1)


class ToyPlain(ToyMean):
    name = "toy-plain"
    uses_pretraining = False


def _child_mark():
    _mark("grandchild")


class ToyKids(ToyPlain):
    """Starts a process of its own in `fit`, as nnU-Net does for its preprocessing."""

    name = "toy-kids"

    def fit(self, labeled, ctx):
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(target=_child_mark)
        child.start()
        child.join()
        super().fit(labeled, ctx)


def _sleeper():
    _mark(f"sleeper_{os.getpid()}")
    time.sleep(120)


class ToyStuck(ToyPlain):
    """A fit that starts a process of its own, then hangs: what an interrupted driver stops."""

    name = "toy-stuck"

    def fit(self, labeled, ctx):
        import multiprocessing

        multiprocessing.get_context("spawn").Process(target=_sleeper).start()
        _mark(f"stuck_{os.getpid()}")
        time.sleep(120)


class ToyPretrainCrash(ToyMean):
    name = "toy-pcrash"

    def pretrain_key(self, seed):
        return {"toy": "pcrash"}

    def pretrain(self, unlabeled, ctx):
        _mark("pcrash")
        os._exit(3)


class ToyFail(ToyMean):
    name = "toy-fail"
    uses_pretraining = False

    def fit(self, labeled, ctx):
        raise ValueError("toy failure")


class ToyCrash(ToyMean):
    name = "toy-crash"
    uses_pretraining = False

    def fit(self, labeled, ctx):
        _mark("crash")
        os._exit(3)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Install the toy package (a dist-info with entry points) and a folder for its marks."""
    site = tmp_path / "site"
    (site / "toy_methods").mkdir(parents=True)
    (site / "toy_methods" / "__init__.py").write_text(TOY)
    info = site / "toy_methods-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-methods\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""
        [labelbench.methods]
        toy-mean = toy_methods:ToyMean
        toy-plain = toy_methods:ToyPlain
        toy-kids = toy_methods:ToyKids
        toy-stuck = toy_methods:ToyStuck
        toy-pcrash = toy_methods:ToyPretrainCrash
        toy-fail = toy_methods:ToyFail
        toy-crash = toy_methods:ToyCrash
        """)
    )
    monkeypatch.syspath_prepend(str(site))
    marks = tmp_path / "marks"
    monkeypatch.setenv("TOY_MARKS", str(marks))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    )
    yield marks
    sys.modules.pop("toy_methods", None)


def marks(folder, name: str) -> int:
    return len(list(folder.glob(f"{name}-*"))) if folder.exists() else 0


def sweep(results, *args: str):
    return CliRunner().invoke(
        app, ["sweep", "-p", "tiny", "--results", str(results), "-q", "--device", "cpu", *args]
    )


def completed(results) -> list[tuple[str, str, int]]:
    runs = ResultsStore(results).runs()
    return sorted(zip(runs.method, runs.budget, runs.seed, strict=True))


def test_local_sweep_runs_the_grid_pretrains_once_and_skips_what_is_done(tmp_path, toy):
    results = tmp_path / "runs"
    r = sweep(
        results, "--methods", "toy-mean", "--budgets", "4slices,1pct", "--seeds", "0,1", "-j", "2"
    )
    assert r.exit_code == 0, r.output
    assert completed(results) == [("toy-mean", b, s) for b in ("1pct", "4slices") for s in (0, 1)]
    assert marks(toy, "pretrain") == 1, "one pretraining, before the runs that share it"
    metrics = ResultsStore(results).metrics(ResultsStore(results).runs().run_id)
    assert len(metrics) == 4 * 2 * 13  # runs × test cases × organs
    assert "4 completed, 0 unfit, 0 already done, 0 failed" in r.output

    again = sweep(results, "--methods", "toy-mean", "--budgets", "4slices,1pct", "--seeds", "0,1,2")
    assert again.exit_code == 0, again.output
    assert "2 completed, 0 unfit, 4 already done, 0 failed" in again.output
    assert marks(toy, "pretrain") == 1
    assert len(completed(results)) == 6


def test_an_execution_only_setting_reuses_the_finished_run_and_a_real_one_does_not(tmp_path, toy):
    """`workers` is declared execution-only: the run it would make is the finished one."""
    results = tmp_path / "runs"
    grid = ["--methods", "toy-plain", "--budgets", "4slices", "--seeds", "0"]
    assert "1 completed" in sweep(results, *grid).output
    same = sweep(results, *grid, "--set", "toy-plain:workers=4")
    assert same.exit_code == 0 and "0 completed, 0 unfit, 1 already done" in same.output
    other = sweep(results, *grid, "--set", "toy-plain:sleep=0.01")
    assert other.exit_code == 0 and "1 completed, 0 unfit, 0 already done" in other.output
    configs = sorted(json.dumps(json.loads(c)) for c in ResultsStore(results).runs().config)
    assert configs == ['{"sleep": 0.0, "workers": 1}', '{"sleep": 0.01, "workers": 1}']

    variants = [["toy-plain:workers=2"], ["toy-plain:workers=3"]]  # one run, planned once
    request = SweepRequest(
        ["toy-plain"], ["4slices"], [1], "tiny", "cpu", results, variants=variants
    )
    assert run_sweep(request, Progress(quiet=True)).count("completed") == 1
    assert len(ResultsStore(results).runs()) == 3


def test_a_new_unlabeled_pool_is_a_new_run_and_new_code_a_new_pretraining(
    tmp_path, toy, tiny_dataset, monkeypatch
):
    """A finished run is reused only on the pool it pretrained on; a cached pretraining only
    by the code (and package versions) that made it."""
    from tests.conftest import write_case

    results = tmp_path / "runs"
    monkeypatch.setenv("TINY_DATA", str(tiny_dataset))
    args = ["sweep", "-p", "tinypath", "--results", str(results), "-q", "--device", "cpu"]
    args += ["--methods", "toy-mean,toy-plain", "--budgets", "4slices", "--seeds", "0"]
    first = CliRunner().invoke(app, args)
    assert "2 completed, 0 unfit, 0 already done" in first.output, first.output
    assert marks(toy, "pretrain") == 1

    write_case(tiny_dataset / "imagesUnlabeled", "u_002", seed=102, with_label=False)
    pool = CliRunner().invoke(app, args)
    assert "1 completed, 0 unfit, 1 already done" in pool.output, pool.output  # toy-plain's
    assert marks(toy, "pretrain") == 2
    again = CliRunner().invoke(app, args)
    assert "0 completed, 0 unfit, 2 already done" in again.output, again.output

    monkeypatch.setattr("benchmark.runner.code_fingerprint", lambda module: f"edited-{module}")
    edited = CliRunner().invoke(app, args)
    assert "2 completed, 0 unfit, 0 already done" in edited.output, edited.output
    assert marks(toy, "pretrain") == 3, "a pretraining made by other code was reused"
    infos = [json.loads(i) for i in ResultsStore(results).runs()["info"] if "pretrain_code" in i]
    assert "edited-toy_methods" in {i["pretrain_code"] for i in infos}
    assert len({i["pool"] for i in infos}) == 2


def test_a_protocol_given_as_a_file_reaches_the_worker_processes(tmp_path, toy, monkeypatch):
    """Workers load the protocol file the driver loaded, not a name only the driver can find."""
    elsewhere = tmp_path / "mine" / "study.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(tiny_protocol_text().replace('name = "tiny"', 'name = "study"'))
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "runs"
    args = ["sweep", "-p", "mine/study.toml", "--results", str(results), "-q", "--device", "cpu"]
    r = CliRunner().invoke(
        app, [*args, "--methods", "toy-plain", "--budgets", "4slices", "--seeds", "0,1", "-j", "2"]
    )
    assert r.exit_code == 0, r.output
    assert completed(results) == [("toy-plain", "4slices", 0), ("toy-plain", "4slices", 1)]
    assert set(ResultsStore(results).runs().protocol) == {"study"}


def test_a_method_may_start_processes_of_its_own_in_a_parallel_sweep(tmp_path, toy):
    """Workers are not daemons: a method's own process pool (nnU-Net's) is allowed."""
    results = tmp_path / "runs"
    r = sweep(results, "--methods", "toy-kids", "--budgets", "4slices", "--seeds", "0,1", "-j", "2")
    assert r.exit_code == 0, r.output
    assert completed(results) == [("toy-kids", "4slices", 0), ("toy-kids", "4slices", 1)]
    assert marks(toy, "grandchild") == 2


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_an_interrupted_sweep_stops_its_workers_and_what_they_started(tmp_path, toy, monkeypatch):
    """The driver leaving early (here: its report raising, as Ctrl-C would) ends every running
    worker's process group, so no run, and no process of a run's, is left behind."""
    request = SweepRequest(
        methods=["toy-plain", "toy-stuck"], budgets=["4slices"], seeds=[0],
        protocol="tiny", device="cpu", results=tmp_path / "runs", jobs=2,
    )  # fmt: skip
    monkeypatch.setenv("TOY_WAIT_FOR", "sleeper_")  # toy-plain ends once the stuck run's own
    # process has started

    def interrupt(finished) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(request, Progress(quiet=True), interrupt)  # when toy-plain finishes
    pids = [int(p.name.split("-")[0].split("_")[1]) for p in toy.glob("s*_*")]
    assert len(pids) == 2, "the stuck fit and its own process both started"
    time.sleep(0.5)
    assert not any(_alive(pid) for pid in pids)


def test_a_terminated_sweep_stops_its_workers_and_what_they_started(tmp_path, toy):
    """SIGTERM (a batch job's time limit) to the driver ends like Ctrl-C: no worker, and no
    process of a worker's, goes on running; nothing half-written is left in the store."""
    args = ["sweep", "-p", "tiny", "--results", str(tmp_path / "runs"), "-q", "--device", "cpu"]
    args += ["--methods", "toy-stuck", "--budgets", "4slices", "--seeds", "0", "-j", "2"]
    driver = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *args])
    try:
        for _ in range(600):  # the stuck fit's own process has started
            if list(toy.glob("sleeper_*")):
                break
            time.sleep(0.1)
        sleepers = [int(p.name.split("-")[0].split("_")[1]) for p in toy.glob("sleeper_*")]
        assert len(sleepers) == 1
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=30) != 0
    finally:
        driver.kill()
    time.sleep(0.5)
    assert not _alive(sleepers[0])
    assert ResultsStore(tmp_path / "runs").runs().empty


@pytest.mark.slow  # about 30 s: phantom, two workers importing torch
def test_a_killed_driver_takes_its_workers_and_the_next_sweep_its_scratch_folder(
    tmp_path, toy, monkeypatch
):
    """SIGKILL runs no cleanup: the kernel ends the workers with their driver, and the next
    parallel sweep removes the scratch folder the driver left."""
    import tempfile

    from benchmark.processes import scratch_folder

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    args = ["sweep", "-p", "tiny", "--results", str(tmp_path / "runs"), "-q", "--device", "cpu"]
    args += ["--methods", "toy-plain", "--budgets", "4slices", "--seeds", "0,1", "-j", "2"]
    args += ["--set", "toy-plain:sleep=60"]
    env = {**os.environ, "TMPDIR": str(scratch)}
    driver = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *args], env=env)
    workers: list[int] = []
    try:
        for _ in range(1200):  # both workers are fitting
            workers = [int(p.name.rsplit("-", 2)[1]) for p in toy.glob("fit_toy-plain-*")]
            if len(workers) == 2:
                break
            time.sleep(0.1)
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        driver.kill()
        driver.wait()
        for _ in range(50):
            if not any(_alive(pid) for pid in workers):
                break
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "workers outlived their driver"
    finally:
        driver.kill()
        for pid in filter(_alive, workers):  # what a failing run of this test would leave
            os.kill(pid, signal.SIGKILL)
    (left,) = scratch.glob("labelbench-sweep-*")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with scratch_folder("labelbench-sweep-") as mine:
        assert list(scratch.iterdir()) == [mine]
    assert not left.exists()


def test_a_scratch_folder_is_removed_once_its_process_is_dead_and_its_lock_free(
    tmp_path, monkeypatch
):
    """Never a live sweep's: not while the pid in its name lives, nor while a live process
    (another host's, another pid namespace's) holds its lock."""
    import fcntl
    import tempfile

    from benchmark.data.cache import LOCK
    from benchmark.processes import scratch_folder

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"labelbench-sweep-{gone.pid}-dead0000"
    live = tmp_path / f"labelbench-sweep-{os.getpid()}-live0000"
    held = tmp_path / f"labelbench-sweep-{gone.pid}-held0000"
    older = tmp_path / "labelbench-sweep-k2j4_x9q"  # made before names carried a pid
    for folder in (dead, live, held, older):
        (folder / "run-x-0.pkl").parent.mkdir()
        (folder / "run-x-0.pkl").touch()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with (held / LOCK).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with scratch_folder("labelbench-sweep-") as mine:
            assert (mine / LOCK).exists() and mine.name.startswith(
                f"labelbench-sweep-{os.getpid()}-"
            )
            assert sorted(tmp_path.iterdir()) == sorted([live, held, older, mine])
    assert sorted(tmp_path.iterdir()) == sorted([live, held, older])


def test_a_worker_raising_outside_its_run_is_recorded_with_the_reason(tmp_path, toy, monkeypatch):
    """Not as 'worker process died twice': the error itself, after one attempt."""
    import toy_methods  # noqa: F401  (the driver has it; the spawned workers cannot import it)

    monkeypatch.setenv("TOY_IMPORT_FAIL", "1")
    request = SweepRequest(
        methods=["toy-plain"], budgets=["4slices"], seeds=[0], protocol="tiny", device="cpu",
        results=tmp_path / "runs", jobs=2,
    )  # fmt: skip
    assert run_sweep(request, Progress(quiet=True)).count("failed") == 1
    (error,) = ResultsStore(tmp_path / "runs").runs(status="failed").error
    assert "toy cannot be imported here" in error and "died" not in error


def first_mtime(folder, name: str) -> float:
    return min(p.stat().st_mtime for p in folder.glob(f"{name}-*"))


def test_parallel_runs_wait_only_for_their_own_pretraining(tmp_path, toy, monkeypatch):
    """With jobs, a run that needs no pretraining starts while another's is still going."""
    monkeypatch.setenv("TOY_PRETRAIN_SLEEP", "6")
    results = tmp_path / "runs"
    grid = ["--methods", "toy-mean,toy-plain", "--budgets", "4slices", "--seeds", "0", "-j", "2"]
    r = sweep(results, *grid)
    assert r.exit_code == 0, r.output
    assert completed(results) == [("toy-mean", "4slices", 0), ("toy-plain", "4slices", 0)]
    pretrained = first_mtime(toy, "pretrained")
    assert first_mtime(toy, "fit_toy-plain") < pretrained, "the plain run did not wait"
    assert first_mtime(toy, "fit_toy-mean") >= pretrained, "a run started before its pretraining"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failed_pretraining_fails_the_runs_that_need_it_only(tmp_path, toy, monkeypatch, jobs):
    monkeypatch.setenv("TOY_PRETRAIN_FAIL", "1")
    results = tmp_path / "runs"
    r = sweep(
        results, "--methods", "toy-mean,toy-plain", "--budgets", "4slices", "--seeds", "0,1",
        "-j", jobs,
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    failed = ResultsStore(results).runs(status="failed")
    assert sorted(failed.method) == ["toy-mean", "toy-mean"]
    assert set(failed.error) == {"pretraining failed: RuntimeError: toy pretraining failure"}
    assert marks(toy, "pretrain") == 1 and marks(toy, "fit_toy-mean") == 0
    assert completed(results)[-2:] == [("toy-plain", "4slices", 0), ("toy-plain", "4slices", 1)]


def test_a_dead_pretraining_worker_is_retried_once_then_fails_its_runs(tmp_path, toy):
    results = tmp_path / "runs"
    r = sweep(
        results, "--methods", "toy-pcrash,toy-plain", "--budgets", "4slices", "--seeds", "0",
        "-j", "2",
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    assert marks(toy, "pcrash") == 2, "one retry, then its runs are recorded as failed"
    failed = ResultsStore(results).runs(status="failed")
    assert list(failed.method) == ["toy-pcrash"]
    assert failed.error.iloc[0] == (
        "pretraining failed: its worker process died twice (exit code 3)"
    )
    assert ResultsStore(results).runs(status="completed").method.tolist() == ["toy-plain"]


@pytest.mark.parametrize(("jobs", "started"), [("1", 1), ("2", 2)])
def test_stop_after_starts_no_run_once_time_is_up(tmp_path, toy, jobs, started):
    """Runs under way finish; the rest are left out of the store for a later sweep."""
    results = tmp_path / "runs"
    r = sweep(
        results, "--methods", "toy-plain", "--budgets", "4slices", "--seeds", "0,1,2,3",
        "--set", "toy-plain:sleep=8", "--stop-after", "5", "-j", jobs,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"{started} completed" in r.output and f"{4 - started} not started" in r.output
    assert r.output.count("not started (--stop-after)") == 4 - started
    assert completed(results) == [("toy-plain", "4slices", s) for s in range(started)]
    bad = sweep(results, "--methods", "toy-plain", "--budgets", "4slices", "--stop-after", "0")
    assert bad.exit_code == 2 and "--stop-after takes positive seconds" in bad.output


def test_variants_add_one_run_per_setting_and_share_the_pretraining(tmp_path, toy):
    results = tmp_path / "runs"
    request = SweepRequest(
        methods=["toy-mean"],
        budgets=["4slices"],
        seeds=[0],
        protocol="tiny",
        device="cpu",
        results=results,
        variants=[["toy-mean:sleep=0.0"], ["toy-mean:sleep=0.01"]],
    )
    result = run_sweep(request, Progress(quiet=True))
    assert result.count("completed") == 2
    configs = sorted(json.loads(c)["sleep"] for c in ResultsStore(results).runs().config)
    assert configs == [0.0, 0.01]
    assert marks(toy, "pretrain") == 1
    again = run_sweep(request, Progress(quiet=True))
    assert again.count("skipped") == 2, "each variant is its own run key"


def test_failed_runs_are_recorded_the_sweep_goes_on_and_the_exit_code_says_so(tmp_path, toy):
    results = tmp_path / "runs"
    r = sweep(results, "--methods", "toy-fail,toy-mean", "--budgets", "4slices", "--seeds", "0,1")
    # 1, not the count of failed runs: 2 is bad input for every command
    assert r.exit_code == 1, r.output
    assert "2 completed, 0 unfit, 0 already done, 2 failed" in r.output
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        rows = conn.execute("SELECT method, status, error FROM runs ORDER BY method").fetchall()
        samples = conn.execute(
            "SELECT finetune_samples FROM runs WHERE method = 'toy-fail'"
        ).fetchall()
    assert [(m, s) for m, s, _ in rows] == [("toy-fail", "failed")] * 2 + [
        ("toy-mean", "completed")
    ] * 2
    assert all("toy failure" in e for m, _, e in rows if m == "toy-fail")
    # failed in fit: the samples it would have seen are not claimed as seen
    assert samples == [(None,), (None,)]


def test_a_dead_worker_is_retried_once_then_recorded_as_failed(tmp_path, toy):
    results = tmp_path / "runs"
    r = sweep(
        results,
        "--methods",
        "toy-crash,toy-mean",
        "--budgets",
        "4slices",
        "--seeds",
        "0",
        "-j",
        "2",
    )
    assert r.exit_code == 1, r.output
    assert marks(toy, "crash") == 2, "one retry, then recorded"
    failed = ResultsStore(results).runs(status="failed")
    assert list(failed.method) == ["toy-crash"] and "died twice" in failed.error.iloc[0]
    assert completed(results) == [("toy-mean", "4slices", 0)]


def test_bad_grid_is_one_line_before_any_work(tmp_path, toy):
    results = tmp_path / "runs"
    for args, message in (
        (["--methods", "toy-maen"], "toy-mean"),
        (["--methods", "toy-mean", "--budgets", "1pc"], "1pct"),
        (["--methods", "toy-mean", "--set", "toy-mean:nope=1"], "nope"),
        (["--methods", "toy-mean", "--set", "other:sleep=1"], "not in --methods"),
        (["--methods", "toy-mean", "--executor", "slurm"], "local, ray"),
        (["--methods", "toy-mean", "--seeds", "a"], "not an integer"),
    ):
        r = sweep(results, *args)
        errors = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert r.exit_code == 2 and len(errors) == 1 and message in errors[0], r.output
    assert not (results / "labelbench.sqlite").exists()


def test_ray_missing_is_one_line_before_data_or_store(results, toy, isolated, monkeypatch):
    """Not after the data is loaded and the store has its ceiling rows."""
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    before = (results / "labelbench.sqlite").read_bytes()
    for folder in (results, results.parent / "new"):
        r = sweep(folder, "--methods", "toy-plain", "--budgets", "4slices", "--executor", "ray")
        errors = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert r.exit_code == 2 and len(errors) == 1 and "needs Ray" in errors[0], r.output
    assert (results / "labelbench.sqlite").read_bytes() == before
    assert not (results.parent / "new").exists() and not list(isolated.iterdir())


@pytest.mark.parametrize(
    ("device", "cluster_gpus", "asked"), [("auto", 2.0, 1), ("auto", 0.0, 0), ("cpu", 2.0, 0)]
)
def test_ray_tasks_ask_for_a_gpu_when_auto_finds_them_in_the_cluster(device, cluster_gpus, asked):
    """A worker resolves `auto` on its node: it takes a GPU it finds there, so it must ask
    for one, or Ray places any number of runs on one GPU."""
    from types import SimpleNamespace

    from benchmark.sweep_ray import _submit_and_collect

    options = []

    class Task:
        def options(self, **opts):
            options.append(opts)
            return self

    cluster = {"CPU": 8.0, **({"GPU": cluster_gpus} if cluster_gpus else {})}
    ray = SimpleNamespace(cluster_resources=lambda: cluster, remote=lambda fn: Task())
    request = SweepRequest(["toy-plain"], ["4slices"], [0], "tiny", device, executor="ray")
    _submit_and_collect(ray, request, [], None, {})
    assert [o["num_gpus"] for o in options] == [asked, asked]  # pretraining and run tasks


def test_set_items_are_scoped_by_method():
    items = ["lr=0.1", "unet-scratch:iterations=5", "simclr:pretrain:x=1"]
    assert method_overrides(items, "unet-scratch") == ["lr=0.1", "iterations=5"]
    assert method_overrides(items, "mae") == ["lr=0.1"]
    with pytest.raises(ConfigError):
        method_overrides(["lr"], "mae")


def _bench(*args: str, results) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmark.cli", "sweep", "-p", "tiny", "-q"]
    cmd += ["--device", "cpu", "--results", str(results), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_sweep_started_again_finishes_only_the_missing_runs(tmp_path, toy):
    results = tmp_path / "runs"
    grid = ["--methods", "toy-mean", "--budgets", "4slices,1pct", "--seeds", "0,1"]
    proc = _bench(*grid, "--set", "sleep=1.5", results=results)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (results / "labelbench.sqlite").exists() and completed(results)
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = ResultsStore(results).runs()
    assert 1 <= len(first) < 4, "killed halfway"
    again = sweep(results, *grid, "--set", "sleep=1.5")
    assert again.exit_code == 0, again.output
    assert f"{4 - len(first)} completed, 0 unfit, {len(first)} already done" in again.output
    after = ResultsStore(results).runs()
    assert set(first.run_id) <= set(after.run_id) and len(after) == 4


def test_two_sweeps_writing_one_results_folder_at_once_lose_no_rows(tmp_path, toy):
    results = tmp_path / "runs"
    sweep(results, "--methods", "toy-mean", "--budgets", "4slices", "--seeds", "9")  # data cached
    a = _bench(
        "--methods", "toy-mean", "--budgets", "4slices,1pct", "--seeds", "0,1", results=results
    )
    b = _bench(
        "--methods", "toy-mean", "--budgets", "4slices,1pct", "--seeds", "2,3", results=results
    )
    assert a.wait(300) == 0, a.stdout.read()
    assert b.wait(300) == 0, b.stdout.read()
    runs = ResultsStore(results).runs()
    assert len(runs) == 9 and runs.run_key.nunique() == 9
    assert len(ResultsStore(results).metrics(runs.run_id)) == 9 * 2 * 13


def test_a_run_another_sweep_finished_meanwhile_is_kept_and_reported_done_elsewhere(
    tmp_path, toy, monkeypatch
):
    """Both sweeps found the run pending and ran it: the one that wrote first keeps its row
    (and the run_id it printed); the other says so and counts it as already done."""
    from dataclasses import replace

    from benchmark import sweep_local

    results = tmp_path / "runs"
    perform = sweep_local.perform

    def finished_elsewhere_meanwhile(prep, progress):
        rec, rows = perform(prep, progress)
        ResultsStore(results).write_run(replace(rec, run_id="theirs"), rows)
        return rec, rows

    monkeypatch.setattr(sweep_local, "perform", finished_elsewhere_meanwhile)
    r = sweep(results, "--methods", "toy-plain", "--budgets", "4slices", "--seeds", "0")
    assert r.exit_code == 0, r.output
    assert "done elsewhere meanwhile as run theirs" in " ".join(r.output.split())
    assert "0 completed, 0 unfit, 1 already done, 0 failed" in r.output
    assert list(ResultsStore(results).runs(status=None).run_id) == ["theirs"]

    forced = sweep(results, "--methods", "toy-plain", "--budgets", "4slices", "--seeds", "0",
                   "--force")  # fmt: skip
    assert "1 completed" in forced.output, forced.output
    (mine,) = ResultsStore(results).runs(status=None).run_id
    assert mine != "theirs" and f"(run {mine})" in " ".join(forced.output.split())


@pytest.mark.slow
def test_ray_executor_on_a_real_local_cluster(tmp_path, toy):
    results = tmp_path / "runs"
    r = sweep(
        results, "--methods", "toy-mean,toy-crash,toy-fail", "--budgets", "4slices,1pct",
        "--seeds", "0", "--executor", "ray",
    )  # fmt: skip
    assert r.exit_code == 1 and "4 failed" in r.output, r.output
    assert completed(results) == [("toy-mean", "1pct", 0), ("toy-mean", "4slices", 0)]
    assert marks(toy, "pretrain") == 1
    assert marks(toy, "crash") == 4, "each crashing task ran twice: Ray retried it once"
    failed = ResultsStore(results).runs(status="failed")
    assert sorted(failed.method) == ["toy-crash"] * 2 + ["toy-fail"] * 2
    again = sweep(
        results,
        "--methods",
        "toy-mean",
        "--budgets",
        "4slices,1pct",
        "--seeds",
        "0",
        "--executor",
        "ray",
    )
    assert again.exit_code == 0 and "0 completed, 0 unfit, 2 already done" in again.output


def test_a_worker_that_keys_the_run_otherwise_than_the_driver_does_no_work(
    isolated, tmp_path, monkeypatch
):
    """A worker on another node prepares the run from its own cache, code and packages; a
    run keyed otherwise would be stored under a key the driver never finds. It stops before
    any work, and the driver never stores a run under an unplanned key."""
    from benchmark.progress import Progress
    from benchmark.runner import RunRequest, prepare
    from benchmark.sweep_worker import _planned, pretrain_point, run_point, worker_env

    request = RunRequest("diffusion-linear", "4slices", protocol="tiny", device="cpu",
                         results=tmp_path / "runs")  # fmt: skip
    # A worker sets its environment and thread count: restored after this test.
    monkeypatch.setattr(os, "environ", os.environ.copy())
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    prep = prepare(request, Progress(quiet=True))
    assert _planned(prep, prep.run_key) is prep
    for point in (run_point, pretrain_point):
        with pytest.raises(RuntimeError, match="the driver planned 0000000000"):
            point(request, worker_env(), 1, expected="0" * 64)
    assert not (isolated / "pretrain").exists()  # stopped before pretraining


def test_verify_reaches_a_sweeps_workers(monkeypatch):
    """`--verify` is a context variable in the driver; a worker process sees it through its
    environment, so the unlabeled pool it reads is verified too."""
    from benchmark.data.cache import VERIFY_ENV, verify_requested, verifying
    from benchmark.sweep_worker import worker_env

    monkeypatch.delenv(VERIFY_ENV, raising=False)
    assert VERIFY_ENV not in worker_env()
    with verifying(True):
        env = worker_env()
    assert env[VERIFY_ENV] == "1" and not verify_requested()
    monkeypatch.setenv(VERIFY_ENV, env[VERIFY_ENV])  # as os.environ.update(env) in a worker
    assert verify_requested()


def test_usable_cpus_follow_the_affinity_mask():
    """A job bound to one CPU (taskset, a batch scheduler) plans for one, not the machine's."""
    import os

    from benchmark.processes import usable_cpus

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert usable_cpus() == 1
    finally:
        os.sched_setaffinity(0, mask)
    assert 1 <= usable_cpus() <= len(mask)
