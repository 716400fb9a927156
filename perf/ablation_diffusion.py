"""Validation-only ablation of `diffusion-linear`: model input size × head × tap set ×
timesteps (× pretraining samples), scored on the protocol's validation cases, never test.

    python perf/ablation_diffusion.py --device cuda --seeds 0,1,2 \\
        --out reports/phantom/ablation_diffusion

Defaults: the `phantom` protocol, budgets 4slices and 1pct, input 64 and 128, heads linear
and mlp-ensemble, tap sets 0,1 and 0,1,2 (`--tap-sets`, sets split by "/"), timesteps 50
and 50,150,250, the protocol's pretraining samples. Every variant gets the same pretraining
samples; the DDPM is pretrained once per (input size, pretraining samples, seed) with
`pretrain_seed` = seed, through the harness's pretraining cache (so `bench run` reuses it),
and its features are computed once per (budget, tap set, timesteps) and shared by both heads.
Each head trains exactly as in a run: the protocol's fine-tuning samples, validated every
`validate_every` samples, the best validated weights kept; the table reports the kept
model's mean validation DSC (the selection score, so optimistic alike for every variant).

`--pretrain-samples 3200,12800,51200` (with one head and tap set) gives DSC against
pretraining samples. `--set key=value` passes extra config overrides (e.g. a tiny model).
Results go to `<out>/ablation.csv` after every variant and `<out>/ABLATION.md` (with the
command) after every group; a rerun skips the rows already in the CSV, so an interrupted
grid resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch

from benchmark.compute import configure, steps_for
from benchmark.config import identity_dict
from benchmark.data.context import load_data
from benchmark.data.source import cache_root
from benchmark.errors import LabelbenchError
from benchmark.fingerprint import code_fingerprint
from benchmark.method import RunContext, SliceSet
from benchmark.progress import Progress
from benchmark.protocol import load_protocol, stable_hash
from benchmark.provenance import describe_device, resolve_device
from benchmark.runner import run_pretraining
from benchmark.validation import Validator
from methods.diffusion.features import FeatureBank
from methods.diffusion.linear import (
    DiffusionLinear,
    DiffusionLinearConfig,
    make_taps,
    train_head,
)

FACTORS = ["pretrain_samples", "finetune_samples", "resolution", "head", "taps", "timesteps"]
KEY = [*FACTORS, "budget", "seed", "setup"]
"""A row's identity: a CSV row is reused only for this exact variant, fine-tuning length
included, made under the same `setup` (a changed protocol, head code or `--set` recomputes
its rows instead of reusing them)."""
UNRECORDED = "unrecorded"
"""The setup of rows written before the column existed: never reused."""


def setup_key(protocol_hash: str, base: DiffusionLinearConfig) -> str:
    """What a row depends on beyond its factors: the protocol (its split, validation cases and
    training length), the code of the method and the core, package versions (so rows made
    with another torch build are kept apart), this script, and the config that `--set` gave
    (learning rate, members, pixels, vote, noise seed, ...)."""
    code = code_fingerprint(DiffusionLinear.__module__)
    script = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return stable_hash(
        {"protocol": protocol_hash, "code": code, "script": script, "config": identity_dict(base)}
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="phantom")
    ap.add_argument("--budgets", default="4slices,1pct")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--resolutions", default="64,128", help="model input sides (pixels)")
    ap.add_argument("--heads", default="linear,mlp-ensemble")
    ap.add_argument("--tap-sets", default="0,1/0,1,2", help="up_blocks sets, split by /")
    ap.add_argument("--timesteps", default="50/50,150,250", help="timestep sets, split by /")
    ap.add_argument("--pretrain-samples", default="", help="default: the protocol's")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation_diffusion"))
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument(
        "--summarize", action="store_true", help="only rewrite ABLATION.md from the CSV"
    )
    args = ap.parse_args(argv)
    args.budgets = args.budgets.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.resolutions = [int(r) for r in args.resolutions.split(",")]
    args.heads = args.heads.split(",")
    args.tap_sets = [_ints(t) for t in args.tap_sets.split("/")]
    args.timesteps = [_ints(t) for t in args.timesteps.split("/")]
    given = sys.argv[1:] if argv is None else argv
    args.command = shlex.join(["python", "perf/ablation_diffusion.py", *given])
    return args


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _label(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


class Results:
    """The CSV of finished variants, appended to one row at a time."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.csv, self.md = out / "ablation.csv", out / "ABLATION.md"
        self.table: pd.DataFrame | None = None
        self.done: set[tuple[str, ...]] = set()
        self.header: list[str] | None = None  # the CSV file's columns
        if self.csv.exists():
            self.table = pd.read_csv(self.csv, dtype={"taps": str, "timesteps": str})
            self.header = list(self.table.columns)
            if "finetune_samples" not in self.table:  # rows of unknown length: never reused
                self.table.insert(1, "finetune_samples", pd.NA)
            if "setup" not in self.table:  # rows of an unknown setup: never reused
                self.table["setup"] = UNRECORDED
            self.table["setup"] = self.table["setup"].fillna(UNRECORDED).astype(str)
            self.done = set(map(tuple, self.table[KEY].astype(str).values))

    def has(self, **key) -> bool:
        return tuple(str(key[k]) for k in KEY) in self.done

    def add(self, row: dict) -> None:
        frame = pd.DataFrame([row])
        self.table = frame if self.table is None else pd.concat([self.table, frame])
        if self.header is not None and set(self.header) == set(frame.columns):
            frame[self.header].to_csv(self.csv, mode="a", header=False, index=False)
        else:  # a new file, or one of an older layout: the whole table, columns migrated
            tmp = self.csv.with_suffix(".csv.tmp")
            self.table.to_csv(tmp, index=False)
            tmp.replace(self.csv)
            self.header = list(self.table.columns)
        self.done.add(tuple(str(row[k]) for k in KEY))


