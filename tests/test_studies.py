"""The study scripts that chose the protocol's length and every method's defaults
(`perf/tune_lr.py`, `perf/convergence.py`): their trial grids, filters and decision rules,
checked on small frames and on the committed tuning store."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).parents[1]
STUDIES = ROOT / "reports" / "phantom" / "studies"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "perf" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tune = _script("tune_lr")
convergence = _script("convergence")


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
