"""Credible results: compute from the protocol, validation selection, curves, the sanity gate."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from baselines.unet_scratch import UNetScratch
from benchmark.augment import random_affine, random_intensity
from benchmark.cli import app
from benchmark.compute import Compute, configure, settle, steps_for
from benchmark.data.context import load_data
from benchmark.method import SliceSet
from benchmark.metrics.registry import Scoring
from benchmark.metrics.segmentation import SliceOrder, score_case
from benchmark.progress import Progress
from benchmark.protocol import load_protocol
from benchmark.store import SCHEMA_VERSION, ResultsStore
from benchmark.supervised import draw_streams, optimize
from benchmark.validation import CurvePoint, Selection, Validator, may_be_undertrained, sanity_dsc
from methods.diffusion.linear import DiffusionLinear
from tests.conftest import TINY_TRAINING, perf_script, tiny_protocol_text

runner = CliRunner()


def bench(*args: str):
    return runner.invoke(app, list(args))


# --------------------------------------------------------------------------- compute


def test_steps_come_from_the_protocols_samples_budget():
    training = load_protocol("phantom").training
    config, compute = configure(UNetScratch, ["batch_size=6"], training)
    assert config.iterations == steps_for(38400, 6) == 6400
    assert (compute.finetune_samples, compute.pretrain_samples) == (38400, 0)
    assert compute.off_protocol is None


def test_pretraining_methods_see_the_same_unlabeled_samples():
    training = load_protocol("phantom").training
    ddpm, c1 = configure(DiffusionLinear, [], training)
    assert ddpm.pretrain_iterations * ddpm.pretrain_batch_size == training.pretrain_samples
    from baselines.mae import MAE
    from baselines.simclr import SimCLR

    for cls in (SimCLR, MAE):
        cfg, c2 = configure(cls, [], training)
        assert c2.pretrain_samples == c1.pretrain_samples == 12800, cls
        assert cfg.pretrain_iterations * cfg.pretrain_batch_size == 12800


def test_a_set_that_changes_compute_is_off_protocol():
    training = load_protocol("phantom").training
    _, compute = configure(UNetScratch, ["iterations=300"], training)
    assert "iterations=300 × batch_size=8 is 2400 finetune samples" in compute.off_protocol
    # Steps that match the budget stay on-protocol
    _, same = configure(UNetScratch, ["iterations=4800"], training)
    assert same.off_protocol is None
    # Presets set the model and batch, the protocol the length: the paper preset stays on it
    paper, on = configure(DiffusionLinear, ["preset=paper"], training)
    assert on.off_protocol is None and paper.pretrain_iterations == 12800 // 16
    _, longer = configure(DiffusionLinear, ["pretrain_iterations=100000"], training)
    assert "pretrain_iterations=100000" in longer.off_protocol


def test_a_method_on_its_own_schedule_is_off_protocol():
    class OwnSchedule(UNetScratch):
        name = "own"
        compute = None

    _, compute = configure(OwnSchedule, [], load_protocol("phantom").training)
    assert compute.finetune_samples is None and "own schedule" in compute.off_protocol


def test_a_batch_chosen_in_fit_is_settled_from_the_steps_it_reports():
    """nnU-Net's batch comes from its plan: its samples are known, and checked, after fit."""
    from baselines.nnunet import NNUNet

    training = load_protocol("phantom").training
    _, compute = configure(NNUNet, [], training)
    assert compute.finetune_in_fit and compute.finetune_samples is None
    assert compute.off_protocol is None and compute.pretrain_samples == 0
    on = settle(compute, (19200, 2), training)
    assert (on.finetune_samples, on.off_protocol) == (38400, None)
    assert settle(compute, (12800, 3), training).off_protocol is None  # 38400 ÷ 3
    assert settle(compute, (5486, 7), training).off_protocol is None  # rounded up: 38402
    longer = settle(compute, (20000, 2), training)
    assert longer.finetune_samples == 40000
    assert "20000 steps × batch 2 is 40000 finetune samples" in longer.off_protocol
    assert "did not report" in settle(compute, None, training).off_protocol
    unet = configure(UNetScratch, [], training)[1]
    assert settle(unet, (1, 1), training) is unet  # a declared batch is settled in prepare


