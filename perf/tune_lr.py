"""Learning-rate trials on validation: the same three trials for every method.

Each method's fine-tuning learning rate (its config field `lr`) is tried at its default
times each `--factors` value (0.3×, 1×, 3× by default), at the `--budgets` label budgets,
seed 0, on the protocol's own training budget (or `--samples`, to finish a study begun
under an older protocol at that length). The score of a trial is its kept model's
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
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from benchmark.compute import steps_for
from benchmark.config import apply_overrides
from benchmark.progress import Progress
from benchmark.protocol import load_protocol
from benchmark.registry import get_method
from benchmark.store import FINISHED, ResultsStore
from benchmark.sweep import SweepRequest, run_sweep

METHODS = "unet-scratch,simclr,mae,diffusion-decoder,diffusion-linear"


def scoped(sets: Sequence[str], methods: list[str]) -> dict[str, list[str]]:
    """Each method's overrides from `--set` values: `key=value` for every method,
    `method:key=value` for that method alone."""
    out: dict[str, list[str]] = {m: [] for m in methods}
    for item in sets:
        head, _, rest = item.partition(":")
        if rest and "=" not in head:
            if head not in out:
                raise SystemExit(f"--set {item}: {head} is not one of --methods")
            out[head].append(rest)
        else:
            for m in methods:
                out[m].append(item)
    return out


def trial_values(
    methods: list[str], field: str, factors: list[float], sets: dict[str, list[str]]
) -> dict[str, list[float]]:
    """Each method's trial values: its default `field` (under its `sets`) times each factor
    (3 significant digits)."""
    return {m: [_round(default(m, field, sets[m]) * f) for f in factors] for m in methods}


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def default(method: str, field: str, sets: Sequence[str] = ()) -> float:
    """The method's default value of `field` under the `sets` overrides; a None default
    resolves as the method does (`diffusion-linear`'s `lr` follows its head: its `head_lr`)."""
    config = apply_overrides(get_method(method).Config, sets)
    value = getattr(config, field)
    return getattr(config, f"head_{field}") if value is None else value


def variants(
    values: dict[str, list[float]],
    field: str,
    samples: int | None = None,
    sets: dict[str, list[str]] | None = None,
) -> list[list[str]]:
    """One `--set` list per trial index, scoped to each method, after the method's `sets`.
    With `samples`, every trial fine-tunes for that many samples instead of the protocol's
    (its declared steps field at its default batch; the runs are then marked off-protocol,
    as any such `--set` is)."""
    n = len(next(iter(values.values())))
    sets = sets or {}
    return [
        [
            s
            for m, v in values.items()
            for s in [
                *(f"{m}:{x}" for x in sets.get(m, [])),
                f"{m}:{field}={v[i]!r}",
                *length(m, samples),
            ]
        ]
        for i in range(n)
    ]


def length(method: str, samples: int | None) -> list[str]:
    """The `--set` that makes `method` fine-tune for `samples` samples (none for None)."""
    cls = get_method(method)
    if samples is None or not cls.compute or "finetune" not in cls.compute:
        return []
    steps_field, batch_field = cls.compute["finetune"]
    if batch_field is None:
        raise SystemExit(f"{method} chooses its batch in fit; --samples cannot set its steps")
    batch = getattr(cls.Config(), batch_field)
    return [f"{method}:{steps_field}={steps_for(samples, batch)}"]


def trial_runs(results: Path, methods: list[str], budgets: list[str], field: str, seed: int,
               sets: dict[str, list[str]], samples: int) -> pd.DataFrame:  # fmt: skip
    """The store's finished trials of `methods` that fine-tuned for `samples` samples and whose
    config agrees with each method's `sets` (so two studies of one method, e.g. per head or
    per length, can share a store, never mixed in one table), with their `value`."""
    runs = ResultsStore(results).runs(status=FINISHED)
    runs = runs[runs.method.isin(methods) & runs.budget.isin(budgets) & (runs.seed == seed)]
    runs = runs[runs.finetune_samples == samples]
    configs = [json.loads(c) for c in runs.config]
    keep = []
    for method, config in zip(runs.method, configs, strict=True):
        wanted = dataclasses.asdict(apply_overrides(get_method(method).Config, sets[method]))
        keys = [x.partition("=")[0].strip() for x in sets[method]]
        keep.append(all(json.dumps(config.get(k)) == json.dumps(wanted[k]) for k in keys))
    runs = runs.assign(value=[c.get(field) for c in configs])
    return runs[keep]


def stored_values(runs: pd.DataFrame, methods: list[str]) -> dict[str, list[float]]:
    """The trial values each method was run with (to summarize trials whose default has
    since changed)."""
    return {m: sorted(set(runs.loc[runs.method == m, "value"].dropna())) for m in methods}


def table(runs: pd.DataFrame, methods: list[str], budgets: list[str], field: str,
          values: dict[str, list[float]], sets: dict[str, list[str]]) -> pd.DataFrame:  # fmt: skip
    """Validation DSC per method × trial value × budget, with the mean and the winner."""
    rows = []
    for method in methods:
        default_value = _round(default(method, field, sets[method]))
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
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every trial: key=value for every method, "
                    "method:key=value for one (e.g. diffusion-linear:head=linear)")  # fmt: skip
    ap.add_argument("--samples", type=int, default=None,
                    help="fine-tuning samples per trial (default: the protocol's); the table "
                    "shows only trials of this length")  # fmt: skip
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--results", type=Path, default=Path("runs/tuning"))
    ap.add_argument("--out", type=Path, default=None, help="write the table as Markdown here")
    ap.add_argument("--summarize", action="store_true", help="only print the table")
    args = ap.parse_args()
    methods, budgets = args.methods.split(","), args.budgets.split(",")
    factors = [float(f) for f in args.factors.split(",")]
    sets = scoped(args.sets, methods)
    values = trial_values(methods, args.field, factors, sets)
    if not args.summarize:
        request = SweepRequest(
            methods=methods,
            budgets=budgets,
            seeds=[args.seed],
            protocol=args.protocol,
            device=args.device,
            results=args.results,
            variants=variants(values, args.field, args.samples, sets),
            jobs=args.jobs,
        )
        result = run_sweep(request, Progress(quiet=True), lambda f: print(
            f"{f.method} {f.budget}: {f.status} {f.error or ''}", flush=True))  # fmt: skip
        print(f"{result.count('failed')} failed", flush=True)
    samples = args.samples or load_protocol(args.protocol).training.finetune_samples
    runs = trial_runs(args.results, methods, budgets, args.field, args.seed, sets, samples)
    if args.summarize:  # the values actually run (a default may have changed since)
        if runs.empty:
            raise SystemExit(
                f"no finished trials of {samples} fine-tuning samples in {args.results} "
                "(--samples picks the length a study was run at)"
            )
        values = stored_values(runs, methods)
    df = table(runs, methods, budgets, args.field, values, sets)
    text = markdown(df, budgets, args.field, "python perf/tune_lr.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
