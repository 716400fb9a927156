"""Choose the protocol's fine-tuning budget from measured validation scores.

Trains `unet-scratch` at the given label budgets with fine-tuning budgets of B, 2B, 4B, ...
samples (each a full run with its own cosine schedule, validated every `validate_every`
samples, the best validated weights kept) and prints the validation DSC of each. The chosen
budget is the smallest B at which every label budget's validation DSC is within `--tol` of
its score at 2B: more training would not change the result. It also prints each run's plateau
(mean validation DSC over its last quarter) and where its kept model was validated, and the
same rule on the plateau: the kept score is a maximum over validations, which favours longer
runs (more validations) even where they learn nothing more. Only validation cases are
scored for the choice (test scores are recorded by the runs but not used here).

Runs go to their own results store (every budget but the protocol's own is off-protocol),
so the study resumes where it stopped.

    LABELBENCH_CACHE=... python perf/convergence.py --results runs/convergence \\
        --budgets 10pct,100pct --samples 2400,4800,9600,19200 [--plot curve.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchmark.progress import Progress
from benchmark.protocol import load_protocol
from benchmark.runner import RunRequest, execute, prepare
from benchmark.store import FINISHED, ResultsStore


def run_grid(args: argparse.Namespace, progress: Progress) -> pd.DataFrame:
    data = None
    for budget in args.budgets:
        for samples in args.samples:
            req = RunRequest(
                method=args.method,
                budget=budget,
                protocol=args.protocol,
                seed=args.seed,
                device=args.device,
                results=args.results,
                overrides=[f"batch_size={args.batch}", f"iterations={samples // args.batch}"],
            )
            prep = prepare(req, progress, data)
            data = prep.data
            out = execute(prep, progress)
            print(f"{budget} · {samples} samples: run {out.run_id} ({out.status})", flush=True)
    return collect(args)


def collect(args: argparse.Namespace) -> pd.DataFrame:
    """The study's finished runs in the store (protocol, method, seed, budgets, samples)."""
    runs = ResultsStore(args.results).runs(status=FINISHED)
    runs = runs[(runs.method == args.method) & (runs.seed == args.seed)]
    runs = runs[runs.protocol == load_protocol(args.protocol).name]
    runs["samples"] = runs["finetune_samples"]
    return runs[runs.budget.isin(args.budgets) & runs.samples.isin(args.samples)]


def late_scores(runs: pd.DataFrame, curves: pd.DataFrame, frac: float = 0.25) -> pd.DataFrame:
    """Per run: the mean validation DSC over the last `frac` of its training (its plateau) and
    the samples seen when its kept model was validated. The kept score is the best of every
    validation, so a longer run (more validations) has more chances of a lucky point; the
    plateau has no such bias."""
    rows = []
    for r in runs.itertuples():
        c = curves[curves.run_id == r.run_id].sort_values("samples")
        late = c[c["samples"] > (1 - frac) * r.samples]
        rows.append({"run_id": r.run_id, "plateau": late["val_dsc"].mean(),
                     "kept_at": int(c.loc[c["val_dsc"].idxmax(), "samples"])})  # fmt: skip
    return runs.merge(pd.DataFrame(rows), on="run_id")


def choose(table: pd.DataFrame, samples: list[int], tol: float) -> int | None:
    """The smallest B whose every label budget is within `tol` of its score at 2B."""
    for b in samples:
        if 2 * b not in samples or {b, 2 * b} - set(table.columns):
            continue  # not measured (yet)
        if table[[b, 2 * b]].isna().any(axis=None):
            continue
        if all(abs(table.loc[budget, 2 * b] - table.loc[budget, b]) <= tol
               for budget in table.index):  # fmt: skip
            return b
    return None


def plot(runs: pd.DataFrame, curves: pd.DataFrame, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    budgets = sorted(runs["budget"].unique(), key=lambda b: runs[runs.budget == b].n_labeled.max())
    axes = fig.subplots(1, len(budgets), squeeze=False, sharey=True)[0]
    for ax, budget in zip(axes, budgets, strict=True):
        for r in runs[runs.budget == budget].sort_values("samples").itertuples():
            c = curves[curves.run_id == r.run_id].sort_values("samples")
            ax.plot(c["samples"], c["val_dsc"], marker=".", label=f"{r.samples:,} samples")
        ax.set_title(f"unet-scratch · {budget}")
        ax.set_xlabel("labeled samples seen")
        ax.set_xscale("log")
    axes[0].set_ylabel("mean validation DSC")
    axes[-1].legend(title="fine-tuning budget", fontsize="small")
    fig.savefig(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", default="phantom")
    ap.add_argument("--method", default="unet-scratch")
    ap.add_argument("--budgets", default="10pct,100pct")
    ap.add_argument("--samples", default="2400,4800,9600,19200")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results", type=Path, default=Path("runs/convergence"))
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--summarize", action="store_true", help="only read the store; run nothing")
    args = ap.parse_args()
    args.budgets = args.budgets.split(",")
    args.samples = sorted(int(s) for s in args.samples.split(","))
    if any(s % args.batch for s in args.samples):
        ap.error(f"every --samples value must be a multiple of --batch {args.batch}")

    runs = collect(args) if args.summarize else run_grid(args, Progress(quiet=True))
    curves = ResultsStore(args.results).curves(runs.run_id)
    runs = late_scores(runs, curves)
    table = runs.pivot_table(index="budget", columns="samples", values="val_dsc")
    tables = {
        "validation DSC of the kept model (rows: label budget, columns: samples seen)": table,
        "samples seen when the kept model was validated": runs.pivot_table(
            index="budget", columns="samples", values="kept_at"
        ),
        "mean validation DSC over the last quarter of training (the plateau)": (
            plateau := runs.pivot_table(index="budget", columns="samples", values="plateau")
        ),
        "wall time per run (s)": runs.pivot_table(
            index="budget", columns="samples", values="wall_s"
        ),
    }
    for title, t in tables.items():
        print(f"\n{title}")
        print(t.round(4).to_string())
    for name, t in (("kept", table), ("plateau", plateau)):
        chosen = choose(t, args.samples, args.tol)
        print(
            f"\nsmallest fine-tuning budget whose {name} score is within {args.tol} of twice its "
            "length: " + (f"{chosen:,} samples" if chosen else "none of these (train longer)")
        )
    if args.plot:
        plot(runs, curves, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
