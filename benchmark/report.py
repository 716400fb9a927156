"""Turn stored results into a Markdown leaderboard and a DSC-vs-labels plot.

Pure functions over two DataFrames (`runs`, `metrics`) as read from the results store; the
only side effects are in `plot_dsc_vs_labels` and `write_report`, which write files atomically.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.metrics.registry import display_name, higher_is_better
from benchmark.report_code import code_note, newest_code
from benchmark.report_training import (
    CURVES_NAME,
    ceiling_scores,
    curves_section,
    plot_curves,
    split_ranked,
    unranked_section,
)

N_BOOT = 2000
ALPHA = 0.05
BOOT_SEED = 0
PLOT_NAME = "dsc_vs_labels.png"
HEATMAP_NAME = "organ_dsc_heatmap.png"
HTML_NAME = "LEADERBOARD.html"
MD_NAME = "LEADERBOARD.md"

KEY_COLUMNS = ("run_id", "case_id", "organ_id", "organ")
"""Columns of a metrics frame that are not metrics; every other column is one metric."""


def metric_names(metrics: pd.DataFrame) -> list[str]:
    """The metrics in a (wide) metrics frame, in the order they were recorded."""
    return [c for c in metrics.columns if c not in KEY_COLUMNS]


# --------------------------------------------------------------------------- statistics


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


def _case_ci(
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
    "metric", "budget", "rank", "method", "mean", "cases", "pairs", "diff", "diff_lo",
    "diff_hi", "p", "p_holm",
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
    signed-rank test of the per-case seed means (`cases` = n; exact for n ≤ 50 without zero
    differences); `p_holm`: Holm over every comparison in the result, all budgets and
    metrics together. NaN for the best method itself, or with no pairs.
    """
    from scipy.stats import wilcoxon

    _require_runs(runs)
    scores = _case_scores(runs, metrics)
    rows = []
    for metric in names:
        for budget in _budget_order(runs):
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
                    per_case = d.groupby(level="case_id").mean()
                    row["p"] = 1.0 if np.allclose(per_case, 0) else float(wilcoxon(per_case).pvalue)
                rows.append(row)
    out = pd.DataFrame(rows, columns=TEST_COLUMNS)
    out["p_holm"] = holm(out["p"])
    return out


# --------------------------------------------------------------------------- tables


def _require_runs(runs: pd.DataFrame, protocol: str | None = None) -> None:
    if runs is None or runs.empty:
        where = f" for protocol '{protocol}'" if protocol else ""
        raise ValueError(f"no completed runs{where}: nothing to report (run `bench run` first)")


def _budget_order(runs: pd.DataFrame) -> list[str]:
    """Budgets by median labeled slices over all their runs (name breaks ties)."""
    med = runs.groupby("budget")["n_labeled"].median()
    return sorted(med.index, key=lambda b: (med[b], str(b)))


def _case_scores(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, case): mean over organs of every metric, with method/budget/seed."""
    names = metric_names(metrics)
    per_case = metrics.groupby(["run_id", "case_id"], as_index=False)[names].mean()
    return per_case.merge(runs[["run_id", "method", "budget", "seed"]], on="run_id")


def summarize(runs: pd.DataFrame, metrics: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per (method, budget), budgets by median n_labeled, then methods by name.

    For every metric `m` of `metrics`: `m`, the mean over all (seed, case) rows of the
    per-case organ-mean score, and `m_lo`/`m_hi`, its 95% two-level percentile bootstrap
    (test cases, then seeds within each case). Pass runs of a single protocol hash.
    """
    _require_runs(runs)
    scores = _case_scores(runs, metrics)
    names = metric_names(metrics)
    order = {b: i for i, b in enumerate(_budget_order(runs))}
    rows = []
    for (method, budget), grp in runs.groupby(["method", "budget"]):
        sc = scores[(scores.method == method) & (scores.budget == budget)]
        row = {
            "method": method,
            "budget": budget,
            "n_labeled": float(grp["n_labeled"].median()),
            "seeds": int(grp["seed"].nunique()),
            "cases": int(sc["case_id"].nunique()),
        }
        for name in names:
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = _case_ci(sc, name, n_boot)
        rows.append({**row, "wall_s": float(grp["wall_s"].mean())})
    rows.sort(key=lambda r: (order[r["budget"]], str(r["method"])))
    columns = ["method", "budget", "n_labeled", "seeds", "cases"]
    columns += [c for n in names for c in (n, f"{n}_lo", f"{n}_hi")] + ["wall_s"]
    out = pd.DataFrame(rows, columns=columns)
    protocols = sorted(runs["protocol"].unique()) if "protocol" in runs else []
    out.attrs["protocol"] = ", ".join(map(str, protocols))
    return out


