"""The report's plots, each a PNG written atomically: mean DSC against labeled slices with
intervals, per-organ DSC as a heatmap, and the learning curves.

matplotlib and seaborn are imported when a plot is drawn, and each plot draws on its own
`Figure` with an Agg canvas: no pyplot state, no global backend switch, no figure left open.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.report.files import save_png
from benchmark.report.formatting import count, short_organs
from benchmark.report.frames import budget_order


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
        ax.set_xticks(ticks.to_numpy(), [f"{count(n)}\n{b}" for b, n in ticks.items()])
        ax.minorticks_off()
        ax.set_xlabel("Labeled training slices (count, log scale)")
        ax.set_ylabel("Mean DSC (0–1)")
        protocol = summary.attrs.get("protocol")
        title = "Mean DSC vs. labeled training slices"
        ax.set_title(f"{protocol}: {title}" if protocol else title)
        ax.legend(title="method (95% CI over test cases)", fontsize="small", title_fontsize="small")

        return save_png(fig, out_png)


def plot_organ_heatmap(tables: dict[str, pd.DataFrame], out_png: Path) -> Path:
    """Per-organ mean DSC, methods × organs, one panel per budget (values written in cells)."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tables = {b: t for b, t in tables.items() if not t.empty}
    if not tables:
        raise ValueError("nothing to plot: no per-organ DSC")
    organs = next(iter(tables.values())).columns
    short = short_organs(organs)
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

        return save_png(fig, out_png)


def plot_curves(runs: pd.DataFrame, curves: pd.DataFrame, out_png: Path) -> Path | None:
    """Validation DSC vs. samples seen, one panel per budget, one line per run."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = curves.merge(runs[["run_id", "method", "budget", "seed"]], on="run_id")
    if data.empty:
        return None
    budgets = [b for b in budget_order(runs) if b in set(data["budget"])]
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

        return save_png(fig, out_png)