# --------------------------------------------------------------------------- selection


class Counter(torch.nn.Module):
    """A 'model' whose one weight is the step count; its validation score is scripted."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


@pytest.mark.parametrize("select", [True, False])
def test_selection_keeps_the_best_validated_weights(select):
    model = Counter()
    scores = iter([0.2, 0.7, 0.5, 0.6])
    curve: list[CurvePoint] = []
    sel = Selection(model, lambda: next(scores), batch_size=2, steps=8, every_samples=4,
                    select=select, curve=curve)  # fmt: skip
    for step in range(1, 9):
        with torch.no_grad():
            model.w.fill_(step)
        sel.step(loss=float(step))
    info: dict = {}
    kept = sel.finish(info)
    assert [p.samples for p in curve] == [4, 8, 12, 16]
    assert [p.train_loss for p in curve] == [1.5, 3.5, 5.5, 7.5]  # mean since the last point
    if select:
        assert kept == 0.7 and model.w.item() == 4 and info["selection"]["kept_samples"] == 8
    else:
        assert kept == 0.6 and model.w.item() == 8


def test_validation_gives_each_module_back_its_own_mode():
    """A model that trains with a frozen part in eval mode (batch norm statistics kept) has
    that part in eval mode still after a validation, and the rest back in training."""
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 2))
    model.train()
    model[0].eval()
    seen = []
    sel = Selection(model, lambda: seen.append(model.training) or 0.5, batch_size=1, steps=2,
                    every_samples=1, select=False, curve=[])  # fmt: skip
    sel.step(loss=1.0)
    assert seen == [False], "validated in eval mode"
    assert model.training and model[1].training and not model[0].training


@pytest.mark.parametrize("steps", [23, 100, 120])
def test_optimize_validates_the_model_of_each_due_step_and_keeps_every_loss(steps):
    """Losses are read in batches, yet each validation sees the weights of its own step and
    the curve's losses are every step's, as if read one by one."""
    model = Counter()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    curve: list[CurvePoint] = []
    seen: list[float] = []

    def score() -> float:
        seen.append(model.w.item())
        return 0.0

    sel = Selection(model, score, batch_size=1, steps=steps, every_samples=7, select=False,
                    curve=curve)  # fmt: skip
    step = iter(range(1, steps + 1))

    def step_loss() -> torch.Tensor:
        i = next(step)
        with torch.no_grad():
            model.w.fill_(i)
        return model.w * 0 + i  # loss i at step i, with a gradient

    losses = optimize(step_loss, opt, sched, steps, Progress(quiet=True).task("t", steps), sel)
    assert losses == [float(i) for i in range(1, steps + 1)]
    due = [i for i in range(1, steps + 1) if i % 7 == 0 or i == steps]
    assert seen == [float(i) for i in due]
    assert [p.samples for p in curve] == due
    starts = [0, *due[:-1]]
    assert [p.train_loss for p in curve] == [
        np.mean(range(a + 1, b + 1)) for a, b in zip(starts, due, strict=True)
    ]


def test_a_fits_random_streams_drawn_up_front_are_the_step_by_step_ones(tiny_data):
    _, rows = tiny_data.budget_rows(tiny_data.protocol.budget("1pct"), 0)
    labeled = SliceSet(tiny_data.store, rows, labeled=True)
    idx, affine, intensity = draw_streams(labeled, 4, 12, 3, True, torch.device("cpu"))
    batches = labeled.batches(4, np.random.default_rng(3))
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(4, 1, 16, 16), torch.randint(0, 3, (4, 16, 16))
    for i in range(12):
        assert np.array_equal(idx[i].numpy(), next(batches))
        stepwise = random_affine(x, y, gen)
        upfront = random_affine(x, y, None, uniforms=affine[i])
        assert torch.equal(stepwise[0], upfront[0]) and torch.equal(stepwise[1], upfront[1])
        assert torch.equal(
            random_intensity(x, gen), random_intensity(x, None, uniforms=intensity[i])
        )
    none = draw_streams(labeled, 4, 12, 3, False, torch.device("cpu"))
    assert torch.equal(none[0], idx) and none[1].numel() == 0 and none[2].numel() == 0
    with pytest.raises(ValueError, match="uniform draws"):
        random_affine(x, y, None, uniforms=affine[0][:2])


@pytest.mark.parametrize(
    ("scores", "flagged"),
    [
        ([0.1, 0.3, 0.5, 0.6, 0.62, 0.63, 0.64, 0.65, 0.66, 0.70], True),  # still rising
        ([0.1, 0.3, 0.5, 0.6, 0.62, 0.63, 0.64, 0.65, 0.66, 0.665], False),  # flattened
        ([0.1, 0.5, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6], False),  # peaked early
        ([0.5], False),
    ],
)
def test_may_be_undertrained(scores, flagged):
    curve = [CurvePoint(100 * (i + 1), 0.0, s) for i, s in enumerate(scores)]
    assert may_be_undertrained(curve) is flagged


# --------------------------------------------------------------------------- scorers


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    import os

    folder = tmp_path_factory.mktemp("protos")
    (folder / "tinyval.toml").write_text(tiny_protocol_text().replace('"tiny"', '"tinyval"'))
    old = {k: os.environ.get(k) for k in ("LABELBENCH_PROTOCOLS", "LABELBENCH_CACHE")}
    os.environ["LABELBENCH_PROTOCOLS"] = str(folder)
    os.environ["LABELBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield load_data(load_protocol("tinyval"), None, Progress(quiet=True))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_validator_scores_the_ground_truth_high_and_background_low(tiny_data):
    val = Validator(tiny_data.store, tiny_data.split.val, tiny_data.protocol)
    rows = val.slices.rows
    truth = torch.from_numpy(np.asarray(tiny_data.store.labels[rows], dtype=np.int64))
    # The resized ground truth, upsampled back, is the protocol's ceiling: high but below 1.
    assert 0.6 < val.score_slices(truth) <= 1.0
    background = val.score(lambda x: torch.zeros(len(x), *x.shape[2:], dtype=torch.long))
    # Organs absent from a case score 1 when also absent from the prediction.
    assert background < 0.5
    with pytest.raises(ValueError, match="expected"):
        val.score_slices(truth[:-1])


@pytest.mark.parametrize("order", [SliceOrder(2, False), SliceOrder(2, True), SliceOrder(0, True)])
def test_validator_scores_as_the_runners_scorer(tiny_data, order, monkeypatch):
    """The grouped ground truth gives the DSC of the volume the runner would score, for a
    file stored in either z direction, and for one whose slice axis is not the store's."""
    store, protocol = tiny_data.store, tiny_data.protocol
    monkeypatch.setattr(type(store), "slice_order", lambda self, case: order)
    val = Validator(store, tiny_data.split.val, protocol)
    rng = np.random.default_rng(0)
    truth = np.asarray(store.labels[val.slices.rows], dtype=np.int64)
    ids = rng.integers(0, protocol.num_classes, truth.shape)
    noisy = np.where(rng.random(truth.shape) < 0.05, ids, truth)
    shifted = np.roll(truth, 2, axis=0)  # organs one slice off: the z-range cut counts
    scoring = Scoring.of(["dsc"], zrange_labels=protocol.scoring.zrange_labels)
    for pred in (truth, noisy, shifted):
        expected = []
        for i, case in enumerate(val.case_ids):
            volume = store.to_volume(case, pred[val._bounds[i] : val._bounds[i + 1]])
            gt, spacing = store.ground_truth(case)
            per_organ = score_case(volume, gt, spacing, protocol.labels, scoring, order)
            expected.extend(v["dsc"] for v in per_organ.values())
        assert val.score_slices(pred) == pytest.approx(np.mean(expected), abs=1e-12)


