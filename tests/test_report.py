"""Leaderboard statistics, Markdown and plot from small synthetic result tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.report import (
    bootstrap_ci,
    case_bootstrap_ci,
    config_variants,
    curves_section,
    holm,
    paired_tests,
    per_organ,
    plot_dsc_vs_labels,
    render_markdown,
    smallest_p,
    summarize,
    write_report,
)

ORGANS = ["liver", "right_kidney", "left_adrenal"]
BUDGETS = {"100pct": 400, "10pct": 40, "4slices": 4, "1pct": 8}  # name order ≠ size order


def run_row(run_id, method, budget, seed, n_labeled, protocol_hash="h1", **extra):
    row = {
        "run_id": run_id,
        "protocol": "tiny",
        "protocol_hash": protocol_hash,
        "method": method,
        "budget": budget,
        "seed": seed,
        "n_labeled": n_labeled,
        "wall_s": 10.0,
        "peak_mem_mb": 500.0,
        "device": "cpu",
        "versions": json.dumps({"python": "3.11.9", "torch": "2.4.1"}),
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "finished_at": "2025-01-01T00:00:00",
    }
    return row | extra


def synthetic(methods=("alpha", "beta"), budgets=BUDGETS, seeds=2, cases=4, protocol_hash="h1"):
    """Runs and metrics where DSC grows with the budget and 'beta' is a bit better."""
    rng = np.random.default_rng(0)
    runs, metrics = [], []
    for m_i, method in enumerate(methods):
        for budget, n in budgets.items():
            for seed in range(seeds):
                rid = f"{protocol_hash}-{method}-{budget}-{seed}"
                runs.append(run_row(rid, method, budget, seed, n, protocol_hash))
                for c in range(cases):
                    for o_i, organ in enumerate(ORGANS, 1):
                        d = 0.4 + 0.1 * np.log10(n) + 0.05 * m_i + rng.normal(0, 0.02)
                        metrics.append(
                            {
                                "run_id": rid,
                                "case_id": f"case_{c}",
                                "organ_id": o_i,
                                "organ": organ,
                                "dsc": d,
                                "nsd": d - 0.05,
                            }
                        )
    return pd.DataFrame(runs), pd.DataFrame(metrics)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_mean_and_narrows_with_more_cases():
    rng = np.random.default_rng(1)
    few, many = rng.normal(0.7, 0.1, 10), rng.normal(0.7, 0.1, 1000)
    widths = []
    for values in (few, many):
        mean, low, high = bootstrap_ci(values)
        assert mean == pytest.approx(values.mean())
        assert low <= mean <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3


def test_bootstrap_ci_is_deterministic_with_a_seed():
    values = np.random.default_rng(2).uniform(size=30)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    assert bootstrap_ci(values, seed=5) != bootstrap_ci(values, seed=6)


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci(np.array([0.5])) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))


# --------------------------------------------------------------------------- summarize


def test_summarize_matches_hand_computed_example():
    runs = pd.DataFrame(
        [
            run_row("r0", "m", "b", seed=0, n_labeled=4, wall_s=10.0),
            run_row("r1", "m", "b", seed=1, n_labeled=6, wall_s=30.0),
        ]
    )
    rows = [
        ("r0", "c1", 1, 0.8, 0.5),
        ("r0", "c1", 2, 0.6, 0.7),
        ("r0", "c2", 1, 0.4, 0.2),  # organ 2 missing here: the case still counts once
        ("r1", "c1", 1, 0.9, 1.0),
        ("r1", "c1", 2, 0.7, 0.8),
        ("r1", "c2", 1, 0.2, 0.1),
        ("r1", "c2", 2, 0.4, 0.3),
    ]
    metrics = pd.DataFrame(rows, columns=["run_id", "case_id", "organ_id", "dsc", "nsd"])
    metrics["organ"] = metrics["organ_id"].map({1: "liver", 2: "spleen"})
    s = summarize(runs, metrics).iloc[0]
    # Per-(run, case) organ means: DSC r0 = 0.7, 0.4; r1 = 0.8, 0.3 → mean 0.55
    # (not the flat mean of the 7 organ rows, 4.0 / 7).
    assert s["dsc"] == pytest.approx(0.55)
    assert s["nsd"] == pytest.approx((0.6 + 0.2 + 0.9 + 0.2) / 4)
    assert (s["seeds"], s["cases"]) == (2, 2)
    assert s["n_labeled"] == 5  # median over runs
    assert s["wall_s"] == pytest.approx(20.0)
    # Two levels: cases drawn (c1's seed mean is 0.75, c2's 0.35), then seeds within each: c1
    # gives 0.7, 0.75 or 0.8 and c2 0.3, 0.35 or 0.4, so the interval reaches past the case
    # means (a bootstrap of whole cases stops at 0.35 and 0.75) but never past the extremes.
    assert 0.3 <= s["dsc_lo"] < 0.35 and 0.75 < s["dsc_hi"] <= 0.8


def test_summarize_averages_over_seeds_and_cases():
    runs, metrics = synthetic(methods=("alpha",), budgets={"4slices": 4}, seeds=3, cases=5)
    s = summarize(runs, metrics, n_boot=200)
    per_case = metrics.groupby(["run_id", "case_id"])["dsc"].mean()
    assert len(s) == 1
    assert s["dsc"].iloc[0] == pytest.approx(per_case.mean())
    assert (s["seeds"].iloc[0], s["cases"].iloc[0]) == (3, 5)


def test_budgets_are_ordered_by_labeled_slices():
    runs, metrics = synthetic()
    s = summarize(runs, metrics, n_boot=100)
    assert list(dict.fromkeys(s["budget"])) == ["4slices", "1pct", "10pct", "100pct"]
    assert list(s["method"][:2]) == ["alpha", "beta"]
    organs = per_organ(runs, metrics)
    assert list(organs) == ["4slices", "1pct", "10pct", "100pct"]
    assert list(organs["1pct"].index) == ["alpha", "beta"]
    assert list(organs["1pct"].columns) == ORGANS
    md = render_markdown("tiny", runs, metrics)
    header = next(
        line for line in md.splitlines() if line.startswith("| method") and "1pct" in line
    )
    positions = [header.index(b) for b in ("4slices", "1pct", "10pct", "100pct")]
    assert positions == sorted(positions)


# --------------------------------------------------------------------------- markdown


def test_markdown_has_every_method_budget_and_per_organ_table():
    runs, metrics = synthetic()
    md = render_markdown("tiny", runs, metrics, plot_name="dsc_vs_labels.png")
    assert md.startswith("# Leaderboard: tiny")
    assert "`h1`" in md
    for method in ("alpha", "beta"):
        assert f"| {method} " in md
    for budget, n in BUDGETS.items():
        assert f"{budget} · {n} slices" in md
    assert "2 seeds × 4 test cases" in md
    assert "Per-organ DSC" in md
    assert md.count(" liver |") == len(BUDGETS)  # one per-organ table per budget
    assert "R kidney" in md and "L adr. = left_adrenal" in md
    assert "Compute cost" in md
    assert "torch 2.4.1" in md and "`0123456789ab`" in md
    assert "![Mean DSC vs. labeled training slices](dsc_vs_labels.png)" in md
    assert "not comparable" not in md
    assert render_markdown("tiny", runs, metrics) == render_markdown("tiny", runs, metrics)


def test_the_metrics_are_described_by_their_declarations():
    runs, metrics = synthetic()
    md = render_markdown("tiny", runs, metrics)
    assert "(DSC: Dice similarity coefficient (0-1); NSD: normalized surface Dice" in md
    assert "HD95" not in md  # not scored by these runs
    metrics["hd95"] = 3.0
    metrics["voldiff"] = 1.0  # a metric this checkout does not declare
    md = render_markdown("tiny", runs, metrics)
    assert "HD95 (mm): 95th-percentile Hausdorff distance in mm" in md
    assert "VOLDIFF: a metric this checkout does not declare" in md


def test_cells_with_fewer_seeds_say_so():
    runs, metrics = synthetic(budgets={"4slices": 4})
    dropped = runs.run_id.iloc[0]  # one seed of alpha is missing
    md = render_markdown("tiny", runs[runs.run_id != dropped], metrics[metrics.run_id != dropped])
    assert "(1 seed × 4 cases)" in md


def test_multiple_protocol_hashes_are_flagged_and_split():
    old_runs, old_metrics = synthetic(protocol_hash="aaaa1111")
    new_runs, new_metrics = synthetic(protocol_hash="bbbb2222")
    new_runs["finished_at"] = "2025-02-01T00:00:00"
    runs = pd.concat([old_runs, new_runs], ignore_index=True)
    metrics = pd.concat([old_metrics, new_metrics], ignore_index=True)
    md = render_markdown("tiny", runs, metrics)
    assert "WARNING" in md and "not comparable" in md
    new_at, old_at = (
        md.index("## Protocol hash `bbbb2222`"),
        md.index("## Protocol hash `aaaa1111`"),
    )
    assert new_at < old_at  # newest first

    # A metric added to the protocol (hd95) exists for the new hash only: each hash's section
    # reports its own metrics, and the old one does not fail on the new column.
    new_metrics["hd95"] = 5.0
    md = render_markdown("tiny", runs, pd.concat([old_metrics, new_metrics], ignore_index=True))
    new, old = (
        md[md.index("## Protocol hash `bbbb2222`") :],
        md[md.index("## Protocol hash `aaaa1111`") :],
    )
    new = new[: new.index("## Protocol hash `aaaa1111`")]
    assert "HD95" in new and "HD95" not in old


def test_empty_input_raises():
    runs, metrics = synthetic()
    with pytest.raises(ValueError, match="no completed runs for protocol 'tiny'"):
        render_markdown("tiny", runs.iloc[0:0], metrics.iloc[0:0])
    with pytest.raises(ValueError, match="no completed runs for protocol 'other'"):
        render_markdown("other", runs, metrics)
    with pytest.raises(ValueError, match="no completed runs"):
        summarize(runs.iloc[0:0], metrics)
    with pytest.raises(ValueError, match="no per-case metrics"):
        render_markdown("tiny", runs, metrics.iloc[0:0])


# --------------------------------------------------------------------------- files


def test_write_report_writes_markdown_and_png(tmp_path):
    runs, metrics = synthetic()
    out = tmp_path / "reports" / "tiny"
    md_path = write_report("tiny", runs, metrics, out)
    assert md_path == out / "LEADERBOARD.md"
    assert "# Leaderboard: tiny" in md_path.read_text()
    png = out / "dsc_vs_labels.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert sorted(p.name for p in out.iterdir()) == [
        "LEADERBOARD.html",
        "LEADERBOARD.md",
        "dsc_vs_labels.png",
        "organ_dsc_heatmap.png",
    ]
    heat = matplotlib.image.imread(out / "organ_dsc_heatmap.png")
    assert heat.ndim == 3 and heat.shape[0] > 200 and heat.shape[1] > 200
    with pytest.raises(ValueError, match="no completed runs"):
        write_report("tiny", runs.iloc[0:0], metrics, tmp_path / "empty")


def test_plot_accepts_a_summary(tmp_path):
    runs, metrics = synthetic(methods=("solo",), budgets={"4slices": 4})
    path = plot_dsc_vs_labels(summarize(runs, metrics, n_boot=50), tmp_path / "p.png")
    assert path.stat().st_size > 0


# --------------------------------------------------------------------------- paired tests


def test_holm_matches_a_hand_computed_example():
    got = holm([0.01, 0.04, 0.03, np.nan])
    # sorted 0.01, 0.03, 0.04 → 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04); NaN untouched
    np.testing.assert_allclose(got[:3], [0.03, 0.06, 0.06])
    assert np.isnan(got[3])
    assert holm([0.5, 0.9]).max() <= 1.0


def _paired(case_dsc: dict[str, list[float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, metrics = [], []
    for method, values in case_dsc.items():
        rid = f"{method}-run"
        runs.append(run_row(rid, method, "1pct", 0, 8))
        for c, d in enumerate(values):
            metrics.append(
                {"run_id": rid, "case_id": f"c{c}", "organ_id": 1, "organ": "liver", "dsc": d,
                 "nsd": d}
            )  # fmt: skip
    return pd.DataFrame(runs), pd.DataFrame(metrics)


def test_paired_wilcoxon_against_the_best_with_holm():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(1)
    best = rng.uniform(0.6, 0.9, 10)
    worse = best - rng.uniform(0.05, 0.1, 10)  # below the best on every case
    close = best + rng.normal(0, 0.01, 10)  # indistinguishable
    same = best.copy()
    runs, metrics = _paired({"a": best, "b": worse, "c": close, "d": same})
    t = paired_tests(runs, metrics, ["dsc"]).set_index("method")
    assert t.loc["a", "rank"] == 1 or t.loc["c", "rank"] == 1
    top = t[t["rank"] == 1].index[0]
    assert np.isnan(t.loc[top, "p"])
    p_b = wilcoxon({"a": best, "c": close, "d": same}[top], worse).pvalue
    assert t.loc["b", "p"] == pytest.approx(p_b)
    assert t.loc["b", "p_holm"] < 0.05 and t.loc["b", "pairs"] == 10
    assert t.loc["b", "p_holm"] >= t.loc["b", "p"]
    others = [m for m in "acd" if m != top]
    assert all(t.loc[m, "p_holm"] > 0.05 for m in others)


def test_report_ranks_methods_and_marks_significant_losses():
    rng = np.random.default_rng(2)
    best = rng.uniform(0.6, 0.9, 10)
    twin = best + rng.normal(0, 0.01, 10)  # no consistent difference
    runs, metrics = _paired({"good": best, "bad": best - 0.2, "twin": twin})
    md = render_markdown("tiny", runs, metrics)
    section = md[md.index("## Ranking per budget") :]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert "best" in lines[1] and ("| good" in lines[1] or "| twin" in lines[1])
    assert "| bad" in lines[3] and "▼" in lines[3]
    assert "▼" not in lines[2]


def _seeded(case_dsc: dict[str, np.ndarray], budgets=("1pct",)) -> tuple[pd.DataFrame, ...]:
    """Runs of every method × budget × seed: `case_dsc[method]` is seeds × cases of DSC."""
    runs, metrics = [], []
    for budget in budgets:
        for method, table in case_dsc.items():
            for seed, values in enumerate(np.atleast_2d(table)):
                rid = f"{method}-{budget}-{seed}"
                runs.append(run_row(rid, method, budget, seed, 8))
                metrics += [
                    {"run_id": rid, "case_id": f"c{c}", "organ_id": 1, "organ": "liver",
                     "dsc": d, "nsd": d}
                    for c, d in enumerate(values)
                ]  # fmt: skip
    return pd.DataFrame(runs), pd.DataFrame(metrics)


def test_the_case_is_the_unit_of_the_paired_test():
    """8 cases × 3 seeds, the method below the best on every pair: the test sees 8 cases, not
    24 pairs, so its p is the smallest 8 cases allow, 2 / 2^8, and the report says so."""
    rng = np.random.default_rng(3)
    best = rng.uniform(0.6, 0.9, (3, 8))
    runs, metrics = _seeded({"a": best, "b": best - rng.uniform(0.01, 0.1, (3, 8))})
    t = paired_tests(runs, metrics, ["dsc"]).set_index("method")
    assert smallest_p(8) == pytest.approx(0.0078125)
    assert t.loc["b", "p"] == pytest.approx(2 / 2**8)
    assert (t.loc["b", "cases"], t.loc["b", "pairs"]) == (8, 24)
    md = render_markdown("tiny", runs, metrics)
    assert "n = 8 test cases per comparison" in md and "2 / 2^8 = 0.0078" in md
    # DSC and NSD: 2 comparisons, so the smallest adjusted p is 0.016 and b is marked.
    assert "smallest adjusted p is 0.016" in md and "0.0156 ▼" in md


def test_cases_scored_the_same_by_both_methods_are_left_out_of_the_test_and_of_its_n():
    """b equals a on 2 of 8 cases and is below it on 6: the signed-rank test uses the 6
    non-zero differences, so n and the smallest p are those of 6 cases, not 8."""
    rng = np.random.default_rng(6)
    best = rng.uniform(0.6, 0.9, (3, 8))
    worse = best - rng.uniform(0.01, 0.1, (3, 8))
    worse[:, :2] = best[:, :2]
    runs, metrics = _seeded({"a": best, "b": worse})
    t = paired_tests(runs, metrics, ["dsc"]).set_index("method")
    assert (t.loc["b", "cases"], t.loc["b", "tested"]) == (8, 6)
    assert t.loc["b", "p"] == pytest.approx(2 / 2**6)
    md = render_markdown("tiny", runs, metrics)
    assert "n = 6 test cases per comparison" in md and "2 / 2^6 = 0.031" in md
    assert "left out of the test" in md


def test_a_method_ranked_lower_but_better_on_the_shared_pairs_is_not_marked_worse():
    """b has only seed 0 (its others failed); ranked by its mean it is below a, whose seeds
    1 and 2 are higher, but on the pairs both have (seed 0) it is better: no ▼."""
    seeds_a = np.array([[0.5] * 8, [0.7] * 8, [0.7] * 8])
    runs, metrics = _seeded({"a": seeds_a, "b": np.array([[0.6] * 8])})
    t = paired_tests(runs, metrics, ["dsc"]).set_index("method")
    assert t.loc["b", "rank"] == 2 and t.loc["b", "diff"] > 0 and t.loc["b", "p_holm"] < 0.05
    row = next(ln for ln in render_markdown("tiny", runs, metrics).splitlines() if "| b " in ln
               and "+0.100" in ln)  # fmt: skip
    assert "▼" not in row


def test_holm_runs_over_every_budget_and_metric_and_says_when_nothing_can_pass():
    rng = np.random.default_rng(4)
    best = rng.uniform(0.6, 0.9, (1, 8))
    budgets = ("1pct", "10pct", "100pct")
    runs, metrics = _seeded({"a": best, "b": best - 0.05, "c": best - 0.1}, budgets)
    t = paired_tests(runs, metrics)
    tested = t[t["p"].notna()]
    assert len(tested) == 2 * 3 * 2  # methods below the best × budgets × {DSC, NSD}
    np.testing.assert_allclose(tested["p_holm"], holm(tested["p"]))
    assert tested["p_holm"].min() == pytest.approx(12 * 2 / 2**8)
    md = render_markdown("tiny", runs, metrics)
    assert "Holm-corrected over 12 comparisons" in md
    assert "No difference can be marked significant with so few cases" in md
    assert "at least 9)" in md  # 12 × 2 / 2^9 = 0.047 < 0.05 ≤ 12 × 2 / 2^8 = 0.094
    assert " ▼ |" not in md


def test_paired_difference_and_its_interval():
    rng = np.random.default_rng(5)
    best = rng.uniform(0.6, 0.9, (3, 6))
    runs, metrics = _seeded({"a": best, "b": best - 0.1})
    r = paired_tests(runs, metrics, ["dsc"]).set_index("method").loc["b"]
    assert r["diff"] == pytest.approx(-0.1)
    assert r["diff_lo"] == pytest.approx(-0.1) and r["diff_hi"] == pytest.approx(-0.1)
    md = render_markdown("tiny", runs, metrics)
    assert "-0.100 [-0.100, -0.100]" in md


def test_bootstrap_resamples_cases_then_seeds_within_a_case():
    # 3 cases × 4 identical seeds, case values 0, 0, 1. Drawing the third case 3 times (1 in
    # 27 > 2.5 %) puts the upper bound at 1.0; resampling the 12 (seed, case) pairs instead
    # would need all 12 draws from it, and the bound would stay well below 1.
    cases = [c for c in ("c0", "c1", "c2") for _ in range(4)]
    values = [0.0] * 8 + [1.0] * 4
    mean, low, high = case_bootstrap_ci(cases, values)
    assert mean == pytest.approx(1 / 3) and low == 0.0 and high == 1.0
    # Within a case the seeds are resampled: one case with seeds 0.2 and 0.8 has an interval.
    mean, low, high = case_bootstrap_ci(["c0", "c0"], [0.2, 0.8])
    assert mean == pytest.approx(0.5) and low < 0.5 < high


def test_html_report_is_self_contained(tmp_path):
    runs, metrics = synthetic()
    write_report("tiny", runs, metrics, tmp_path)
    page = (tmp_path / "LEADERBOARD.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert 'src="dsc_vs_labels.png"' not in page and "<table>" in page
    assert "Ranking per budget" in page


def _browser() -> str | None:
    import shutil

    return next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )


@pytest.mark.slow
def test_html_report_renders_in_a_headless_browser(tmp_path):
    """Chromium (installed by .ci/run) loads the page offline: every table and inlined plot."""
    import re
    import subprocess

    browser = _browser()
    assert browser, "no chromium on PATH: install Debian's chromium (see .ci/run)"
    runs, metrics = synthetic()
    write_report("tiny", runs, metrics, tmp_path)
    page = (tmp_path / "LEADERBOARD.html").read_text()
    probe = (
        "<script>addEventListener('load', () => { const im = [...document.images]; "
        "document.body.dataset.check = [im.length, im.filter(i => i.complete && "
        "i.naturalWidth > 100).length, document.querySelectorAll('table').length].join(','); "
        "});</script>"
    )
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe + "</body>"))
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", (tmp_path / "probe.html").as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    found = re.search(r'data-check="(\d+),(\d+),(\d+)"', dom)
    assert found, dom[:2000]
    images, loaded, tables = map(int, found.groups())
    assert images == loaded == 2
    assert tables == page.count("<table>") >= 5


def test_bench_report_output_and_store_problems_are_one_line(tmp_path):
    from dataclasses import replace

    from typer.testing import CliRunner

    from benchmark.cli import app
    from benchmark.store import ResultsStore
    from tests.test_store import ROWS, record

    store = ResultsStore(tmp_path / "runs")
    store.write_run(replace(record(), protocol="tiny"), [])  # a run without scores
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = ["report", "-p", "tiny", "--results", str(tmp_path / "runs")]
    for out, message in ((tmp_path / "out", "no per-case scores"), (blocker / "r", "is a file")):
        if message == "is a file":
            store.write_run(replace(record("r2", "k2"), protocol="tiny"), ROWS)
        r = CliRunner().invoke(app, [*args, "--out", str(out)])
        assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output
        assert not (tmp_path / "out").exists()


def test_runs_of_one_method_with_other_configs_are_rows_of_their_own():
    """An lr trial beside the defaults is not pooled into unet-scratch's row; a setting that
    only changes how a run executed (predict_batch_size) does not split it."""
    base = {"lr": 0.001, "iterations": None, "predict_batch_size": 32}
    rng = np.random.default_rng(5)
    runs, metrics = _seeded({"unet-scratch": rng.uniform(0.3, 0.5, (4, 8))})
    configs = [
        base,
        {**base, "predict_batch_size": 8},
        {**base, "lr": 0.003},
        {**base, "lr": 0.003},
    ]
    runs["config"] = [json.dumps(c) for c in configs]
    named = config_variants(runs)
    assert list(named.method) == ["unet-scratch [lr=0.001]"] * 2 + ["unet-scratch [lr=0.003]"] * 2
    md = render_markdown("tiny", runs, metrics)
    assert "| unet-scratch [lr=0.001] " in md and "| unet-scratch [lr=0.003] " in md
    same = runs.assign(config=[json.dumps(base)] * 4)
    assert list(config_variants(same).method) == ["unet-scratch"] * 4


def test_the_power_note_bounds_every_comparison_by_the_largest_one():
    """Most comparisons have 3 cases, one has 8: a significant result is still possible, so
    the note must not say that none can be (it did, from the most common count)."""
    from benchmark.report.sections import _power_note

    counts = [3, 3, 8]
    text = _power_note(pd.DataFrame({"p": [0.1, 0.2, 0.3], "cases": counts, "tested": counts}))[0]
    assert "n = 8 test cases in the largest comparison (3 in most)" in text
    assert "No difference can be marked significant" not in text


def test_the_curve_section_names_runs_without_a_curve_and_nnunets_own_rule():
    runs = pd.DataFrame(
        [run_row("a0", "unet-scratch", "1pct", 0, 8), run_row("n0", "nnunet", "1pct", 0, 8),
         run_row("m0", "mae", "1pct", 0, 8)]
    )  # fmt: skip
    curves = pd.DataFrame(
        [{"run_id": "a0", "samples": s, "train_loss": 0.5, "val_dsc": 0.5} for s in (1, 2, 9)]
    )
    text = "\n".join(curves_section(runs, curves, None))
    assert "not checked for undertraining: mae (1), nnunet (1; final checkpoint" in text
