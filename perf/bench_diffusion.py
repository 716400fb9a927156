"""Diffusion transfer speed on the phantom (CPU): what a 128 × 128 model input costs in
pretraining against 64 × 64, and the speed-up of training each head (linear, MLP ensemble)
on cached features against recomputing them every step, and what one validation costs the
MLP ensemble against DDPM-Seg's order of operations.

    python perf/bench_diffusion.py [--head-steps 10] [--pretrain-steps 6]
        [--resolutions 64,128] [--predict-slices 4] [--end-to-end] [--device cpu]

Every figure is a ratio of two timings taken in this one run (the machine is shared and
noisy; absolute times from different runs do not compare). Pretraining runs the project's
`pretrain_ddpm` on random in-memory slices of the phantom's slice size, at each input size,
and the per-step time is the difference of a short and a longer run, so start-up does not
count. The head steps use the phantom's `1pct` labeled slices and a randomly initialised
DDPM of the `cpu` preset (speed does not depend on weights): "cached" reads the features
from a `FeatureBank`, "recomputed" runs the UNet taps on the batch every step. With
`--predict-slices N` times the default MLP ensemble's prediction (`labels`, eval mode) on N
slices of random features of the taps' shapes two ways: the project's (the first layer at
each group's resolution, then upsampled; standardisation and batch norms folded into the
layers) and DDPM-Seg's (features standardised and upsampled to S × S, then every layer on
every pixel), and scales both to the protocol's validation slices. With
`--end-to-end` it also times `bench pretrain` and a cached `bench run` of diffusion-linear
(uses `$LABELBENCH_CACHE`; a cached pretraining is reported as such).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_diffusion import RandomSlices, timed_pretraining

from benchmark.compute import steps_for
from benchmark.config import apply_overrides
from benchmark.data.context import load_data
from benchmark.method import SliceSet
from benchmark.progress import Progress
from benchmark.protocol import load_protocol
from methods.diffusion.features import FeatureBank, by_resolution
from methods.diffusion.heads import build_head
from methods.diffusion.linear import DiffusionLinearConfig, make_taps
from methods.diffusion.model import build_unet


def bench(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "benchmark.cli", *args], check=True, env=os.environ)
    return time.perf_counter() - t


def pretraining_step_s(
    resolutions: list[int], slice_size: int, steps: int, warmup: int, device: torch.device
) -> dict[int, float]:
    """Seconds per DDPM pretraining step (cpu preset) at each model input size."""
    data = RandomSlices(64, slice_size)
    base = apply_overrides(DiffusionLinearConfig, [])
    never = 10**9

    def cfg(res: int, n: int) -> DiffusionLinearConfig:
        return dataclasses.replace(
            base, resolution=res, pretrain_iterations=n, checkpoint_every=never
        )

    short = {r: timed_pretraining(cfg(r, warmup), data, device) for r in resolutions}
    long = {r: timed_pretraining(cfg(r, warmup + steps), data, device) for r in resolutions}
    return {r: (long[r] - short[r]) / steps for r in resolutions}


def head_step_s(
    protocol: str, resolution: int, head: str, steps: int, device: torch.device
) -> tuple[float, float, float, int]:
    """Seconds per head step on cached and on recomputed features, caching time, channels."""
    progress = Progress(quiet=True)
    proto = load_protocol(protocol)
    data = load_data(proto, None, progress)
    _, rows = data.budget_rows(proto.budget("1pct"), 0)
    labeled = SliceSet(data.store, rows, labeled=True)
    cfg = apply_overrides(DiffusionLinearConfig, [f"resolution={resolution}", f"head={head}"])
    torch.manual_seed(0)
    taps = make_taps(build_unet(cfg).to(device), cfg, labeled.slice_size)
    t = time.perf_counter()
    bank = FeatureBank(taps, labeled, cfg.predict_batch_size, cfg.feature_memory_mb, device)
    setup = time.perf_counter() - t
    labels = labeled.labels().to(device)
    rng = np.random.default_rng(0)

    def run(get_feats) -> float:
        net = build_head(
            head,
            taps.group_channels,
            proto.num_classes,
            labeled.slice_size,
            cfg.members,
            cfg.hidden,
            cfg.vote,
            cfg.pixels,
        ).to(device)
        net.set_stats(bank.get(np.arange(len(labeled)), device))
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.head_lr)
        points = net.draw_points(steps, cfg.batch_size, torch.Generator().manual_seed(0))
        points = None if points is None else points.to(device)
        t0 = time.perf_counter()
        for i in range(steps):
            idx = np.sort(rng.integers(0, len(labeled), cfg.batch_size))
            at = None if points is None else points[i]
            loss = net.loss(get_feats(idx), labels[torch.from_numpy(idx)], at)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / steps

    def recompute(idx: np.ndarray) -> list[torch.Tensor]:
        return by_resolution(taps(labeled.images(idx).to(device)))

    run(lambda idx: bank.get(idx, device))  # warm-up of both paths' kernels
    cached = run(lambda idx: bank.get(idx, device))
    recomputed = run(recompute)
    return cached, recomputed, setup, sum(taps.channels)


def head_predict_s(
    resolution: int, slice_size: int, slices: int, num_classes: int, device: torch.device
) -> tuple[float, float, float]:
    """Seconds per slice of the default MLP ensemble's prediction, the project's way and
    DDPM-Seg's way, and the largest difference in their logits."""
    cfg = apply_overrides(DiffusionLinearConfig, [f"resolution={resolution}"])
    torch.manual_seed(0)
    taps = make_taps(build_unet(cfg).to(device), cfg, slice_size)
    with torch.no_grad():
        probe = by_resolution(taps(torch.rand(1, 1, slice_size, slice_size, device=device)))
    feats = [
        torch.randn(slices, *f.shape[1:], device=device).contiguous(
            memory_format=torch.channels_last
        )
        for f in probe
    ]  # FeatureBank's layout
    head = build_head(
        "mlp-ensemble", taps.group_channels, num_classes, slice_size, cfg.members, cfg.hidden,
        cfg.vote, cfg.pixels,
    ).to(device)  # fmt: skip
    head.set_stats(feats)
    head.eval()

    def ddpm_seg_order() -> torch.Tensor:  # (M, N, K, S, S)
        up = torch.cat(
            [
                torch.nn.functional.interpolate(
                    (f - head.norm.stats(i)[0]) / head.norm.stats(i)[1],
                    size=(slice_size, slice_size), mode="bilinear", align_corners=False,
                )
                for i, f in enumerate(feats)
            ],
            1,
        )  # fmt: skip
        rows = up.permute(0, 2, 3, 1).reshape(-1, up.shape[1])
        z = rows @ torch.cat(list(head.w_in), 0) + head.b_in
        logits = head._tail(z)  # (M, P, K), eval-mode batch norms
        return logits.view(head.members, slices, slice_size, slice_size, -1).permute(0, 1, 4, 2, 3)

    timings = []
    with torch.no_grad():
        ours, theirs = head.member_logits(feats), ddpm_seg_order()  # warm-up
        for fn in (lambda: head.labels(feats), lambda: ddpm_seg_order().argmax(2).mode(0)):
            t = time.perf_counter()
            fn()
            timings.append((time.perf_counter() - t) / slices)
    return timings[0], timings[1], float((ours - theirs).abs().max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="phantom")
    parser.add_argument("--head-steps", type=int, default=10, help="0: skip")
    parser.add_argument("--pretrain-steps", type=int, default=6, help="timed steps per size")
    parser.add_argument("--pretrain-warmup", type=int, default=2)
    parser.add_argument("--resolutions", default="64,128")
    parser.add_argument("--heads", default="linear,mlp-ensemble")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--predict-slices", type=int, default=4, help="0: skip")
    parser.add_argument("--end-to-end", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    slice_size = load_protocol(args.protocol).slice_size
    print(
        f"{args.protocol}: {slice_size}² slices; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {device}",
        flush=True,
    )
    if args.pretrain_steps:
        per_step = pretraining_step_s(
            resolutions, slice_size, args.pretrain_steps, args.pretrain_warmup, device
        )
        batch = apply_overrides(DiffusionLinearConfig, []).pretrain_batch_size
        steps = steps_for(load_protocol(args.protocol).training.pretrain_samples, batch)
        for r, s in per_step.items():
            print(
                f"DDPM pretraining (cpu preset, batch {batch}) at {r}×{r}: {s * 1e3:.0f} ms/step, "
                f"the protocol's {steps} steps ≈ {steps * s / 60:.0f} min",
                flush=True,
            )
        lo, hi = min(resolutions), max(resolutions)
        print(
            f"  {hi}×{hi} costs {per_step[hi] / per_step[lo]:.2f}× {lo}×{lo} per step (same run)",
            flush=True,
        )
    for r in resolutions if args.head_steps else []:
        for head in args.heads.split(","):
            cached, recomputed, setup, channels = head_step_s(
                args.protocol, r, head, args.head_steps, device
            )
            print(
                f"{head} head at input {r} ({channels} channels): cached features "
                f"{cached * 1e3:.0f} ms/step, recomputed {recomputed * 1e3:.0f} ms/step -> "
                f"{recomputed / cached:.1f}x faster (target >= 10x); one-off caching "
                f"{setup:.1f} s",
                flush=True,
            )
    if args.predict_slices:
        proto = load_protocol(args.protocol)
        data = load_data(proto, None, Progress(quiet=True))
        n_val = sum(len(data.store.rows_of_case(c)) for c in data.split.val)
        for r in resolutions:
            ours, theirs, diff = head_predict_s(
                r, slice_size, args.predict_slices, proto.num_classes, device
            )
            print(
                f"mlp-ensemble prediction at input {r}, one validation ({n_val} slices): "
                f"{ours * n_val:.1f} s, DDPM-Seg's order {theirs * n_val:.1f} s -> "
                f"{theirs / ours:.1f}x faster (largest logit difference {diff:.1e})",
                flush=True,
            )
    if args.end_to_end:
        s = bench("pretrain", "--method", "diffusion-linear", "--device", args.device, "--quiet")
        print(f"bench pretrain --method diffusion-linear: {s:.0f} s (~0 s when cached)")
        s = bench(
            "run",
            "--method",
            "diffusion-linear",
            "--budget",
            "1pct",
            "--device",
            args.device,
            "--results",
            "/tmp/labelbench-bench-diffusion",
            "--force",
            "--quiet",
        )
        print(f"bench run --method diffusion-linear --budget 1pct, pretraining cached: {s:.0f} s")


if __name__ == "__main__":
    main()
