"""The leaderboard pools runs of one code fingerprint per method unless told to mix them."""

from __future__ import annotations

import pandas as pd

from benchmark.report import newest_code, render_markdown, summarize
from tests.test_report import synthetic

OLD, NEW = "c0ffee00c0ffee00-aaaaaaaaaaaaaaaa-9999999999999999", "c0ffee00c0ffee00-bbbb-9999"
CORE_CHANGED = "deadbeefdeadbeef-aaaaaaaaaaaaaaaa-9999999999999999"


def _two_codes() -> tuple[pd.DataFrame, pd.DataFrame]:
    """alpha: 2 seeds under old code, then 2 under new code (scoring 0.2 lower); beta: old."""
    runs, metrics = synthetic(budgets={"4slices": 4})
    runs["code"] = OLD
    again = runs[runs.method == "alpha"].copy()
    again["run_id"] += "-new"
    again["code"], again["finished_at"] = NEW, "2025-03-01T00:00:00"
    new_metrics = metrics[metrics.run_id.isin(again.run_id.str.removesuffix("-new"))].copy()
    new_metrics["run_id"] += "-new"
    new_metrics["dsc"] -= 0.2
    return pd.concat([runs, again]), pd.concat([metrics, new_metrics])


def test_each_method_keeps_its_newest_code_and_the_rest_is_counted():
    runs, metrics = _two_codes()
    kept, left_out = newest_code(runs)
    assert set(kept.run_id) == {r for r in runs.run_id if r.endswith("-new") or "beta" in r}
    assert len(left_out) == 2 and (left_out["code"] == OLD).all()
    md = render_markdown("tiny", runs, metrics)
    assert "Left out 2 runs made by older code than each method's newest runs (alpha 2)" in md
    assert "--mix-code" in md and "WARNING" not in md
    assert "alpha `c0ffee00-bbbb-9999`" in md and "beta `c0ffee00-aaaaaaaa-99999999`" in md
    # alpha is scored on its new runs only: 2 seeds, 0.2 below its old score
    alpha = summarize(kept, metrics).set_index("method").loc["alpha", "dsc"]
    assert f"{alpha:.3f}" in md
    assert alpha < summarize(runs, metrics).set_index("method").loc["alpha", "dsc"] - 0.05


def test_mix_code_pools_every_fingerprint_with_a_warning():
    runs, metrics = _two_codes()
    md = render_markdown("tiny", runs, metrics, mix_code=True)
    assert "WARNING: `--mix-code` pools runs made by different code" in md
    assert "alpha (2)" in md and "Left out" not in md
    pooled = summarize(runs, metrics).set_index("method").loc["alpha", "dsc"]
    assert f"{pooled:.3f}" in md  # alpha pools the runs of both codes


def test_runs_without_a_fingerprint_are_older_code_once_a_method_has_one():
    runs, metrics = _two_codes()
    runs.loc[runs.code == OLD, "code"] = None  # recorded before fingerprints
    kept, left_out = newest_code(runs)
    assert len(left_out) == 2 and set(kept[kept.method == "beta"].run_id) == set(
        runs[runs.method == "beta"].run_id
    )
    assert "beta `unknown`" in render_markdown("tiny", runs, metrics)


def test_methods_under_different_core_code_are_flagged():
    runs, metrics = _two_codes()
    runs.loc[runs.code == NEW, "code"] = CORE_CHANGED
    md = render_markdown("tiny", runs, metrics)
    assert "ran under different core code or package versions" in md
