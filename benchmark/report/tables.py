"""The report's tables as DataFrames, one row per thing shown: the score summary with
intervals per (method, budget), per-organ DSC per budget, compute cost per (method, budget),
and the protocol's ceiling. The Markdown of them is `benchmark.report.sections`.
"""

from __future__ import annotations

import pandas as pd

from benchmark.fingerprint import scoring_part
from benchmark.report.frames import budget_order, case_scores, metric_names, require_runs
from benchmark.report.stats import N_BOOT, case_ci


def summarize(runs: pd.DataFrame, metrics: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per (method, budget), budgets by median n_labeled, then methods by name.

    For every metric `m` of `metrics`: `m`, the mean over test cases of each case's mean
    over seeds of its organ-mean score, and `m_lo`/`m_hi`, its 95% two-level percentile
    bootstrap (test cases, then seeds within each case). Pass runs of a single protocol hash.
    """
    require_runs(runs)
    scores = case_scores(runs, metrics)
    names = metric_names(metrics)
    order = {b: i for i, b in enumerate(budget_order(runs))}
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
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = case_ci(sc, name, n_boot)
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
    require_runs(runs)
    m = metrics.merge(runs[["run_id", "method", "budget"]], on="run_id")
    organs = m[["organ_id", "organ"]].drop_duplicates("organ_id").sort_values("organ_id")["organ"]
    organs = list(dict.fromkeys(organs))
    out: dict[str, pd.DataFrame] = {}
    for budget in budget_order(runs):
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


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, budget), method-major: runs, mean wall time, largest peak memory,
    devices and the samples seen in fine-tuning and pretraining."""
    order = {b: i for i, b in enumerate(budget_order(runs))}
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


def ceiling_scores(runs: pd.DataFrame, ceilings: pd.DataFrame | None) -> dict[str, float]:
    """Mean of every metric of the protocol's ceiling for these runs' protocol hash, data,
    split and scoring code (mean over test cases of the organ mean, as every score), or {}
    when not stored. Only runs with a code fingerprint count (not `bench evaluate`'s
    submissions, nor runs recorded before fingerprints); when they were scored by more than
    one code there is no single ceiling, as there is none for several data sets or splits."""
    if ceilings is None or ceilings.empty or runs.empty or "code" not in runs:
        return {}
    keys = ["protocol_hash", "dataset_key", "split_hash", "code"]
    scored = runs.dropna(subset=["code"]).assign(code=lambda r: r["code"].map(scoring_part))
    triples = scored[keys].drop_duplicates()
    if len(triples) != 1:
        return {}
    mine = ceilings.merge(triples, on=keys)
    if mine.empty:
        return {}
    names = [c for c in mine.columns if c not in (*keys, "case_id", "organ_id", "organ")]
    per_case = mine.groupby("case_id")[names].mean()
    return {name: float(per_case[name].mean()) for name in names}
