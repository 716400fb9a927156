"""The report's statistics: means with two-level bootstrap intervals and paired tests.

The test case is the unit: the seeds of a case share one test volume and the cases of a seed
one trained model, so (seed, case) values are not independent. A mean is the mean over cases
of each case's mean over seeds; its interval is a percentile bootstrap that draws cases with
replacement, then seeds within each drawn case (`case_bootstrap_ci`). Methods are compared
with the best by a Wilcoxon signed-rank test of the per-case seed means, Holm-corrected over
every comparison of a table (`paired_tests`, `holm`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from benchmark.metrics.registry import higher_is_better
from benchmark.report.frames import budget_order, case_scores, require_runs

N_BOOT = 2000
ALPHA = 0.05
BOOT_SEED = 0


def _by_case(case_ids: Iterable[str], values: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """(cases × seeds matrix, values per case): each case's values (its seeds) first in its
    row, 0-padded; NaNs dropped."""
    frame = pd.DataFrame({"case": list(case_ids), "value": np.asarray(list(values), float)})
    groups = [g.to_numpy() for _, g in frame.dropna().groupby("case", sort=True)["value"]]
    if not groups:
        raise ValueError("cannot bootstrap an empty sample")
    counts = np.array([len(g) for g in groups])
    matrix = np.zeros((len(groups), counts.max()))
    for row, g in enumerate(groups):
        matrix[row, : len(g)] = g
    return matrix, counts


def _two_level_bootstrap(
    matrix: np.ndarray, counts: np.ndarray, n_boot: int, alpha: float, seed: int
) -> tuple[float, float, float]:
    """Mean over cases of each case's mean, and its percentile bootstrap interval.

    Each resample draws the cases with replacement, then, within each drawn case, as many of
    its values (seeds) as it has, with replacement: the case is the unit, and the seeds'
    spread within a case is kept. `matrix` is cases × seeds, row c valid in its first
    `counts[c]` columns.
    """
    n, width = matrix.shape
    mean = float(np.mean([matrix[c, : counts[c]].mean() for c in range(n)]))
    if n == 1 and counts[0] == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    keep = np.arange(width)
    # Draw in chunks so the n_boot × cases × seeds index arrays stay small.
    step = max(1, 4_000_000 // (n * width))
    for start in range(0, n_boot, step):
        size = min(n_boot, start + step) - start
        cases = rng.integers(0, n, size=(size, n))
        k = counts[cases]
        seeds = (rng.random((size, n, width)) * k[..., None]).astype(np.int64)
        drawn = matrix[cases[..., None], seeds] * (keep < k[..., None])
        boot[start : start + size] = (drawn.sum(axis=2) / k).mean(axis=1)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return mean, float(low), float(high)


def case_bootstrap_ci(
    case_ids: Iterable[str],
    values: Iterable[float],
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = BOOT_SEED,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean over cases of each case's mean value (one value per seed),
    with a two-level percentile bootstrap interval (cases, then seeds within each case)."""
    return _two_level_bootstrap(*_by_case(case_ids, values), n_boot, alpha, seed)


def bootstrap_ci(
    values: np.ndarray, n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = BOOT_SEED
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean of `values` (NaNs dropped)."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one non-NaN value")
    return _two_level_bootstrap(v[:, None], np.ones(v.size, int), n_boot, alpha, seed)


def case_ci(
    scores: pd.DataFrame, column: str, n_boot: int, seed: int = BOOT_SEED
) -> tuple[float, float, float]:
    """`column` of (seed, case) rows: mean over cases of the seed mean, two-level CI."""
    rows = scores[["case_id", column]].dropna()
    if rows.empty:
        return np.nan, np.nan, np.nan
    return case_bootstrap_ci(rows["case_id"], rows[column], n_boot, ALPHA, seed)


def smallest_p(n: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test can give for n pairs:
    every difference of one sign, 2 / 2^n (1 for n = 0)."""
    return min(1.0, 2.0 / 2**n)


def holm(p_values: Iterable[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs stay NaN."""
    p = np.asarray(list(p_values), dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[k]))
        out[k] = running
    return out


TEST_COLUMNS = [
    "metric", "budget", "rank", "method", "mean", "cases", "pairs", "tested", "diff",
    "diff_lo", "diff_hi", "p", "p_holm",
]  # fmt: skip


def paired_tests(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    names: Sequence[str] = ("dsc", "nsd"),
    n_boot: int = N_BOOT,
) -> pd.DataFrame:
    """Per metric and budget, methods ranked by mean score, each compared with the best.

    The test case is the unit: the seeds of a case share one test volume and the cases of a
    seed one trained model, so (seed, case) pairs are not independent. `diff`: the
    method's mean minus the best's over the (seed, case) pairs both were scored on (mean over
    cases of the seed mean), with a 95 % two-level bootstrap interval (`diff_lo`, `diff_hi`:
    cases resampled, then seeds within each case). `p`: scipy's two-sided Wilcoxon
    signed-rank test of the per-case seed means (exact for n ≤ 50); `tested`: its n, the
    cases whose mean difference is not 0 (to 1e-12; the test leaves those out, scipy's
    default, so `tested` ≤ `cases`); `p_holm`: Holm over every comparison in the result, all
    budgets and metrics together. NaN for the best method itself, or with no pairs.
    """
    from scipy.stats import wilcoxon

    require_runs(runs)
    scores = case_scores(runs, metrics)
    rows = []
    for metric in names:
        for budget in budget_order(runs):
            sub = scores[scores.budget == budget]
            table = sub.pivot_table(
                index=["case_id", "seed"], columns="method", values=metric, aggfunc="mean"
            )
            by_case = sub.groupby(["method", "case_id"])[metric].mean().groupby("method").mean()
            means = by_case.sort_values(ascending=not higher_is_better(metric), kind="stable")
            if means.empty:
                continue
            best = means.index[0]
            for rank, (method, mean) in enumerate(means.items(), start=1):
                pair = table[[best, method]].dropna()
                row = {"metric": metric, "budget": budget, "rank": rank, "method": method,
                       "mean": float(mean), "pairs": len(pair),
                       "cases": pair.index.get_level_values("case_id").nunique()}  # fmt: skip
                if method != best and not pair.empty:
                    d = pair[method] - pair[best]
                    cases = d.index.get_level_values("case_id")
                    row["diff"], row["diff_lo"], row["diff_hi"] = case_bootstrap_ci(
                        cases, d, n_boot
                    )
                    # Rounded so that float noise in a mean of equal scores counts as a tie.
                    per_case = d.groupby(level="case_id").mean().round(12)
                    row["tested"] = int((per_case != 0).sum())
                    row["p"] = float(wilcoxon(per_case).pvalue) if row["tested"] else 1.0
                rows.append(row)
    out = pd.DataFrame(rows, columns=TEST_COLUMNS)
    out["p_holm"] = holm(out["p"])
    return out
