"""The Markdown of one protocol hash's results (`results_section`): a score table per
metric with intervals and the ceiling, the ranking per budget with paired tests against the
best, per-organ DSC and compute cost. The page around it is `benchmark.report.markdown`.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from benchmark.metrics.registry import display_name, higher_is_better
from benchmark.report.files import HEATMAP_NAME
from benchmark.report.formatting import (
    bold_best,
    budget_header,
    count_or_dash,
    duration,
    f3,
    md_table,
    plural,
    short_organs,
    time_unit,
)
from benchmark.report.frames import budget_order, metric_names
from benchmark.report.stats import ALPHA, paired_tests, smallest_p
from benchmark.report.tables import ceiling_scores, cost_table, per_organ, summarize


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
            text[method] = f"{f3(r[metric])} [{f3(r[metric + '_lo'])}, {f3(r[metric + '_hi'])}]"
        for method, t in bold_best(values, text, higher_is_better(metric)).items():
            r = sub.loc[method] if method in sub.index else None
            # Cells that pool a different number of seeds or cases than the rest say so.
            if r is not None and r["cases"] > 0 and (int(r["seeds"]), int(r["cases"])) != usual:
                t += f" ({plural(r['seeds'], 'seed')} × {plural(r['cases'], 'case')})"
            cells[method][budget] = t
    header = ["method", *(budget_header(b, n_by_budget[b]) for b in budgets)]
    rows = [[m, *(cells[m][b] for b in budgets)] for m in methods]
    if ceiling is not None:  # not a method: the best any method can reach, never ranked
        rows.append(["*ceiling*", *(f"*{f3(ceiling)}*" for _ in budgets)])
    return md_table(header, rows, "l" + "r" * len(budgets))


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
    cost = cost_table(runs).set_index(["method", "budget"])
    unit, scale = time_unit(float(cost["wall_s"].max()))

    def vs_best(t: pd.DataFrame, method: str) -> list[str]:
        r = t[t.method == method].iloc[0]
        if r["rank"] == 1:
            return ["best", "—"]
        if pd.isna(r["p_holm"]):
            return ["no pairs", "—"]
        worse = r["diff"] < 0 if higher_is_better(r["metric"]) else r["diff"] > 0
        # Worse on the pairs both have, not only by rank (which uses all of each one's runs).
        mark = " ▼" if r["p_holm"] < ALPHA and worse else ""
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
        f"{plural(int(tests['p'].notna().sum()), 'comparison')} of this table (every budget, "
        f"every metric); ▼ marks a method significantly worse than the best (adjusted p < "
        f"{ALPHA}, and worse on the pairs both were scored on). Every other metric is compared "
        "with the method best in it. Intervals and p hold for the seeds that were run: a "
        "seed's model scores every test case, and a shift of a whole model is not resampled "
        "(seeds are resampled within each case), so with few seeds they can be too narrow. "
        "Cost: mean wall time per run, largest peak memory.",
        "",
        *_power_note(tests),
    ]
    for budget in budget_order(runs):
        mine = {name: tests[(tests.metric == name) & (tests.budget == budget)] for name in names}
        sub = summary[summary.budget == budget].set_index("method")
        rows = []
        for r in mine["dsc"].itertuples():
            s_ = sub.loc[r.method]
            c = cost.loc[(r.method, budget)]
            row = [str(r.rank), r.method]
            for name in names:
                row += [
                    f"{f3(s_[name])} [{f3(s_[name + '_lo'])}, {f3(s_[name + '_hi'])}]",
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
            f"{h}# {budget_header(budget, n_by_budget[budget])}",
            "",
            md_table(header, rows, "rl" + "rrr" * len(names) + "rrrl"),
            "",
        ]
    return out


def _power_note(tests: pd.DataFrame) -> list[str]:
    """What the number of test cases allows: the smallest p an exact test can give, and
    whether any adjusted p can fall below `ALPHA` after Holm over all the comparisons."""
    tested = tests[tests["p"].notna()]
    if tested.empty:
        return []
    counts = tested["tested"].astype(int)  # the n each test used: its non-zero differences
    n = int(counts.max())  # what the best-placed comparison allows: a bound for all of them
    usual = int(counts.mode().iloc[0])
    m = len(tested)
    floor = min(1.0, m * smallest_p(n))
    per = "per comparison" if usual == n else f"in the largest comparison ({usual} in most)"
    text = (
        f"n = {plural(n, 'test case')} {per}: the smallest two-sided p an exact "
        f"test can give is 2 / 2^{n} = {smallest_p(n):.2g}, and after Holm over {m} "
        f"comparison{'s' if m != 1 else ''} the smallest adjusted p is {floor:.2g}."
    )
    tied = tested[tested["tested"] < tested["cases"]]
    if not tied.empty:
        text += (
            f" In {plural(len(tied), 'comparison')}, test cases on which both methods score "
            "the same (a per-case difference of 0) are left out of the test, as the "
            "signed-rank test does, so its n is below the case count."
        )
    if floor >= ALPHA:
        need = next(k for k in range(1, 64) if m * smallest_p(k) < ALPHA)
        text += (
            f" No difference can be marked significant with so few cases (it takes at least "
            f"{need})."
        )
    return [text, ""]


def results_section(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    level: int,
    plot_name: str | None,
    ceilings: pd.DataFrame | None = None,
) -> list[str]:
    """Markdown lines of the results of `runs` (one protocol hash), headings at `level`;
    `plot_name` (when given) embeds the DSC plot and the heatmap."""
    h = "#" * level
    # This hash's own metrics: one that another hash declares is all NaN here.
    metrics = metrics[metrics.run_id.isin(runs.run_id)]
    metrics = metrics.drop(columns=[n for n in metric_names(metrics) if metrics[n].isna().all()])
    ceiling = ceiling_scores(runs, ceilings)
    summary = summarize(runs, metrics)
    budgets = budget_order(runs)
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
        f"Per-case scores average {plural(n_organs, 'organ')}. Unless a cell says otherwise "
        f"it pools {plural(usual[0], 'seed')} × {plural(usual[1], 'test case')}."
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
    short = short_organs(organs)
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
            text = {k: f3(v) for k, v in values.items()}
            for method, t in bold_best(values, text).items():
                cols[method][organ] = t
        rows = [[m, *(cols[m][o] for o in table.columns)] for m in table.index]
        header = ["method", *(short[o] for o in table.columns)]
        out += [
            f"{h}# {budget_header(budget, n_by_budget[budget])}",
            "",
            md_table(header, rows, "l" + "r" * len(table.columns)),
            "",
        ]

    cost = cost_table(runs)
    # One unit for the whole column so rows can be compared at a glance.
    unit, scale = time_unit(float(cost["wall_s"].max()))
    rows = [
        [
            r.method,
            budget_header(r.budget, n_by_budget[r.budget]),
            str(r.runs),
            count_or_dash(r.finetune_samples),
            count_or_dash(r.pretrain_samples),
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
        f"batch), fixed by the protocol. All {plural(len(runs), 'run')} together took "
        f"{duration(float(runs['wall_s'].sum()))}.",
        "",
        md_table(
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