def per_organ(runs: pd.DataFrame, metrics: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """budget -> methods × organs table of mean DSC (over all seeds and cases), budgets ordered."""
    _require_runs(runs)
    m = metrics.merge(runs[["run_id", "method", "budget"]], on="run_id")
    organs = m[["organ_id", "organ"]].drop_duplicates("organ_id").sort_values("organ_id")["organ"]
    organs = list(dict.fromkeys(organs))
    out: dict[str, pd.DataFrame] = {}
    for budget in _budget_order(runs):
        sub = m[m.budget == budget]
        methods = sorted(runs.loc[runs.budget == budget, "method"].unique(), key=str)
        table = sub.pivot_table(index="method", columns="organ", values="dsc", aggfunc="mean")
        table = table.reindex(index=methods, columns=organs)
        table.index.name, table.columns.name = "method", "organ"
        out[budget] = table
    return out


def _samples(grp: pd.DataFrame, column: str) -> float:
    values = grp[column].dropna() if column in grp else pd.Series(dtype=float)
    return float(values.max()) if len(values) else float("nan")


def _cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    order = {b: i for i, b in enumerate(_budget_order(runs))}
    rows = []
    for (method, budget), grp in runs.groupby(["method", "budget"]):
        rows.append(
            {
                "method": method,
                "budget": budget,
                "runs": len(grp),
                "wall_s": float(grp["wall_s"].mean()),
                # Max, not mean: the worst run is what has to fit on the hardware.
                "peak_mem_mb": float(grp["peak_mem_mb"].max()),
                "device": ", ".join(sorted(map(str, grp["device"].unique()))),
                # Compute matched by the protocol: samples seen (None: the method's own).
                "finetune_samples": _samples(grp, "finetune_samples"),
                "pretrain_samples": _samples(grp, "pretrain_samples"),
            }
        )
    # Method-major: the table answers "how does this method's cost grow with the budget".
    rows.sort(key=lambda r: (str(r["method"]), order[r["budget"]]))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- formatting


def _md_table(header: list[str], rows: list[list[str]], align: str) -> str:
    """Pipe table padded for reading as plain text; align is one of 'l'/'r' per column."""
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    widths = [max(3, *(len(r[i]) for r in esc)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(w) if a == "r" else c.ljust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|".join(
        "-" * (w + 1) + ":" if a == "r" else "-" * (w + 2)
        for w, a in zip(widths, align, strict=True)
    )
    return "\n".join([line(esc[0]), f"|{rule}|", *map(line, esc[1:])])


def _f3(x: float) -> str:
    return "—" if x is None or pd.isna(x) else f"{x:.3f}"


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _count_or_dash(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:,.0f}"


def _plural(n: float, word: str) -> str:
    return f"{_count(n)} {word}{'' if n == 1 else 's'}"


def _time_unit(seconds: float) -> tuple[str, float]:
    """A unit that keeps the numbers short: s below 2 min, min below 2 h, else h."""
    if seconds < 120:
        return "s", 1.0
    if seconds < 7200:
        return "min", 60.0
    return "h", 3600.0


def _duration(seconds: float) -> str:
    unit, scale = _time_unit(seconds)
    return f"{seconds / scale:.1f} {unit}"


def _budget_header(budget: str, n_labeled: float) -> str:
    return f"{budget} · {_plural(n_labeled, 'slice')}"


_WORD_ABBREV = {
    "adrenal": "adr.",
    "gallbladder": "gallbl.",
    "esophagus": "esoph.",
    "oesophagus": "esoph.",
    "duodenum": "duod.",
    "pancreas": "panc.",
    "kidney": "kid.",
    "prostate": "prost.",
    "bladder": "bladder",
    "gland": "",
}
_SIDES = {"right": "R", "left": "L"}
_ACRONYMS = {"ivc": "IVC", "inferior vena cava": "IVC", "postcava": "IVC"}


def _short_organ(name: str) -> str:
    """Short column header for an organ: right_kidney -> R kidney, left_adrenal -> L adr."""
    spaced = re.sub(r"[_\-\s]+", " ", str(name)).strip()
    if spaced.lower() in _ACRONYMS:
        return _ACRONYMS[spaced.lower()]
    words = [_SIDES.get(w.lower(), w) for w in spaced.split(" ")]
    short = " ".join(words)
    # Only shorten further when the header would be wider than a 3-decimal number needs.
    if len(short) > 8:
        words = [_WORD_ABBREV.get(w.lower(), w if len(w) <= 8 else w[:6] + ".") for w in words]
        short = " ".join(w for w in words if w)
    return short


def _short_organs(organs: Iterable[str]) -> dict[str, str]:
    organs = list(organs)
    short = {o: _short_organ(o) for o in organs}
    clashes = {s for s, n in Counter(short.values()).items() if n > 1}
    return {o: (str(o) if s in clashes else s) for o, s in short.items()}


def _bold_best(
    values: dict[str, float], text: dict[str, str], higher: bool = True
) -> dict[str, str]:
    """Bold the best value (highest, or lowest when not `higher`; ties included) when there
    is something to compare."""
    finite = {k: v for k, v in values.items() if v is not None and not pd.isna(v)}
    if len(finite) < 2:
        return text
    best = max(finite.values()) if higher else min(finite.values())
    return {k: (f"**{t}**" if finite.get(k) == best else t) for k, t in text.items()}


def _versions(raw: object) -> dict[str, str]:
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    try:
        parsed = json.loads(str(raw))
    except (TypeError, ValueError):
        return {"(unparsed)": str(raw)}
    if not isinstance(parsed, dict):
        return {"(unparsed)": str(raw)}
    return {str(k): str(v) for k, v in parsed.items()}


def _short_commit(commit: str) -> str:
    m = re.fullmatch(r"([0-9a-f]{12})[0-9a-f]{28}(.*)", str(commit))
    return m.group(1) + m.group(2) if m else str(commit)


# --------------------------------------------------------------------------- markdown


def _hash_order(runs: pd.DataFrame) -> list[str]:
    """Protocol hashes, the one with the most recently finished run first."""
    last = runs.groupby("protocol_hash")["finished_at"].max()
    return sorted(last.index, key=lambda h: str(last[h]), reverse=True)


def _plot_hash(runs: pd.DataFrame, metrics: pd.DataFrame) -> str:
    """The hash the plot shows: the newest one that has metrics (hashes are not comparable)."""
    with_metrics = set(metrics["run_id"])
    return next(
        h
        for h in _hash_order(runs)
        if runs.loc[runs["protocol_hash"] == h, "run_id"].isin(with_metrics).any()
    )


def _score_table(
    summary: pd.DataFrame,
    metric: str,
    methods: list[str],
    budgets: list[str],
    n_by_budget: dict[str, float],
    usual: tuple[int, int],
    ceiling: float | None = None,
) -> str:
    cells: dict[str, dict[str, str]] = {m: {} for m in methods}
    for budget in budgets:
        sub = summary[summary.budget == budget].set_index("method")
        text, values = {}, {}
        for method in methods:
            if method not in sub.index:
                text[method] = "—"
                continue
            r = sub.loc[method]
            if pd.isna(r[metric]):
                text[method] = "no metrics"
                continue
            values[method] = r[metric]
            text[method] = f"{_f3(r[metric])} [{_f3(r[metric + '_lo'])}, {_f3(r[metric + '_hi'])}]"
        for method, t in _bold_best(values, text, higher_is_better(metric)).items():
            r = sub.loc[method] if method in sub.index else None
            # Cells that pool a different number of seeds or cases than the rest say so.
            if r is not None and r["cases"] > 0 and (int(r["seeds"]), int(r["cases"])) != usual:
                t += f" ({_plural(r['seeds'], 'seed')} × {_plural(r['cases'], 'case')})"
            cells[method][budget] = t
    header = ["method", *(_budget_header(b, n_by_budget[b]) for b in budgets)]
    rows = [[m, *(cells[m][b] for b in budgets)] for m in methods]
    if ceiling is not None:  # not a method: the best any method can reach, never ranked
        rows.append(["*ceiling*", *(f"*{_f3(ceiling)}*" for _ in budgets)])
    return _md_table(header, rows, "l" + "r" * len(budgets))


def _ranking(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    summary: pd.DataFrame,
    level: int,
    n_by_budget: dict[str, float],
) -> list[str]:
    """Per budget: methods ranked by mean DSC, a paired test against the best in every
    metric, and cost."""
    h = "#" * level
    names = metric_names(metrics)
    tests = paired_tests(runs, metrics, names)
    cost = _cost_table(runs).set_index(["method", "budget"])
    unit, scale = _time_unit(float(cost["wall_s"].max()))

    def vs_best(t: pd.DataFrame, method: str) -> list[str]:
        r = t[t.method == method].iloc[0]
        if r["rank"] == 1:
            return ["best", "—"]
        if pd.isna(r["p_holm"]):
            return ["no pairs", "—"]
        mark = " ▼" if r["p_holm"] < ALPHA else ""
        diff = f"{r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]"
        return [diff, f"{r['p_holm']:.3g}{mark}"]

    out = [
        f"{h} Ranking per budget",
        "",
        "Methods ranked by mean DSC. *Δ vs best*: the method's mean minus the best method's, "
        "on the (seed, test case) pairs both were scored on, with a 95% two-level bootstrap "
        "interval (test cases resampled, then seeds within each case). *p*: two-sided paired "
        "Wilcoxon signed-rank test of the per-case seed means (the test case is the unit: the "
        "seeds of a case share its volume), Holm-corrected over "
        f"{_plural(int(tests['p'].notna().sum()), 'comparison')} of this table (every budget, "
        f"every metric); ▼ marks a method significantly worse than the best (adjusted p < "
        f"{ALPHA}). Every other metric is compared with the method best in it. Cost: mean wall "
        "time per run, largest peak memory.",
        "",
        *_power_note(tests),
    ]
    for budget in _budget_order(runs):
        mine = {name: tests[(tests.metric == name) & (tests.budget == budget)] for name in names}
        sub = summary[summary.budget == budget].set_index("method")
        rows = []
        for r in mine["dsc"].itertuples():
            s_ = sub.loc[r.method]
            c = cost.loc[(r.method, budget)]
            row = [str(r.rank), r.method]
            for name in names:
                row += [
                    f"{_f3(s_[name])} [{_f3(s_[name + '_lo'])}, {_f3(s_[name + '_hi'])}]",
                    *vs_best(mine[name], r.method),
                ]
            row += [
                f"{int(s_['seeds'])} × {int(s_['cases'])}",
                f"{c['wall_s'] / scale:,.1f}",
                f"{c['peak_mem_mb']:,.0f}",
                str(c["device"]),
            ]
            rows.append(row)
        header = ["#", "method"]
        header += [
            h_ for n in names for h_ in (f"{display_name(n)} [95% CI]", "Δ vs best [95% CI]", "p")
        ]
        header += ["seeds × cases", f"wall ({unit})", "peak MB", "device"]
        out += [
            f"{h}# {_budget_header(budget, n_by_budget[budget])}",
            "",
            _md_table(header, rows, "rl" + "rrr" * len(names) + "rrrl"),
            "",
        ]
    return out


def _power_note(tests: pd.DataFrame) -> list[str]:
    """What the number of test cases allows: the smallest p an exact test can give, and
    whether any adjusted p can fall below `ALPHA` after Holm over all the comparisons."""
    tested = tests[tests["p"].notna()]
    if tested.empty:
        return []
    n = int(tested["cases"].mode().iloc[0])
    m = len(tested)
    floor = min(1.0, m * smallest_p(n))
    text = (
        f"n = {_plural(n, 'test case')} per comparison: the smallest two-sided p an exact "
        f"test can give is 2 / 2^{n} = {smallest_p(n):.2g}, and after Holm over {m} "
        f"comparison{'s' if m != 1 else ''} the smallest adjusted p is {floor:.2g}."
    )
    if floor >= ALPHA:
        need = next(k for k in range(1, 64) if m * smallest_p(k) < ALPHA)
        text += (
            f" No difference can be marked significant with so few cases (it takes at least "
            f"{need})."
        )
    return [text, ""]


def _section(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    level: int,
    plot_name: str | None,
    ceilings: pd.DataFrame | None = None,
) -> list[str]:
    h = "#" * level
    ceiling = ceiling_scores(runs, ceilings)
    summary = summarize(runs, metrics)
    budgets = _budget_order(runs)
    methods = sorted(runs["method"].unique(), key=str)
    n_by_budget = runs.groupby("budget")["n_labeled"].median().to_dict()
    m = metrics[metrics.run_id.isin(runs.run_id)]
    n_organs = m["organ_id"].nunique()
    pooled = zip(summary["seeds"].astype(int), summary["cases"].astype(int), strict=True)
    counts = Counter(pooled)
    # Ties go to the larger pool, so the cells with missing runs are the ones marked.
    usual = max(counts, key=lambda k: (counts[k], k))

    out = [
        f"{h} Segmentation quality",
        "",
        f"Per-case scores average {_plural(n_organs, 'organ')}. Unless a cell says otherwise "
        f"it pools {_plural(usual[0], 'seed')} × {_plural(usual[1], 'test case')}."
        + (
            " *ceiling*: the test ground truth resized to the protocol's slice size and back, "
            "exactly as a prediction is, then scored: the best any method can reach here."
            if ceiling
            else ""
        ),
        "",
    ]
    for name in metric_names(metrics):
        direction = "" if higher_is_better(name) else " (lower is better)"
        out += [
            f"{h}# {display_name(name)}{direction}",
            "",
            _score_table(summary, name, methods, budgets, n_by_budget, usual, ceiling.get(name)),
            "",
        ]
    if plot_name:
        out += [f"![Mean DSC vs. labeled training slices]({plot_name})", ""]
    out += _ranking(runs, metrics, summary, level, n_by_budget)

    tables = per_organ(runs, metrics)
    organs = next(iter(tables.values())).columns if tables else []
    short = _short_organs(organs)
    legend = ", ".join(f"{s} = {o}" for o, s in short.items() if s != o)
    out += [
        f"{h} Per-organ DSC",
        "",
        "Mean DSC per organ over all seeds × test cases."
        + (f" Abbreviations: {legend}." if legend else ""),
        "",
    ]
    if plot_name:
        out += [f"![Per-organ DSC heatmap]({HEATMAP_NAME})", ""]
    for budget, table in tables.items():
        cols = {m: {} for m in table.index}
        for organ in table.columns:
            values = table[organ].to_dict()
            text = {k: _f3(v) for k, v in values.items()}
            for method, t in _bold_best(values, text).items():
                cols[method][organ] = t
        rows = [[m, *(cols[m][o] for o in table.columns)] for m in table.index]
        header = ["method", *(short[o] for o in table.columns)]
        out += [
            f"{h}# {_budget_header(budget, n_by_budget[budget])}",
            "",
            _md_table(header, rows, "l" + "r" * len(table.columns)),
            "",
        ]

    cost = _cost_table(runs)
    # One unit for the whole column so rows can be compared at a glance.
    unit, scale = _time_unit(float(cost["wall_s"].max()))
    rows = [
        [
            r.method,
            _budget_header(r.budget, n_by_budget[r.budget]),
            str(r.runs),
            _count_or_dash(r.finetune_samples),
            _count_or_dash(r.pretrain_samples),
            f"{r.wall_s / scale:,.1f}",
            f"{r.peak_mem_mb:,.0f}",
            r.device,
        ]
        for r in cost.itertuples()
    ]
    out += [
        f"{h} Compute cost",
        "",
        f"Wall time: total per run, averaged over the runs; peak memory: the largest over the "
        f"runs. Samples: slices seen in fine-tuning and in pretraining (optimizer steps × "
        f"batch), fixed by the protocol. All {_plural(len(runs), 'run')} together took "
        f"{_duration(float(runs['wall_s'].sum()))}.",
        "",
        _md_table(
            [
                "method",
                "budget",
                "runs",
                "fine-tune samples",
                "pretrain samples",
                f"wall time ({unit})",
                "peak memory (MB)",
                "device",
            ],
            rows,
            "llrrrrrl",
        ),
        "",
    ]
    return out


def _generative_section(gen: pd.DataFrame) -> list[str]:
    """Table of `bench fidelity` rows (one per stored evaluation), or nothing when none."""
    if gen is None or gen.empty:
        return []
    gen = gen.sort_values(["method", "sampler", "steps", "n", "seed", "finished_at"], kind="stable")
    seeds = gen["seed"].nunique() > 1
    hashes = gen["protocol_hash"].nunique() > 1
    stand_in = gen["extractor"] != "inception"
    header = ["method", "sampler", "steps", "N"] + (["seed"] if seeds else [])
    header += ["FID ↓", "sFID ↓", "P ↑", "R ↑", "F1 ↑", "KID ↓", "MS-SSIM"]
    header += ["protocol hash"] if hashes else []
    rows = []
    for r, alt in zip(gen.itertuples(), stand_in, strict=True):
        row = [f"{r.method} †" if alt else r.method, r.sampler, str(r.steps), str(r.n)]
        row += [str(r.seed)] if seeds else []
        row += [f"{r.fid:.2f}", f"{r.sfid:.2f}", _f3(r.precision), _f3(r.recall), _f3(r.f1)]
        row += [f"{r.kid:.4f}", _f3(r.ms_ssim)]
        row += [f"`{r.protocol_hash}`"] if hashes else []
        rows.append(row)
    out = [
        "## Generative quality",
        "",
        "Samples of each pretrained generative model against as many real slices drawn from "
        "the held-out test cases, both at the model's resolution. FID and sFID: Fréchet "
        "distances of Inception-v3 pool features and of its Mixed_6d spatial features (first "
        "7 channels, 17 × 17, as in guided-diffusion); P / R / F1: precision, recall and their "
        "F1 on the pool features (k = 3); KID: kernel inception distance; MS-SSIM: mean "
        "pairwise MS-SSIM among the samples (lower = more diverse). Computed with "
        "torch-fidelity; N is the number of samples and of real slices.",
        "",
        _md_table(header, rows, "llrr" + "r" * (len(header) - 4)),
        "",
    ]
    if stand_in.any():
        out += [
            "† Stand-in features (a fixed-seed random conv net, not Inception): these numbers "
            "are not FID values and compare only with other † rows.",
            "",
        ]
    if hashes:
        out += [
            "> **⚠️ These rows were made under different protocol hashes; rows under different "
            "hashes are not comparable.**",
            "",
        ]
    return out


def _provenance(runs: pd.DataFrame) -> list[str]:
    seen: dict[str, Counter] = {}
    for raw in runs["versions"]:
        for pkg, ver in _versions(raw).items():
            seen.setdefault(pkg, Counter())[ver] += 1
    pkgs = sorted(seen, key=lambda p: (p != "python", p.lower()))
    mixed = [p for p in pkgs if len(seen[p]) > 1]
    parts = []
    for p in pkgs:
        vers = " / ".join(f"{v} ({n} runs)" if len(seen[p]) > 1 else v for v, n in seen[p].items())
        parts.append(f"{p} {vers}")
    commits = Counter(runs["git_commit"].map(_short_commit))
    commit_text = ", ".join(
        f"`{c}` ({_plural(n, 'run')})" for c, n in sorted(commits.items(), key=lambda x: -x[1])
    )
    out = ["## Provenance", ""]
    if mixed:
        out += [f"Runs used different versions of: {', '.join(mixed)}.", ""]
    out += [
        "Package versions: " + (" · ".join(parts) if parts else "not recorded") + ".",
        "",
        f"Git commit{'s' if len(commits) > 1 else ''}: {commit_text}.",
        "",
    ]
    return out


def _select_protocol(protocol: str, runs: pd.DataFrame) -> pd.DataFrame:
    _require_runs(runs, protocol)
    if "protocol" in runs:
        mine = runs[runs["protocol"] == protocol]
        if mine.empty:
            others = ", ".join(sorted(map(str, runs["protocol"].unique())))
            raise ValueError(
                f"no completed runs for protocol '{protocol}' (the runs given are for: {others})"
            )
        return mine
    return runs


def _check_metrics(protocol: str, runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    if metrics is None or not metrics["run_id"].isin(runs["run_id"]).any():
        raise ValueError(
            f"no per-case metrics for the completed runs of protocol '{protocol}': "
            "nothing to report"
        )


def render_markdown(
    protocol: str,
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    plot_name: str | None = None,
    generative: pd.DataFrame | None = None,
    curves: pd.DataFrame | None = None,
    curves_plot: str | None = None,
    ceilings: pd.DataFrame | None = None,
    mix_code: bool = False,
) -> str:
    """The leaderboard as Markdown; `plot_name` (a path relative to the .md) is embedded.

    `generative` (the store's `generative` rows) adds a generative-quality section for the
    rows of this protocol, when there are any. Only ranked runs (completed, on-protocol)
    enter the tables; `unfit` and off-protocol runs are listed apart with their reason.
    `curves` (the store's learning curves) adds the curve section, `curves_plot` its image;
    `ceilings` (the store's ceiling rows) adds the protocol's ceiling under each score table.
    Each method is reported by its runs under its newest code fingerprint, and the report says
    how many it left out; `mix_code` pools every fingerprint, with a warning
    (`benchmark.report_code`).
    """
    finished = _select_protocol(protocol, runs)
    finished, older = (finished, finished.iloc[0:0]) if mix_code else newest_code(finished)
    note = code_note(finished, older, mix_code)
    runs, unranked = split_ranked(finished)
    if runs.empty:
        return _unranked_only(protocol, finished, unranked, metrics, curves, curves_plot, note)
    _check_metrics(protocol, runs, metrics)
    hashes = _hash_order(runs)
    methods = runs["method"].nunique()
    budgets = runs["budget"].nunique()
    last = str(runs["finished_at"].max())
    out = [f"# Leaderboard: {protocol}", ""]
    overview = (
        f"{_plural(len(runs), 'completed run')} · {_plural(methods, 'method')} · "
        f"{_plural(budgets, 'budget')} · last run finished {last}"
    )
    how_to_read = (
        "Each score is the mean over test cases of each case's mean over seeds of a per-case "
        "score: the mean over organs of one of the protocol's metrics (DSC: Dice; NSD: normalized "
        "surface Dice; HD95: 95th-percentile Hausdorff distance in mm). Brackets: "
        f"95% percentile bootstrap CI, two-level ({N_BOOT} resamples: test cases drawn with "
        "replacement, then seeds within each drawn case). Budget headers give the number of "
        "labeled training slices; bold marks the best method per column."
    )
    if len(hashes) == 1:
        out += [f"Protocol hash `{hashes[0]}` · {overview}", "", how_to_read, "", *note]
        out += _section(runs, metrics, 2, plot_name, ceilings)
    else:
        listed = ", ".join(f"`{h}`" for h in hashes)
        shown = _plot_hash(runs, metrics)
        out += [
            f"Protocol hashes {listed} · {overview}",
            "",
            f"> **⚠️ WARNING: these runs were made under {len(hashes)} different protocol "
            f"hashes.** The protocol definition changed between runs, so results under different "
            f"hashes are **not comparable**. Each hash has its own section below, newest first"
            + (f"; the plot shows only `{shown}`." if plot_name else "."),
            "",
            how_to_read,
            "",
            *note,
        ]
        for i, ph in enumerate(hashes):
            sub = runs[runs["protocol_hash"] == ph]
            if not metrics["run_id"].isin(sub["run_id"]).any():
                out += [f"## Protocol hash `{ph}`", "", "No per-case metrics for these runs.", ""]
                continue
            label = " (newest)" if i == 0 else ""
            out += [
                f"## Protocol hash `{ph}`{label}",
                "",
                f"{_plural(len(sub), 'run')}, last finished {sub['finished_at'].max()}.",
                "",
            ]
            out += _section(sub, metrics, 3, plot_name if ph == shown else None, ceilings)
    out += unranked_section(unranked, metrics)
    out += curves_section(finished, curves, curves_plot)
    if generative is not None and "protocol" in generative:
        out += _generative_section(generative[generative["protocol"] == protocol])
    out += _provenance(finished)
    return "\n".join(out).rstrip() + "\n"


def _unranked_only(
    protocol: str,
    finished: pd.DataFrame,
    unranked: pd.DataFrame,
    metrics: pd.DataFrame,
    curves: pd.DataFrame | None,
    curves_plot: str | None,
    note: list[str],
) -> str:
    out = [
        f"# Leaderboard: {protocol}",
        "",
        f"No ranked runs: all {_plural(len(unranked), 'finished run')} are unfit or off-protocol.",
        "",
        *note,
        *unranked_section(unranked, metrics),
        *curves_section(finished, curves, curves_plot),
        *_provenance(finished),
    ]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- files


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write via a temp file in the same folder, then os.replace, so readers never see half.

    `write` creates the temp file itself, so the report gets the usual permissions (0644
    under umask 022); `tempfile.mkstemp` would make it 0600, unreadable to anyone else.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_dsc_vs_labels(summary: pd.DataFrame, out_png: Path) -> Path:
    """Mean DSC vs. labeled slices (log x), one line per method with 95% CI bars and band."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A log axis cannot show zero labels; such points (if any) are left out of the plot.
    data = summary[(summary["n_labeled"] > 0) & summary["dsc"].notna()].copy()
    if data.empty:
        raise ValueError("nothing to plot: no (method, budget) with labeled slices and a DSC")
    methods = sorted(data["method"].unique(), key=str)
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))
    # Nudge methods apart along x (in log space) so their error bars do not sit on each other.
    offsets = {m: 10 ** (0.015 * (i - (len(methods) - 1) / 2)) for i, m in enumerate(methods)}
    data["x"] = data["n_labeled"] * data["method"].map(offsets)

    # Figure + Agg canvas instead of pyplot: no global backend switch, no open-figure leaks.
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(7.5, 4.8), dpi=150, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        sns.lineplot(
            data=data,
            x="x",
            y="dsc",
            hue="method",
            hue_order=methods,
            palette=palette,
            marker="o",
            errorbar=None,
            ax=ax,
        )
        for method in methods:
            d = data[data.method == method].sort_values("x")
            color = palette[method]
            ax.fill_between(d["x"], d["dsc_lo"], d["dsc_hi"], color=color, alpha=0.15, lw=0)
            ax.errorbar(
                d["x"],
                d["dsc"],
                yerr=[d["dsc"] - d["dsc_lo"], d["dsc_hi"] - d["dsc"]],
                fmt="none",
                ecolor=color,
                capsize=3,
                lw=1,
            )
        ax.set_xscale("log")
        ticks = data.groupby("budget")["n_labeled"].median().sort_values()
        ax.set_xticks(ticks.to_numpy(), [f"{_count(n)}\n{b}" for b, n in ticks.items()])
        ax.minorticks_off()
        ax.set_xlabel("Labeled training slices (count, log scale)")
        ax.set_ylabel("Mean DSC (0–1)")
        protocol = summary.attrs.get("protocol")
        title = "Mean DSC vs. labeled training slices"
        ax.set_title(f"{protocol}: {title}" if protocol else title)
        ax.legend(title="method (95% CI over test cases)", fontsize="small", title_fontsize="small")

        def save(tmp: Path) -> None:
            fig.savefig(tmp, format="png")

        return _atomic_write(Path(out_png), save)


def plot_organ_heatmap(tables: dict[str, pd.DataFrame], out_png: Path) -> Path:
    """Per-organ mean DSC, methods × organs, one panel per budget (values written in cells)."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tables = {b: t for b, t in tables.items() if not t.empty}
    if not tables:
        raise ValueError("nothing to plot: no per-organ DSC")
    organs = next(iter(tables.values())).columns
    short = _short_organs(organs)
    heights = [max(1, len(t)) for t in tables.values()]
    with sns.axes_style("white"), sns.plotting_context("notebook", font_scale=0.8):
        fig = Figure(
            figsize=(1.0 + 0.62 * len(organs), 1.2 + 0.42 * sum(heights) + 0.5 * len(tables)),
            dpi=150,
            layout="constrained",
        )
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(tables), 1, squeeze=False, height_ratios=heights)[:, 0]
        for i, (ax, (budget, table)) in enumerate(zip(axes, tables.items(), strict=True)):
            sns.heatmap(
                table.rename(columns=short).astype(float),
                vmin=0,
                vmax=1,
                cmap="viridis",
                annot=True,
                fmt=".2f",
                annot_kws={"fontsize": 7},
                cbar=i == 0,
                cbar_kws={"label": "mean DSC"} if i == 0 else None,
                ax=ax,
            )
            ax.set_title(budget, loc="left", fontsize="medium")
            ax.set_ylabel("")
            ax.set_xlabel("" if i < len(tables) - 1 else "organ")
            ax.tick_params(axis="x", labelrotation=45 if i == len(tables) - 1 else 0)
            if i < len(tables) - 1:
                ax.set_xticklabels([])

        def save(tmp: Path) -> None:
            fig.savefig(tmp, format="png")

        return _atomic_write(Path(out_png), save)


def render_html(markdown_text: str, folder: Path) -> str:
    """A self-contained HTML page of the leaderboard: the Markdown rendered, images inlined."""
    import base64
    import html as html_lib

    import markdown as md_lib

    body = md_lib.markdown(markdown_text, extensions=["tables"])

    def inline(match: re.Match) -> str:
        name = html_lib.unescape(match.group(1))
        path = Path(folder) / name
        if "/" in name or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    title = next(
        (line[2:] for line in markdown_text.splitlines() if line.startswith("# ")), "Leaderboard"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html_lib.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 75rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.45; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.25rem; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; }}
th {{ background: #f3f3f3; }}
tr:nth-child(even) td {{ background: #fafafa; }}
td[style*="right"], th[style*="right"] {{ font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; height: auto; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
blockquote {{ border-left: 4px solid #d9534f; margin: 0; padding: 0.25rem 1rem; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


def write_report(
    protocol: str,
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    out_dir: Path,
    generative: pd.DataFrame | None = None,
    curves: pd.DataFrame | None = None,
    ceilings: pd.DataFrame | None = None,
    mix_code: bool = False,
) -> Path:
    """Write LEADERBOARD.md, LEADERBOARD.html and the plots into out_dir; return the .md path.

    With no segmentation runs but generative rows, the report holds the generative section only.
    """
    out_dir = Path(out_dir)
    if (runs is None or runs.empty) and generative is not None and not generative.empty:
        gen = generative[generative["protocol"] == protocol]
        if not gen.empty:
            markdown = "\n".join(
                [
                    f"# Leaderboard: {protocol}",
                    "",
                    "No completed segmentation runs yet (`bench run`); generative quality only.",
                    "",
                    *_generative_section(gen),
                ]
            ).rstrip()
            page = render_html(markdown, out_dir)
            _atomic_write(out_dir / HTML_NAME, lambda tmp: tmp.write_text(page, encoding="utf-8"))
            return _atomic_write(
                out_dir / MD_NAME, lambda tmp: tmp.write_text(markdown + "\n", encoding="utf-8")
            )
    every = _select_protocol(protocol, runs)
    finished = every if mix_code else newest_code(every)[0]
    runs = split_ranked(finished)[0]
    curves_plot = None
    if curves is not None and not curves.empty:
        newest = finished[finished["protocol_hash"] == _hash_order(finished)[0]]
        if plot_curves(newest, curves, out_dir / CURVES_NAME):
            curves_plot = CURVES_NAME
    markdown = render_markdown(
        protocol, every, metrics, PLOT_NAME, generative, curves, curves_plot, ceilings, mix_code
    )
    if not runs.empty:
        _check_metrics(protocol, runs, metrics)
        # Different protocol hashes are not comparable: the plots show one (the newest) only.
        shown = runs[runs["protocol_hash"] == _plot_hash(runs, metrics)]
        plot_dsc_vs_labels(summarize(shown, metrics), out_dir / PLOT_NAME)
        plot_organ_heatmap(per_organ(shown, metrics), out_dir / HEATMAP_NAME)
    # Plots first, so the Markdown and HTML never link to a missing image.
    page = render_html(markdown, out_dir)
    _atomic_write(out_dir / HTML_NAME, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return _atomic_write(out_dir / MD_NAME, lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
