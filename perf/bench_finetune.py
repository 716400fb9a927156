"""Fine-tuning step time: the harness's recipe (`unet-scratch`) against a bare PyTorch loop.

Both train the same `smp.Unet` (resnet18 encoder, random init) at the same batch size on the
phantom's labeled slices, with the same loss (Dice + CE, batch Dice) and optimizer (AdamW).
The harness adds what a run needs around the step: seeded batch drawing, the cosine
schedule, loss bookkeeping and progress. Augmentation is part of the recipe, not of the
harness: it is off in the comparison and timed on its own. Validation is timed on its own too
(it runs every `validate_every` samples, so its cost per step is reported as a share).

Per-step times come from two runs of different length (the difference, divided by the extra
steps), so setup is not counted. Variants are interleaved and repeated; medians are printed,
with ratios taken within this one run. Also printed: GFLOP per step (torch's FLOP counter,
forward + backward) and the achieved GFLOP/s against the CPU's peak (AVX2: 2 FMA units × 8
float32 lanes × 2 = 32 FLOP per cycle and core, at the base clock given).

    LABELBENCH_CACHE=... python perf/bench_finetune.py [--steps 40] [--repeats 3]
    LABELBENCH_CACHE=... python perf/bench_finetune.py --compile   # torch.compile vs eager
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from monai.losses import DiceCELoss

from baselines.unet_scratch import UNetConfig, build_unet
from benchmark.data.context import load_data
from benchmark.method import RunContext, SliceSet
from benchmark.progress import Progress
from benchmark.protocol import load_protocol
from benchmark.supervised import train_supervised
from benchmark.validation import Validator


def bare_step(
    labeled: SliceSet,
    cfg: UNetConfig,
    classes: int,
    channels_last: bool = False,
    compiled: bool = False,
) -> Callable[[], None]:
    """One plain optimizer step of a new seeded U-Net (data already in RAM as tensors),
    eager or under `torch.compile` (inductor)."""
    torch.manual_seed(0)
    model = build_unet(cfg, classes).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    run = torch.compile(model) if compiled else model
    images, labels = labeled.images(), labeled.labels()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
        x = images[idx].contiguous(memory_format=fmt)
        loss = loss_fn(run(x), labels[idx][:, None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step: Callable[[], None], steps: int) -> float:
    """Seconds for `steps` calls of `step`."""
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t


def bare_loop(
    labeled: SliceSet, cfg: UNetConfig, classes: int, steps: int, channels_last: bool = False
) -> float:
    """Seconds for `steps` plain optimizer steps (setup not counted)."""
    return timed(bare_step(labeled, cfg, classes, channels_last), steps)


def compiled_vs_eager(labeled: SliceSet, cfg: UNetConfig, classes: int, steps: int) -> None:
    """Print the bare loop's step time under `torch.compile` (inductor) against eager, each
    model warmed up first (the compile time is printed, not counted)."""
    times = {}
    for name in ("eager", "torch.compile"):
        step = bare_step(labeled, cfg, classes, compiled=name == "torch.compile")
        warm = timed(step, 2)
        times[name] = timed(step, steps) / steps
        print(f"bare loop, {name:14s} {1000 * times[name]:8.1f} ms/step (warm-up {warm:.0f} s)")
    print(f"torch.compile / eager = {times['torch.compile'] / times['eager']:.3f}")


def harness(labeled: SliceSet, cfg: UNetConfig, ctx: RunContext, steps: int) -> float:
    """Seconds for `train_supervised` with `steps` iterations (setup included)."""
    torch.manual_seed(0)
    model = build_unet(cfg, ctx.num_classes)
    t = time.perf_counter()
    train_supervised(model, replace(cfg, iterations=steps), labeled, ctx)
    return time.perf_counter() - t


def per_step(run: Callable[[int], float], short: int, long: int) -> float:
    return (run(long) - run(short)) / (long - short)


def step_gflop(labeled: SliceSet, cfg: UNetConfig, classes: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = build_unet(cfg, classes).train()
    x, y = labeled.images(np.arange(cfg.batch_size)), labeled.labels(np.arange(cfg.batch_size))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(x), y[:, None]).backward()
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", default="phantom")
    ap.add_argument("--budget", default="10pct")
    ap.add_argument("--steps", type=int, default=40, help="extra steps of the long run")
    ap.add_argument("--short", type=int, default=5, help="steps of the short run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="only: torch.compile against eager")
    ap.add_argument("--base-ghz", type=float, default=2.45, help="CPU base clock for the peak")
    args = ap.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    progress = Progress(quiet=True)
    protocol = load_protocol(args.protocol)
    data = load_data(protocol, None, progress)
    _, rows = data.budget_rows(protocol.budget(args.budget), 0)
    labeled = SliceSet(data.store, rows, labeled=True)
    cfg = UNetConfig(augment=False)
    classes = protocol.num_classes
    ctx = RunContext(torch.device("cpu"), 0, classes, data.store.root, progress)
    long = args.short + args.steps
    if args.compile:
        compiled_vs_eager(labeled, cfg, classes, args.steps)
        return
    print(
        f"{len(labeled)} labeled slices of {labeled.slice_size}², batch {cfg.batch_size}, "
        f"smp.Unet({cfg.encoder}), {torch.get_num_threads()} threads, torch {torch.__version__}"
    )

    variants: dict[str, Callable[[int], float]] = {
        "bare loop": lambda n: bare_loop(labeled, cfg, classes, n),
        "harness (train_supervised)": lambda n: harness(labeled, cfg, ctx, n),
        "bare loop, channels-last": lambda n: bare_loop(labeled, cfg, classes, n, True),
        "harness + augmentation": lambda n: harness(labeled, replace(cfg, augment=True), ctx, n),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits all alike
        for name, run in variants.items():
            times[name].append(per_step(run, args.short, long))
    med = {name: statistics.median(t) for name, t in times.items()}
    gflop = step_gflop(labeled, cfg, classes)
    peak = torch.get_num_threads() * 32 * args.base_ghz
    base = med["bare loop"]
    for name, t in med.items():
        print(
            f"{name:30s} {1000 * t:8.1f} ms/step  ×{t / base:5.3f} of the bare loop  "
            f"{gflop / t:6.1f} GFLOP/s"
        )
    print(
        f"harness / bare loop = {med['harness (train_supervised)'] / base:.3f} "
        f"(target ≤ 1.05); {gflop:.2f} GFLOP per step (forward + backward); bare loop at "
        f"{gflop / base:.1f} GFLOP/s = {100 * gflop / base / peak:.0f} % of the "
        f"{peak:.0f} GFLOP/s float32 peak ({torch.get_num_threads()} cores × 32 FLOP/cycle × "
        f"{args.base_ghz} GHz)"
    )

    # Validation, run every validate_every samples: its cost as a share of training.
    val = Validator(data.store, data.split.val, protocol)
    model = build_unet(cfg, classes).eval()
    t = time.perf_counter()
    val.score(lambda x: model(x).argmax(1))
    t_val = time.perf_counter() - t
    every = protocol.training.validate_every / cfg.batch_size
    share = t_val / (t_val + every * med["harness (train_supervised)"])
    print(
        f"validation on {len(val)} cases ({len(val.slices)} slices): {t_val:.1f} s each, every "
        f"{every:.0f} steps = {100 * share:.0f} % of fine-tuning time"
    )


if __name__ == "__main__":
    main()
