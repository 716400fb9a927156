"""The CLI as a new user runs it, on the tiny phantom protocol."""

from __future__ import annotations

import sqlite3

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from tests.conftest import tiny_protocol_text, write_case

runner = CliRunner()
FAST = ["--set", "batch_size=2", "--set", "encoder=resnet18"]


def bench(*args: str):
    return runner.invoke(app, list(args))


def error_line(result) -> str:
    """The one error line (progress lines may precede it), with no traceback."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert sum(ln.startswith("error") for ln in lines) == 1
    assert "Traceback" not in result.output
    return lines[-1]


def n_runs(results, status="completed") -> int:
    db = results / "labelbench.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM runs WHERE status = ?", (status,)).fetchone()[0]


def test_run_skip_force_and_report(tmp_path):
    results = tmp_path / "runs"
    r = bench(
        "run", "-m", "unet-scratch", "-b", "4slices", "-p", "tiny", "--results", str(results), *FAST
    )
    assert r.exit_code == 0, r.output
    assert "liver" in r.stdout and "mean" in r.stdout
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        run = conn.execute(
            "SELECT status, n_labeled, budget_ids, protocol_hash, git_commit, device, "
            "phases, peak_mem_mb, versions FROM runs"
        ).fetchone()
        dsc_rows = "SELECT count(*) FROM case_metrics WHERE metric = 'dsc'"
        n_rows = conn.execute(dsc_rows).fetchone()[0]
        dsc = conn.execute(
            "SELECT min(value), max(value) FROM case_metrics WHERE metric = 'dsc'"
        ).fetchone()
    assert run[0] == "completed" and run[1] == 4 and run[2].count(":") == 4
    assert '"fit"' in run[6] and '"predict"' in run[6] and run[7] > 0 and '"torch"' in run[8]
    assert n_rows == 2 * 13 and 0.0 <= dsc[0] <= dsc[1] <= 1.0
    # A run killed after its row was written and before its ceiling was: the rerun, which
    # finds the run done, writes the ceiling.
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM ceilings").fetchone()[0] > 0
        conn.execute("DELETE FROM ceilings")
    conn.close()
    again = bench(
        "run", "-m", "unet-scratch", "-b", "4slices", "-p", "tiny", "--results", str(results), *FAST
    )
    assert again.exit_code == 0 and "already completed" in again.stdout
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM ceilings").fetchone()[0] == 2 * 13 * 2
    conn.close()
    forced = bench(
        "run",
        "-m",
        "unet-scratch",
        "-b",
        "4slices",
        "-p",
        "tiny",
        "--results",
        str(results),
        *FAST,
        "--force",
    )
    assert forced.exit_code == 0 and n_runs(results) == 1
    two_seeds = bench(
        "run",
        "-m",
        "unet-scratch",
        "-b",
        "1pct",
        "-p",
        "tiny",
        "--results",
        str(results),
        *FAST,
        "--seed",
        "0",
        "--seed",
        "1",
    )
    assert two_seeds.exit_code == 0 and n_runs(results) == 3
    out = tmp_path / "report"
    rep = bench("report", "-p", "tiny", "--results", str(results), "--out", str(out))
    assert rep.exit_code == 0, rep.output
    text = (out / "LEADERBOARD.md").read_text()
    assert "unet-scratch" in text and "4slices" in text and "1pct" in text
    assert (out / "dsc_vs_labels.png").stat().st_size > 1000
    # The default protocol has no runs here: the error names the protocols that have some
    other = bench("report", "--results", str(results), "--out", str(tmp_path / "r2"))
    assert other.exit_code == 2
    assert "no completed runs for protocol 'phantom' (it has runs of: tiny" in other.stderr


def test_listing_commands():
    assert "unet-scratch" in bench("methods").stdout
    assert "iterations" in bench("methods", "--verbose").stdout
    r = bench("protocols")
    assert r.exit_code == 0 and "phantom" in r.stdout and "flare22" in r.stdout
    show = bench("protocol", "show", "tiny")
    assert show.exit_code == 0, show.output
    assert "4slices" in show.stdout and "test" in show.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-m", "unet-scrach", "-b", "1pct"],
            "unknown method 'unet-scrach' (did you mean: unet-scratch?)",
        ),
        (["-m", "unet-scratch", "-b", "1pc"], "no budget '1pc' (did you mean: 1pct"),
        (["-m", "unet-scratch", "-b", "1pct", "-p", "phantm"], "unknown protocol 'phantm'"),
        (["-m", "unet-scratch", "-b", "1pct", "--set", "iteratons=3"], "did you mean: iterations"),
        (
            ["-m", "unet-scratch", "-b", "1pct", "--set", "iterations=many"],
            "expected a value of type int",
        ),
        (["-m", "unet-scratch", "-b", "1pct", "--device", "tpu"], "--device tpu"),
        (["-m", "unet-scratch", "-b", "1pct", "--device", "cuda:x"], "--device cuda:x: expected"),
        (["-m", "unet-scratch", "-b", "1pct", "--seed", "-1"], "--seed -1: a seed is an integer"),
        (["-m", "unet-scratch", "-b", "1pct", "--save-predictions", "README.md/p"], "is a file"),
    ],
)
def test_bad_names_and_options(tmp_path, args, message):
    results = tmp_path / "runs"
    if "-p" not in args:
        args = [*args, "-p", "tiny"]
    r = bench("run", *args, "--results", str(results))
    assert r.exit_code == 2
    assert message in error_line(r)
    assert not results.exists()


def test_a_cuda_device_this_machine_lacks_is_one_line_before_any_work(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = tmp_path / "runs"
    for command in (
        ["run", "-m", "unet-scratch", "-b", "4slices"],
        ["sweep", "--methods", "unet-scratch", "--budgets", "4slices"],
    ):
        r = bench(*command, "-p", "tiny", "--device", "cuda", "--results", str(results))
        assert r.exit_code == 2 and "sees no CUDA device on this machine" in error_line(r)
    bad = bench("sweep", "--methods", "unet-scratch", "--budgets", "4slices", "--seeds", "0,-1")
    assert bad.exit_code == 2 and "--seeds: -1 is not a seed" in error_line(bad)
    assert not results.exists()


def test_pretrain_nproc_is_refused_for_a_method_without_data_parallel_pretraining(
    isolated, monkeypatch
):
    """simclr and mae have no DDP: `--nproc 2` would pretrain two full copies. One line,
    before torchrun or any data; the diffusion methods, which shard, are relaunched."""
    launched = []
    monkeypatch.setattr(
        "benchmark.distributed.relaunch", lambda nproc, args: launched.append(nproc) or 0
    )
    for method in ("simclr", "mae"):
        r = bench("pretrain", "-m", method, "-p", "tiny", "--device", "cpu", "--nproc", "2")
        assert r.exit_code == 2, r.output
        assert f"method '{method}' has no data-parallel pretraining" in error_line(r)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under the user's own torchrun
    r = bench("pretrain", "-m", "mae", "-p", "tiny", "--device", "cpu")
    assert r.exit_code == 2 and "each of 2 processes" in error_line(r)
    assert not launched and not list(isolated.iterdir())

    monkeypatch.delenv("WORLD_SIZE")
    ok = bench(
        "pretrain", "-m", "diffusion-linear", "-p", "tiny", "--device", "cpu", "--nproc", "2"
    )
    assert ok.exit_code == 0 and launched == [2], ok.output


def test_budget_larger_than_train_pool(tmp_path):
    proto = tmp_path / "huge.toml"
    proto.write_text(tiny_protocol_text() + '\n[budgets.huge]\nunit = "slices"\ncount = 100000\n')
    r = bench(
        "run",
        "-m",
        "unet-scratch",
        "-b",
        "huge",
        "-p",
        str(proto),
        "--results",
        str(tmp_path / "r"),
    )
    assert r.exit_code == 2
    assert "asks for 100000 labeled slices" in error_line(r)
    assert not (tmp_path / "r").exists()


def test_bad_data_is_one_line_and_nothing_written(tmp_path):
    root = tmp_path / "ds"
    for i in range(5):
        write_case(root / "imagesTr", f"c{i}", seed=i)
    write_case(root / "imagesTr", "c9", label_ids=(1, 99))
    results = tmp_path / "runs"
    r = bench(
        "run",
        "-m",
        "unet-scratch",
        "-b",
        "4slices",
        "-p",
        "tinypath",
        "--data",
        str(root),
        "--results",
        str(results),
    )
    assert r.exit_code == 2
    line = error_line(r)
    assert "c9.nii.gz" in line and "[99]" in line
    assert not results.exists()
    r = bench(
        "run", "-m", "unet-scratch", "-b", "4slices", "-p", "tinypath", "--results", str(results)
    )
    assert r.exit_code == 2 and "--data" in error_line(r)


def test_real_data_path_runs(tmp_path):
    root = tmp_path / "ds"
    for i in range(6):
        write_case(root / "imagesTr", f"c{i}", seed=i)
    results = tmp_path / "runs"
    r = bench(
        "run",
        "-m",
        "unet-scratch",
        "-b",
        "4slices",
        "-p",
        "tinypath",
        "--data",
        str(root),
        "--results",
        str(results),
        *FAST,
    )
    assert r.exit_code == 0, r.output
    assert n_runs(results) == 1


def test_data_phantom_command(tmp_path):
    out = tmp_path / "ph"
    r = bench(
        "data", "phantom", "--out", str(out), "--cases", "2", "--unlabeled", "1", "--size", "64"
    )
    assert r.exit_code == 0, r.output
    assert (
        len(list((out / "imagesTr").iterdir())) == 2
        and len(list((out / "labelsTr").iterdir())) == 2
    )
    again = bench("data", "phantom", "--out", str(out), "--cases", "2")
    assert again.exit_code == 2 and "not empty" in error_line(again)


def test_a_run_that_fails_in_fit_claims_no_finetune_samples(tmp_path, monkeypatch):
    from baselines.unet_scratch import UNetScratch

    def fail(self, labeled, ctx):
        raise RuntimeError("fit broke")

    monkeypatch.setattr(UNetScratch, "fit", fail)
    row = _failed_run(tmp_path, "finetune_samples")
    assert "fit broke" in row[0] and row[1] is None


def _failed_run(tmp_path, *columns: str) -> tuple:
    """`bench run` of unet-scratch on tiny, which must fail: its error and `columns`."""
    results = tmp_path / "runs"
    r = bench(
        "run", "-m", "unet-scratch", "-b", "4slices", "-p", "tiny", "--results", str(results), *FAST
    )
    assert r.exit_code == 1, r.output
    with sqlite3.connect(results / "labelbench.sqlite") as conn:
        status, *row = conn.execute(
            f"SELECT status, error, {', '.join(columns)} FROM runs"
        ).fetchone()
    conn.close()
    assert status == "failed"
    return tuple(row)


def test_a_run_that_fails_after_its_checks_keeps_them(tmp_path, monkeypatch):
    from baselines.unet_scratch import UNetScratch

    real = UNetScratch.predict
    calls = {"n": 0}

    def predict(self, images):  # the checks (validation, sanity gate) predict first
        calls["n"] += 1
        if getattr(self, "_checked", False):
            raise RuntimeError("predict broke")
        return real(self, images)

    from benchmark import runner as runner_module

    check = runner_module.check_fitted

    def checked(method, *args, **kwargs):
        trust = check(method, *args, **kwargs)
        method._checked = True
        return trust

    monkeypatch.setattr(UNetScratch, "predict", predict)
    monkeypatch.setattr(runner_module, "check_fitted", checked)
    error, val_dsc, train_dsc = _failed_run(tmp_path, "val_dsc", "train_dsc")
    assert "predict broke" in error
    assert val_dsc is not None and train_dsc is not None and calls["n"] > 0