def _level_order(value: object) -> tuple[int, float, str]:
    """Numbers in numeric order (64 before 128), then the rest as text."""
    try:
        return (0, float(str(value)), "")
    except ValueError:
        return (1, 0.0, str(value))


def paired(t: pd.DataFrame) -> list[dict]:
    """Per factor, each pair of its levels and budget: the variants equal in everything else."""
    out = []
    for factor in FACTORS:
        levels = sorted(t[factor].unique(), key=_level_order)
        rest = [k for k in KEY if k != factor]
        for i, a in enumerate(levels):
            for b in levels[i + 1 :]:
                both = t[t[factor] == a].merge(t[t[factor] == b], on=rest, suffixes=("_a", "_b"))
                for budget, g in both.groupby("budget", sort=False):
                    out.append({
                        "factor": factor, "a_level": a, "b_level": b, "budget": budget,
                        "n": len(g), "a": g["val_dsc_a"].mean(), "b": g["val_dsc_b"].mean(),
                        "wins": int((g["val_dsc_b"] > g["val_dsc_a"]).sum()),
                    })  # fmt: skip
    return out


def markdown(table: pd.DataFrame, args: argparse.Namespace, device: str) -> str:
    """The ablation table: mean validation DSC per variant and budget, and per factor level."""
    t = table.copy()
    t["taps"], t["timesteps"] = t["taps"].astype(str), t["timesteps"].astype(str)
    if "device" in t and t["device"].notna().any():  # the devices that measured the rows
        device = " and ".join(sorted(set(t["device"].dropna())))
    budgets = [b for b in args.budgets if b in set(t["budget"])]
    several = t["setup"].nunique() > 1  # rows of several setups are shown apart, never pooled
    columns = ["setup", *FACTORS] if several else FACTORS
    agg = t.groupby([*columns, "budget"])["val_dsc"].agg(["mean", "std", "count"])
    wide = agg["mean"].unstack("budget").reindex(columns=budgets)
    wide["mean"] = wide.mean(axis=1)
    wide = wide.sort_values("mean", ascending=False)
    lines = [
        "# diffusion-linear ablation (validation cases only)",
        "",
        f"Made by `{args.command}` on {device}, {datetime.now(UTC):%Y-%m-%d}. Protocol "
        f"`{args.protocol}`; mean DSC over the validation cases and organs of the head kept by "
        "validation selection, averaged over seeds (± sd when more than one). A row's "
        "pretraining and fine-tuning samples are its own columns; compare rows only where "
        "they agree (the paired table below does).",
        "",
    ]
    if several:
        lines += [
            f"The rows come from {t['setup'].nunique()} setups (protocol, code or `--set` "
            "differ; `unrecorded`: rows made before the setup was recorded). Compare rows only "
            "within one setup.",
            "",
        ]
    lines += [
        "| " + ("setup | " if several else "") + "pretrain samples | fine-tune samples | input "
        "| head | taps | timesteps | " + " | ".join(budgets) + " | mean |",
        "|"
        + ("---|" if several else "")
        + "---:|---:|---:|---|---|---|"
        + "---:|" * (len(budgets) + 1),
    ]
    best = wide["mean"].max()
    for key, row in wide.iterrows():
        cells = []
        for b in budgets:
            if pd.isna(row[b]):
                cells.append("")
                continue
            sd, k = agg.loc[(*key, b), "std"], agg.loc[(*key, b), "count"]
            cells.append(f"{row[b]:.3f}" + (f" ± {sd:.3f}" if k > 1 else ""))
        mean = f"{row['mean']:.3f}"
        if row["mean"] == best:
            mean = f"**{mean}**"
        lines.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(cells) + f" | {mean} |")
    lines += [
        "",
        "Each factor, paired: two levels compared only on variants that are equal in every "
        "other factor, budget and seed (so an unbalanced grid does not mix in other factors). "
        "n = pairs; wins = pairs where the second level is higher.",
        "",
        "| factor | levels (a → b) | budget | n | a | b | b − a | wins |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in paired(t):
        lines.append(
            f"| {p['factor']} | {p['a_level']} → {p['b_level']} | {p['budget']} | {p['n']} | "
            f"{p['a']:.3f} | {p['b']:.3f} | {p['b'] - p['a']:+.3f} | {p['wins']}/{p['n']} |"
        )
    seconds = t.groupby("head")["fit_s"].mean()
    lines += ["", "Mean seconds per head fit (features cached): "
              + ", ".join(f"{h} {s:.0f} s" for h, s in seconds.items()) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        if not (args.out / "ablation.csv").is_file():
            print(f"error: {args.out / 'ablation.csv'} does not exist", file=sys.stderr)
            return 2
        results = Results(args.out)
        assert results.table is not None
        results.md.write_text(markdown(results.table, args, "the devices listed"))
        print(f"wrote {results.md}")
        return 0
    progress = Progress(quiet=args.quiet)
    try:
        protocol = load_protocol(args.protocol)
        data = load_data(protocol, None, progress)
        if not data.split.val or not protocol.training.select:
            raise LabelbenchError(
                f"protocol {args.protocol}: the ablation needs validation cases and select = true"
            )
        base, _ = configure(DiffusionLinear, args.overrides, protocol.training)
        ft = base.iterations * base.batch_size  # labeled samples each head is trained on
        setup = setup_key(protocol.hash, base)
        for b in args.budgets:
            protocol.budget(b)
        levels = len(base.channels)
        if bad := [t for t in args.tap_sets if max(t) >= levels or min(t) < 0]:
            raise LabelbenchError(f"--tap-sets {bad}: up_blocks run 0..{levels - 1}")
        if bad := [t for t in args.timesteps if max(t) >= base.train_timesteps or min(t) < 0]:
            raise LabelbenchError(f"--timesteps {bad}: outside 0..{base.train_timesteps - 1}")
    except LabelbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    pretrain = [int(s) for s in args.pretrain_samples.split(",") if s] or [
        protocol.training.pretrain_samples
    ]
    validator = Validator(data.store, data.split.val, protocol)
    results = Results(args.out)
    groups = [(n, r, s) for n in pretrain for r in args.resolutions for s in args.seeds]
    per_group = len(args.budgets) * len(args.tap_sets) * len(args.timesteps) * len(args.heads)
    print(
        f"{len(groups)} pretrainings × {per_group} head fits = {len(groups) * per_group} "
        f"variants on {describe_device(device)}; results in {args.out}",
        flush=True,
    )
    t_start, fits_done, fit_time, pre_done, pre_time = time.perf_counter(), 0, 0.0, 0, 0.0
    pending = {  # per pretraining, the head fits the CSV does not hold yet
        (n, r, s): [
            (b, tp, ts, h)
            for b in args.budgets for tp in args.tap_sets for ts in args.timesteps
            for h in args.heads
            if not results.has(pretrain_samples=n, finetune_samples=ft, resolution=r, head=h,
                               taps=_label(tp), timesteps=_label(ts), budget=b, seed=s,
                               setup=setup)
        ]
        for n, r, s in groups
    }  # fmt: skip
    remaining = sum(map(len, pending.values()))
    for gi, (n, r, s) in enumerate(groups):
        todo = pending[(n, r, s)]
        if not todo:
            continue
        steps = steps_for(n, base.pretrain_batch_size)
        cfg = dataclasses.replace(base, resolution=r, pretrain_seed=s, pretrain_iterations=steps)
        method = DiffusionLinear(cfg)
        ctx = RunContext(device, s, protocol.num_classes, cache_root() / "pretrain", progress)
        print(f"[{gi + 1}/{len(groups)}] pretraining: input {r}, {n} samples ({steps} steps "
              f"of {cfg.pretrain_batch_size}), pretrain_seed {s}", flush=True)  # fmt: skip
        t = time.perf_counter()
        run_pretraining(method, protocol, data.index, ctx, progress)
        dt = time.perf_counter() - t
        if not ctx.info["pretrain"]["cached"]:
            pre_done, pre_time = pre_done + 1, pre_time + dt
        backbone = method.backbone.to(device)
        for b in args.budgets:
            _, rows = data.budget_rows(protocol.budget(b), s)
            labeled = SliceSet(data.store, rows, labeled=True)
            for tp in args.tap_sets:
                for ts in args.timesteps:
                    heads = [h for bb, t2, s2, h in todo if (bb, t2, s2) == (b, tp, ts)]
                    if not heads:
                        continue
                    tcfg = dataclasses.replace(cfg, tap_blocks=tp, tap_timesteps=ts)
                    t = time.perf_counter()
                    taps = make_taps(backbone, tcfg, labeled.slice_size)
                    banks = [
                        FeatureBank(
                            taps, x, tcfg.predict_batch_size, tcfg.feature_memory_mb, device
                        )
                        for x in (labeled, validator.slices)
                    ]
                    feat_s = time.perf_counter() - t
                    for h in heads:
                        hcfg = dataclasses.replace(tcfg, head=h)
                        fctx = RunContext(
                            device, s, protocol.num_classes, ctx.cache_dir, progress,
                            training=protocol.training, validator=validator,
                        )  # fmt: skip
                        t = time.perf_counter()
                        train_head(banks[0], labeled, hcfg, fctx, taps.group_channels, banks[1])
                        fit_s = time.perf_counter() - t
                        sel = fctx.info["selection"]
                        results.add({
                            "pretrain_samples": n, "finetune_samples": ft,
                            "resolution": r, "head": h,
                            "taps": _label(tp), "timesteps": _label(ts), "budget": b,
                            "seed": s, "val_dsc": round(sel["val_dsc"], 5),
                            "kept_samples": sel["kept_samples"],
                            "n_labeled": len(labeled), "channels": sum(taps.channels),
                            "features_s": round(feat_s, 1), "fit_s": round(fit_s, 1),
                            "device": describe_device(device), "setup": setup,
                        })  # fmt: skip
                        fits_done, fit_time = fits_done + 1, fit_time + fit_s
                        remaining -= 1
                        eta = remaining * fit_time / fits_done + (len(groups) - gi - 1) * (
                            pre_time / pre_done if pre_done else 0.0
                        )
                        print(
                            f"  {b} seed {s} input {r} taps {_label(tp)} t {_label(ts)} {h}: "
                            f"val DSC {sel['val_dsc']:.3f} (fit {fit_s:.0f} s); {remaining} "
                            f"left, about {eta / 60:.0f} min more",
                            flush=True,
                        )
        assert results.table is not None
        results.md.write_text(markdown(results.table, args, describe_device(device)))
    if results.table is not None:
        results.md.write_text(markdown(results.table, args, describe_device(device)))
        print(f"wrote {results.csv} and {results.md} in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    sys.exit(main(sys.argv[1:]))