def test_validation_speed_script_runs_and_agrees(capsys, monkeypatch):
    """`perf/bench_validation.py` on `tiny`: its three scoring paths give one mean DSC."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the script sets it; restored after the test
    threads = torch.get_num_threads()
    try:
        script = perf_script("bench_validation")
        script.main(["--protocol", "tiny", "--repeats", "1", "--noise", "0.1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "grouped:" in out and "speedup grouped vs masks" in out
    assert out.strip().endswith("largest difference in mean DSC: 0.00e+00")


def test_sanity_dsc_is_one_for_the_truth_and_zero_for_background(tiny_data):
    _, rows = tiny_data.budget_rows(tiny_data.protocol.budget("4slices"), 0)
    labeled = SliceSet(tiny_data.store, rows, labeled=True)
    truth = iter([labeled.labels()])  # one batch: the gate predicts the set in order

    n = tiny_data.protocol.num_classes
    assert sanity_dsc(lambda x: next(truth), labeled, n) == 1.0
    background = lambda x: torch.zeros(len(x), *x.shape[2:], dtype=torch.long)  # noqa: E731
    assert sanity_dsc(background, labeled, n) == 0


# --------------------------------------------------------------------------- end to end


def _protocol(tmp_path, monkeypatch, name: str, threshold: float) -> None:
    folder = tmp_path / "protocols"
    folder.mkdir(exist_ok=True)
    text = tiny_protocol_text().replace('"tiny"', f'"{name}"')
    text = text.replace("sanity_min_dsc = 0.0", f"sanity_min_dsc = {threshold}")
    (folder / f"{name}.toml").write_text(text)
    monkeypatch.setenv("LABELBENCH_PROTOCOLS", str(folder))


def test_run_records_curve_validation_and_gate(tmp_path, monkeypatch):
    _protocol(tmp_path, monkeypatch, "strict", 1.0)  # nothing trained in 3 steps passes 1.0
    results = tmp_path / "runs"
    args = ["run", "-m", "unet-scratch", "-b", "4slices", "-p", "strict", "--results",
            str(results), "--set", "batch_size=2"]  # fmt: skip
    r = bench(*args)
    assert r.exit_code == 0, r.output
    assert "not ranked, unfit: mean 2D DSC" in r.stderr
    store = ResultsStore(results)
    runs = store.runs(status=None)
    assert list(runs["status"]) == ["unfit"]
    run = runs.iloc[0]
    assert run["finetune_samples"] == TINY_TRAINING[0] and run["pretrain_samples"] == 0
    assert run["off_protocol"] is None and 0 <= run["val_dsc"] <= 1 and run["train_dsc"] < 1
    assert "below the protocol's sanity threshold 1" in run["error"]
    curve = store.curves(runs["run_id"])
    # 6 samples in batches of 2 = 3 steps, validated every 4 samples (2 steps) and at the end
    assert list(curve["samples"]) == [4, 6]
    assert len(store.metrics(runs["run_id"])) == 2 * 13  # unfit runs keep their test scores
    # An unfit run is done: the same run is not repeated
    again = bench(*args)
    assert again.exit_code == 0 and "already completed" in again.stdout
    # ... and the report shows it apart, never ranked
    out = tmp_path / "report"
    rep = bench("report", "-p", "strict", "--results", str(results), "--out", str(out))
    assert rep.exit_code == 0, rep.output
    text = (out / "LEADERBOARD.md").read_text()
    assert "No ranked runs" in text and "## Not ranked" in text and "unfit: mean 2D DSC" in text
    assert "## Learning curves" in text and (out / "learning_curves.png").stat().st_size > 0


def test_off_protocol_run_is_shown_but_not_ranked(tmp_path, monkeypatch):
    _protocol(tmp_path, monkeypatch, "lenient", 0.0)
    results = tmp_path / "runs"
    base = ["run", "-b", "4slices", "-p", "lenient", "--results", str(results),
            "--set", "batch_size=2"]  # fmt: skip
    assert bench(*base, "-m", "unet-scratch").exit_code == 0
    r = bench(*base, "-m", "unet-scratch", "--set", "iterations=1", "--set", "lr=2e-3")
    assert r.exit_code == 0, r.output
    assert "not ranked, off-protocol: iterations=1 × batch_size=2" in r.stderr
    out = tmp_path / "report"
    rep = bench("report", "-p", "lenient", "--results", str(results), "--out", str(out))
    assert rep.exit_code == 0, rep.output
    text = (out / "LEADERBOARD.md").read_text()
    ranked, _, rest = text.partition("## Not ranked")
    assert "1 completed run " in ranked  # only the on-protocol run is ranked
    assert "fine-tune samples" in ranked and "off-protocol: iterations=1" in rest
    # The protocol's ceiling, scored once for the store, sits under each score table
    ceilings = ResultsStore(results).ceilings()
    assert len(ceilings) == 2 * 13 and ceilings["dsc"].between(0, 1).all()
    per_case = ceilings.groupby("case_id")["dsc"].mean().mean()
    assert len(re.findall(r"\| \*ceiling\* +\|", ranked)) == 2  # DSC and NSD tables
    assert f"*{per_case:.3f}*" in ranked


def test_a_run_whose_curve_goes_past_its_declared_samples_is_off_protocol(tmp_path, monkeypatch):
    """A method that declares the protocol's budget but trains on a schedule of its own
    (here: twice the batch it declares) is recorded with its curve's samples as the reason,
    not ranked with the budget's."""
    from benchmark.compute import beyond_budget
    from benchmark.validation import Selection

    _protocol(tmp_path, monkeypatch, "lenient", 0.0)
    real = Selection.for_context.__func__

    def doubled(cls, ctx, model, score, batch_size, steps):
        return real(cls, ctx, model, score, 2 * batch_size, steps)

    monkeypatch.setattr(Selection, "for_context", classmethod(doubled))
    results = tmp_path / "runs"
    r = bench("run", "-m", "unet-scratch", "-b", "4slices", "-p", "lenient", "--results",
              str(results), "--set", "batch_size=2")  # fmt: skip
    assert r.exit_code == 0, r.output
    run = ResultsStore(results).runs(status=None).iloc[0]
    declared = TINY_TRAINING[0]
    assert run["finetune_samples"] == declared
    assert run["off_protocol"] == (
        f"its learning curve reaches {2 * declared} finetune samples, beyond the {declared} "
        "its config declares"
    )
    on = beyond_budget(Compute(declared, 0, None), [declared // 2, declared])
    assert on is None and beyond_budget(Compute(None, 0, "own"), [10**6]) is None


def test_a_run_that_fails_after_fit_keeps_its_learning_curve(tmp_path, monkeypatch):
    """No scores, but the curve so far: where a failed run got to is worth seeing."""
    import benchmark.runner as runner

    _protocol(tmp_path, monkeypatch, "lenient", 0.0)

    def boom(*args):
        raise RuntimeError("disk full while predicting")

    monkeypatch.setattr(runner, "predict_case", boom)
    results = tmp_path / "runs"
    r = bench("run", "-m", "unet-scratch", "-b", "4slices", "-p", "lenient", "--results",
              str(results), "--set", "batch_size=2")  # fmt: skip
    assert r.exit_code == 1 and "disk full while predicting" in r.stderr
    store = ResultsStore(results)
    runs = store.runs(status=None)
    assert list(runs["status"]) == ["failed"] and store.metrics(runs["run_id"]).empty
    assert list(store.curves(runs["run_id"])["samples"]) == [4, 6]


# --------------------------------------------------------------------------- store


OLD_RUNS = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, run_key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('completed', 'failed')), error TEXT,
    protocol TEXT NOT NULL, protocol_hash TEXT NOT NULL, dataset_key TEXT NOT NULL,
    split_hash TEXT NOT NULL, method TEXT NOT NULL, config TEXT NOT NULL, budget TEXT NOT NULL,
    n_labeled INTEGER NOT NULL, budget_ids TEXT NOT NULL, seed INTEGER NOT NULL,
    versions TEXT NOT NULL, git_commit TEXT NOT NULL, device TEXT NOT NULL,
    phases TEXT NOT NULL, wall_s REAL NOT NULL, peak_mem_mb REAL NOT NULL, info TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT NOT NULL
);
CREATE UNIQUE INDEX one_completed_run ON runs (run_key) WHERE status = 'completed';
CREATE TABLE case_metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    case_id TEXT NOT NULL, organ_id INTEGER NOT NULL, organ TEXT NOT NULL,
    dsc REAL NOT NULL, nsd REAL NOT NULL, PRIMARY KEY (run_id, case_id, organ_id)
);
"""


def test_an_old_store_is_migrated_in_place_keeping_every_row(tmp_path):
    from tests.test_store import record

    db = tmp_path / "labelbench.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_RUNS)
        values = (
            "old1", "k-old", "completed", None, "p", "h", "d", "s", "m", "{}", "1pct", 3, "[]",
            0, "{}", "abc", "cpu", "{}", 1.0, 10.0, "{}", "t0", "t1",
        )  # fmt: skip
        conn.execute(f"INSERT INTO runs VALUES ({', '.join('?' * len(values))})", values)
        conn.execute("INSERT INTO case_metrics VALUES ('old1', 'c1', 1, 'liver', 0.9, 0.8)")
    store = ResultsStore(tmp_path)
    old = store.runs()
    # Old runs had no training budget, validation or gate: shown, never ranked
    assert list(old["run_id"]) == ["old1"] and "before the protocol's training budget" in str(
        old["off_protocol"].iloc[0]
    )
    assert old["code"].isna().all()  # every later step ran too: code unknown
    # the rebuild did not cascade-delete metrics, which are now long rows
    assert store.metrics(["old1"])[["dsc", "nsd"]].to_numpy().tolist() == [[0.9, 0.8]]
    assert store.completed_run("k-old") == "old1"
    unfit = record("new1", "k-new", status="unfit", error="unfit: ...")
    unfit = replace(unfit, curve=[(4, 1.0, 0.2), (8, 0.5, 0.4)])  # records are frozen
    store.write_run(unfit, [("c1", 1, "liver", "dsc", 0.1), ("c1", 1, "liver", "nsd", 0.0)])
    assert store.completed_run("k-new") == "new1"
    assert list(store.curves(["new1"])["val_dsc"]) == [0.2, 0.4]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    # Opening again is a no-op
    assert len(ResultsStore(tmp_path).runs(status=None)) == 2


@pytest.mark.parametrize("batch_size", [1, 7, 8, 12, 16])
def test_every_batch_size_gets_the_protocols_validations(batch_size):
    """38,400 samples, one validation every 1,920: 20 for every batch size, the last at the
    last step (a step interval rounded from 1,920 / 7 = 274 gave batch 7 a 21st)."""
    steps = -(-38_400 // batch_size)
    sel = Selection(torch.nn.Linear(1, 1), lambda: 0.5, batch_size, steps, 1920, False, [])
    due = [s for s in range(1, steps + 1) if sel.due(s)]
    assert len(due) == 20 and due[-1] == steps
    assert all(s * batch_size >= k * 1920 for k, s in enumerate(due, 1))
