"""Learning-rate trials on validation: the same three trials for every method.

Each method's fine-tuning learning rate (its config field `lr`) is tried at its default
times each `--factors` value (0.3×, 1×, 3× by default), at the `--budgets` label budgets,
seed 0, on the protocol's own training budget. The score of a trial is its kept model's
mean validation DSC (never a test score), averaged over the budgets; the best trial per
method is the default it should ship with. Pretraining (DDPM, SimCLR, MAE) runs once per
method and seed and is shared by its trials (the pretraining learning rates are the cited
ones, not tuned here). `nnunet` is left out: nnU-Net's self-configured schedule is the
method.

All trials run as one `bench sweep` grid in their own results store, so the study resumes
where it stopped, and `--jobs` runs trials side by side (useful on a GPU):

    LABELBENCH_CACHE=... python perf/tune_lr.py --results runs/tuning \\
        [--device cuda --jobs 6] [--out reports/phantom/tuning_lr.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from benchmark.progress import Progress
from benchmark.registry import get_method
from benchmark.store import FINISHED, ResultsStore
from benchmark.sweep import SweepRequest, run_sweep

METHODS = "unet-scratch,simclr,mae,diffusion-decoder,diffusion-linear"


def trial_values(methods: list[str], field: str, factors: list[float]) -> dict[str, list[float]]:
    """Each method's trial values: its default `field` times each factor (3 significant digits)."""
    return {m: [float(f"{default(m, field) * f:.3g}") for f in factors] for m in methods}


def default(method: str, field: str) -> float:
    """The method's default value of `field`; a None default resolves as the method does
    (`diffusion-linear`'s `lr` follows its head: its `head_lr`)."""
    config = get_method(method).Config()
    value = getattr(config, field)
    return getattr(config, f"head_{field}") if value is None else value


def variants(values: dict[str, list[float]], field: str) -> list[list[str]]:
    """One `--set` list per trial index, scoped to each method."""
    n = len(next(iter(values.values())))
    return [[f"{m}:{field}={v[i]!r}" for m, v in values.items()] for i in range(n)]


def table(results: Path, methods: list[str], budgets: list[str], field: str,
          values: dict[str, list[float]], seed: int) -> pd.DataFrame:  # fmt: skip
    """Validation DSC per method × trial value × budget, with the mean and the winner."""
    runs = ResultsStore(results).runs(status=FINISHED)
    runs = runs[runs.method.isin(methods) & runs.budget.isin(budgets) & (runs.seed == seed)]
    runs = runs.assign(value=[json.loads(c).get(field) for c in runs.config])
    rows = []
    for method in methods:
        default_value = float(f"{default(method, field):.3g}")
        for value in values[method]:
            mine = runs[(runs.method == method) & (runs.value == value)]
            row = {"method": method, field: value, "default": value == default_value}
            for budget in budgets:
                hit = mine[mine.budget == budget]
                row[budget] = float(hit.val_dsc.iloc[-1]) if len(hit) else float("nan")
                if len(hit) and hit.status.iloc[-1] != "completed":
                    row[budget + " status"] = hit.status.iloc[-1]
            rows.append(row)
    out = pd.DataFrame(rows)
    out["mean"] = out[budgets].mean(axis=1, skipna=False)
    best = out.groupby("method")["mean"].transform("max")
    complete = out.groupby("method")["mean"].transform(lambda m: m.notna().all())
    out["chosen"] = out["mean"].eq(best) & complete  # only once every trial has a score
    return out


def markdown(df: pd.DataFrame, budgets: list[str], field: str, command: str) -> str:
    lines = [
        "# Learning-rate trials (validation DSC of the kept model, seed 0)",
        "",
        f"Made by `{command}`.",
        "",
        f"| method | {field} | " + " | ".join(budgets) + " | mean | |",
        "|---|---:|" + "---:|" * len(budgets) + "---:|---|",
    ]
    for d in df.to_dict("records"):
        marks = ("**chosen**" if d["chosen"] else "") + (" (default)" if d["default"] else "")
        cells = " | ".join(f"{d[b]:.4f}" for b in budgets)
        lines.append(f"| {d['method']} | {d[field]:g} | {cells} | {d['mean']:.4f} | {marks} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", default="phantom")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--budgets", default="1pct,10pct")
    ap.add_argument("--factors", default="0.3,1,3")
    ap.add_argument("--field", default="lr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--results", type=Path, default=Path("runs/tuning"))
    ap.add_argument("--out", type=Path, default=None, help="write the table as Markdown here")
    ap.add_argument("--summarize", action="store_true", help="only print the table")
    args = ap.parse_args()
    methods, budgets = args.methods.split(","), args.budgets.split(",")
    factors = [float(f) for f in args.factors.split(",")]
    values = trial_values(methods, args.field, factors)
    if not args.summarize:
        request = SweepRequest(
            methods=methods,
            budgets=budgets,
            seeds=[args.seed],
            protocol=args.protocol,
            device=args.device,
            results=args.results,
            variants=variants(values, args.field),
            jobs=args.jobs,
        )
        result = run_sweep(request, Progress(quiet=True), lambda f: print(
            f"{f.method} {f.budget}: {f.status} {f.error or ''}", flush=True))  # fmt: skip
        print(f"{result.count('failed')} failed", flush=True)
    df = table(args.results, methods, budgets, args.field, values, args.seed)
    text = markdown(df, budgets, args.field, "python perf/tune_lr.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
