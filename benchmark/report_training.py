"""What the leaderboard says about training: which runs are ranked, the learning curves, and
the protocol's ceiling.

A run is ranked only when it finished, passed the sanity gate (status `completed`) and ran
on the protocol's compute (`off_protocol` empty). Every other finished run is listed with its
reason. Learning curves (validation DSC against samples seen) are plotted per budget, and a
run whose best validation score came in the last tenth of training while still rising is
flagged "may be undertrained" (`benchmark.validation.may_be_undertrained`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.validation import CurvePoint, may_be_undertrained

CURVES_NAME = "learning_curves.png"


def split_ranked(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ranked, unranked) finished runs: ranked are `completed` and on-protocol."""
    ranked = pd.Series(True, index=runs.index)
    if "status" in runs:
        ranked &= runs["status"] == "completed"
    if "off_protocol" in runs:
        ranked &= runs["off_protocol"].isna()
    return runs[ranked], runs[~ranked]


def _reason(run: pd.Series) -> str:
    reasons = []
    if run["status"] == "unfit":
        reasons.append(str(run["error"]))
    if isinstance(run.get("off_protocol"), str):
        reasons.append(f"off-protocol: {run['off_protocol']}")
    return "; ".join(reasons)


def unranked_section(unranked: pd.DataFrame, metrics: pd.DataFrame) -> list[str]:
    """Markdown listing every finished run left out of the ranking, with its scores."""
    from benchmark.report import _f3, _md_table

    if unranked.empty:
        return []
    mean = metrics.groupby("run_id")["dsc"].mean() if "dsc" in metrics else pd.Series()
    rows = [
        [
            str(r.method),
            str(r.budget),
            str(r.seed),
            _f3(mean.get(r.run_id, float("nan"))),
            _f3(r.get("train_dsc", float("nan"))),
            _reason(r),
        ]
        for _, r in unranked.sort_values(["method", "budget", "seed"]).iterrows()
    ]
    header = ["method", "budget", "seed", "test DSC", "train-slice DSC", "why not ranked"]
    return [
        "## Not ranked",
        "",
        "Finished runs that are shown but never ranked: `unfit` runs failed the sanity gate "
        "(their fitted model does not segment its own labeled slices), off-protocol runs "
        "trained with other compute than the protocol's budget.",
        "",
        _md_table(header, rows, "llrrrl"),
        "",
    ]


def undertrained(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """The runs whose learning curve says they may be undertrained."""
    flagged = []
    for run_id, grp in curves.groupby("run_id"):
        points = [
            CurvePoint(int(r.samples), float(r.train_loss), float(r.val_dsc))
            for r in grp.sort_values("samples").itertuples()
        ]
        if may_be_undertrained(points):
            flagged.append(run_id)
    return runs[runs["run_id"].isin(flagged)]


def curves_section(
    runs: pd.DataFrame, curves: pd.DataFrame | None, plot_name: str | None
) -> list[str]:
    """Markdown: the learning-curve plot and the runs flagged "may be undertrained"."""
    if curves is None or curves.empty or not curves["run_id"].isin(runs["run_id"]).any():
        return []
    curves = curves[curves["run_id"].isin(runs["run_id"])]
    out = [
        "## Learning curves",
        "",
        "Mean validation DSC against labeled samples seen in fine-tuning, one line per run. "
        "The kept model is the best validated one (unless a method declares its own rule).",
        "",
    ]
    if plot_name:
        out += [f"![Learning curves]({plot_name})", ""]
    flagged = undertrained(runs, curves)
    if flagged.empty:
        out += ["No run is flagged: every best validation score came before the last 10 % of "
                "training, or the curve had stopped rising.", ""]  # fmt: skip
    else:
        listed = ", ".join(f"{r.method} · {r.budget} · seed {r.seed}" for r in flagged.itertuples())
        out += [
            f"**May be undertrained** ({len(flagged)}): {listed}. Their best validation score "
            "came in the last 10 % of training while still rising.",
            "",
        ]
    return out


def plot_curves(runs: pd.DataFrame, curves: pd.DataFrame, out_png: Path) -> Path | None:
    """Validation DSC vs. samples seen, one panel per budget, one line per run."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from benchmark.report import _atomic_write, _budget_order

    data = curves.merge(runs[["run_id", "method", "budget", "seed"]], on="run_id")
    if data.empty:
        return None
    budgets = [b for b in _budget_order(runs) if b in set(data["budget"])]
    methods = sorted(data["method"].unique(), key=str)
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(4.2 * len(budgets), 3.8), dpi=120, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(budgets), squeeze=False, sharey=True)[0]
        for ax, budget in zip(axes, budgets, strict=True):
            sub = data[data["budget"] == budget]
            for _, run in sub.groupby("run_id"):
                run = run.sort_values("samples")
                method = run["method"].iloc[0]
                ax.plot(run["samples"], run["val_dsc"], color=palette[method], lw=1.2,
                        marker=".", label=method)  # fmt: skip
            ax.set_title(budget)
            ax.set_xlabel("labeled samples seen")
        axes[0].set_ylabel("mean validation DSC")
        handles = {}
        for ax in axes:
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, h)
        fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")

        def save(tmp: Path) -> None:
            fig.savefig(tmp, format="png")

        return _atomic_write(Path(out_png), save)


def ceiling_scores(runs: pd.DataFrame, ceilings: pd.DataFrame | None) -> dict[str, float]:
    """Mean of every metric of the protocol's ceiling for these runs' protocol hash, data and
    split (mean over test cases of the organ mean, as every score), or {} when not stored."""
    if ceilings is None or ceilings.empty or runs.empty:
        return {}
    keys = ["protocol_hash", "dataset_key", "split_hash"]
    triples = runs[keys].drop_duplicates()
    if len(triples) != 1:  # runs on different data or splits have no single ceiling
        return {}
    mine = ceilings.merge(triples, on=keys)
    if mine.empty:
        return {}
    names = [c for c in mine.columns if c not in (*keys, "case_id", "organ_id", "organ")]
    per_case = mine.groupby("case_id")[names].mean()
    return {name: float(per_case[name].mean()) for name in names}
