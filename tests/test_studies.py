"""The study scripts that chose the protocol's length and every method's defaults
(`perf/tune_lr.py`, `perf/convergence.py`): their trial grids, filters and decision rules,
checked on small frames and on the committed tuning store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import perf_script

ROOT = Path(__file__).parents[1]
STUDIES = ROOT / "reports" / "phantom" / "studies"


tune = perf_script("tune_lr")
convergence = perf_script("convergence")


def test_sets_are_scoped_per_method_or_shared():
    sets = tune.scoped(
        ["diffusion-linear:head=linear", "weight_decay=0"], ["unet-scratch", "diffusion-linear"]
    )
    assert sets == {
        "unet-scratch": ["weight_decay=0"],
        "diffusion-linear": ["head=linear", "weight_decay=0"],
    }
    with pytest.raises(SystemExit, match="mae is not one of --methods"):
        tune.scoped(["mae:lr=1"], ["unet-scratch"])


def test_trials_follow_the_default_under_the_sets_and_can_fix_the_length():
    methods = ["unet-scratch", "diffusion-linear"]
    linear = tune.scoped(["diffusion-linear:head=linear"], methods)
    mlp = tune.scoped(["diffusion-linear:head=mlp-ensemble"], methods)
    values = tune.trial_values(methods, "lr", [0.3, 1, 3], linear)
    assert values["unet-scratch"] == [0.0003, 0.001, 0.003]
    assert values["diffusion-linear"] == [0.009, 0.03, 0.09]  # the linear head's own default
    assert tune.trial_values(methods, "lr", [1], mlp)["diffusion-linear"] == [0.003]
    (first, *_) = tune.variants(values, "lr", samples=9600, sets=linear)
    assert first == [
        "unet-scratch:lr=0.0003", "unet-scratch:iterations=1200",
        "diffusion-linear:head=linear", "diffusion-linear:lr=0.009",
        "diffusion-linear:iterations=1200",
    ]  # fmt: skip
    assert tune.variants(values, "lr")[2] == ["unet-scratch:lr=0.003", "diffusion-linear:lr=0.09"]
    with pytest.raises(SystemExit, match="chooses its batch in fit"):
        tune.length("nnunet", 9600)


def test_the_committed_trials_are_told_apart_by_head(tmp_path):
    shutil.copy(STUDIES / "tuning_lr" / "labelbench.sqlite", tmp_path / "labelbench.sqlite")
    methods, budgets = ["diffusion-linear", "unet-scratch"], ["1pct", "10pct"]
    for head, n in (("linear", 6), ("mlp-ensemble", 0)):
        sets = tune.scoped([f"diffusion-linear:head={head}"], methods)
        runs = tune.trial_runs(tmp_path, methods, budgets, "lr", 0, sets, 9600)
        assert (runs.method == "diffusion-linear").sum() == n, head
        assert (runs.method == "unet-scratch").sum() == 6
        assert tune.trial_runs(tmp_path, methods, budgets, "lr", 0, sets, 38400).empty
    values = tune.stored_values(runs, methods)
    assert values["unet-scratch"] == [0.0003, 0.001, 0.003] and values["diffusion-linear"] == []
    df = tune.table(runs, ["unet-scratch"], budgets, "lr", values, sets)
    assert df.loc[df.chosen, "lr"].tolist() == [0.001] and df.loc[df.default, "lr"].tolist() == [
        0.001
    ]


def test_a_budget_is_chosen_only_when_doubling_it_changes_no_label_budget():
    table = pd.DataFrame(
        {100: [0.5, 0.6], 200: [0.55, 0.7], 400: [0.556, 0.72], 800: [0.557, 0.725]},
        index=["10pct", "100pct"],
    )
    assert convergence.choose(table, [100, 200, 400, 800], 0.01) == 400  # 200: 100pct +0.02
    assert convergence.choose(table, [100, 200, 400, 800], 0.03) == 200
    assert convergence.choose(table.drop(columns=800), [100, 200, 400], 0.01) is None


def test_the_plateau_is_the_late_mean_and_the_kept_point_the_best_validation():
    runs = pd.DataFrame({"run_id": ["a"], "samples": [800]})
    curves = pd.DataFrame(
        {"run_id": ["a"] * 4, "samples": [200, 400, 600, 800], "val_dsc": [0.5, 0.9, 0.6, 0.7]}
    )
    out = convergence.late_scores(runs, curves, frac=0.5)
    assert out.loc[0, "plateau"] == pytest.approx(0.65)  # validations after 400 samples
    assert out.loc[0, "kept_at"] == 400


# --------------------------------------------------------------------------- reference checks


def _grid(dsc: dict[tuple[str, str], list[float]], organs: tuple[str, ...] = ("liver", "pancreas")):
    """Finished runs and metrics of a grid: (method, budget) → one test-case DSC per seed,
    every organ of the case at that value unless the name ends in ':pancreas=x'."""
    labeled = {"4slices": 4, "1pct": 9, "10pct": 92, "100pct": 920}
    runs, rows = [], []
    for (method, budget), values in dsc.items():
        for seed, value in enumerate(values):
            run_id = f"{method}-{budget}-{seed}"
            runs.append(
                {"run_id": run_id, "method": method, "budget": budget, "seed": seed,
                 "n_labeled": labeled[budget], "status": "completed", "off_protocol": None}
            )  # fmt: skip
            for organ_id, organ in enumerate(organs, 1):
                rows.append(
                    {"run_id": run_id, "case_id": "c0", "organ_id": organ_id, "organ": organ,
                     "dsc": value}
                )  # fmt: skip
    return pd.DataFrame(runs), pd.DataFrame(rows)


def test_reference_checks_apply_each_rule():
    checks = perf_script("reference_checks")
    grid = {
        ("unet-scratch", "4slices"): [0.30, 0.32, 0.31],
        ("unet-scratch", "1pct"): [0.40, 0.41, 0.39],
        ("unet-scratch", "10pct"): [0.60, 0.62, 0.61],
        ("unet-scratch", "100pct"): [0.70, 0.71, 0.72],
        ("nnunet", "4slices"): [0.25, 0.26, 0.27],
        ("nnunet", "1pct"): [0.35, 0.36, 0.37],
        ("nnunet", "10pct"): [0.57, 0.58, 0.56],  # within 0.05 of 0.61
        ("diffusion-linear", "4slices"): [0.33, 0.34, 0.32],  # above unet-scratch
        ("diffusion-linear", "1pct"): [0.38, 0.39, 0.40],  # below it
        ("diffusion-linear", "10pct"): [0.39, 0.39],  # rises, but two seeds only
    }
    runs, metrics = _grid(grid)
    # pancreas segmented by unet-scratch at 1pct, gone at 10pct
    lost = (metrics["run_id"].str.startswith("unet-scratch-10pct")) & (
        metrics["organ"] == "pancreas"
    )
    metrics.loc[lost, "dsc"] = 0.0
    found = {c.claim: c for c in checks.checks(runs, metrics, pd.DataFrame())}
    verdicts = {claim: c.verdict for claim, c in found.items()}
    assert verdicts["every method × budget ranked with ≥ 3 seeds"] == "fails"
    assert (
        "diffusion-linear 10pct (2)"
        in found["every method × budget ranked with ≥ 3 seeds"].measured
    )
    assert "nnunet 100pct" in found["every method × budget ranked with ≥ 3 seeds"].measured
    scratch = "`unet-scratch` rises at every step of 4slices < 1pct < 10pct < 100pct"
    assert verdicts[scratch] == "fails"  # 10pct's mean dropped to 0.305 with the pancreas lost
    assert verdicts["`unet-scratch` reaches 0.75 at `100pct`"] == "fails"
    assert (
        found["no organ `unet-scratch` segments at `1pct` drops to 0 at `10pct`"].measured
        == "pancreas"
    )
    assert verdicts["`nnunet` rises at every step of 4slices < 1pct < 10pct"] == "holds"
    assert verdicts["`nnunet` ≥ `unet-scratch` − 0.05 at `10pct`"] == "holds"  # 0.57 vs 0.305
    assert verdicts["`diffusion-linear` ≥ `unet-scratch` at `4slices`"] == "holds"
    assert verdicts["`diffusion-linear` ≥ `unet-scratch` at `1pct`"] == "fails"
    assert verdicts["`diffusion-linear` rises at every step of 1pct < 10pct"] == "holds"
    undertrained = 'no ranked run "may be undertrained"'
    assert verdicts[undertrained] == "not measured"  # no curves at all
    flat = pd.DataFrame(
        [{"run_id": r, "samples": s, "train_loss": 0.5, "val_dsc": 0.5}
         for r in runs.run_id for s in (100, 200, 1000)]
    )  # fmt: skip
    found = {c.claim: c for c in checks.checks(runs, metrics, flat)}
    assert found[undertrained].verdict == "holds"
    nnunet_own = flat[~flat.run_id.str.startswith("nnunet")]  # its own rule: no curve
    found = {c.claim: c for c in checks.checks(runs, metrics, nnunet_own)}
    assert found[undertrained].verdict == "holds"
    assert "nnunet: final checkpoint (nnU-Net's own rule), no curve" in found[undertrained].measured
    blind = flat[~flat.run_id.str.startswith("unet-scratch")]  # should have had one
    found = {c.claim: c for c in checks.checks(runs, metrics, blind)}
    assert found[undertrained].verdict == "not measured"
    assert "unet-scratch: 12 without a curve, not checked" in found[undertrained].measured
    one = "the runs that share a pretraining used the same weights"
    assert verdicts[one] == "not measured"  # no run here records a pretraining

    def pretrained(key: str, sha: str) -> str:
        return json.dumps({"pretrain_cache": key, "pretrain": {"sha256": sha}})

    runs["info"] = [
        pretrained("ddpm", "b" if r.run_id == "diffusion-linear-10pct-1" else "a")
        if r.method == "diffusion-linear" else pretrained("simclr", "c")
        if r.method == "nnunet" else "{}"
        for r in runs.itertuples()
    ]  # fmt: skip
    found = {c.claim: c for c in checks.checks(runs, metrics, pd.DataFrame())}
    assert found[one].verdict == "fails"
    assert found[one].measured == "diffusion-linear: 2 sets of weights"
    runs["info"] = runs["info"].str.replace('"b"', '"a"')
    found = {c.claim: c for c in checks.checks(runs, metrics, pd.DataFrame())}
    assert found[one].verdict == "holds"
    assert found[one].measured == "one set of weights for each of 2 pretrainings"

    runs.loc[runs["run_id"] == "nnunet-1pct-0", "status"] = "unfit"  # out of the ranking
    found = {c.claim: c for c in checks.checks(runs, metrics, pd.DataFrame())}
    assert (
        found["no run is `unfit` (each failed run is left out of the ranking)"].measured
        == "nnunet 1pct s0"
    )
    assert (
        found["no run is `unfit` (each failed run is left out of the ranking)"].verdict == "fails"
    )


def test_reference_checks_leave_submissions_out_and_bad_input_is_one_line(tmp_path, capsys):
    from dataclasses import replace

    from benchmark.store import ResultsStore
    from tests.test_store import ROWS, record

    checks = perf_script("reference_checks")
    store = ResultsStore(tmp_path)
    for seed in range(3):
        run = replace(record(f"r{seed}", f"k{seed}"), protocol="tiny", method="unet-scratch",
                      budget="4slices", seed=seed)  # fmt: skip
        store.write_run(run, ROWS)
    preds = replace(record("sub", "ksub"), protocol="tiny", method="preds", budget="submission")
    store.write_run(preds, ROWS)
    checks.main(["--results", str(tmp_path), "--protocol", "tiny"])
    text = capsys.readouterr().out
    assert "3 finished runs" in text and "submission" not in text and "preds" not in text
    for bad in (["--protocol", "tny"], ["--out", str(tmp_path / "no" / "such" / "CHECKS.md")]):
        with pytest.raises(SystemExit) as exit_:
            checks.main(["--results", str(tmp_path), "--protocol", "tiny", *bad])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.startswith("error: ")
