"""Diffusion transfer figures on the phantom (CPU): pretraining time, a cached run, and the
speed-up of training the linear head on cached features vs recomputing them every step.

    python benchmarks/bench_diffusion.py [--head-steps 20] [--skip-pretrain]

Uses the normal cache (`$LABELBENCH_CACHE`), so a pretraining already cached is reused
and reported as such; pass a fresh LABELBENCH_CACHE to time pretraining from scratch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch
from monai.losses import DiceCELoss

from benchmark.config import apply_overrides
from benchmark.method import SliceSet
from benchmark.progress import Progress
from benchmark.protocol import load_protocol
from benchmark.runner import load_data, pretrained_method
from methods.diffusion.features import by_resolution
from methods.diffusion.linear import DiffusionLinearConfig, FeatureBank, LinearHead


def bench(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "benchmark.cli", *args], check=True, env=os.environ)
    return time.perf_counter() - t


def head_speedup(steps: int) -> tuple[float, float, float]:
    """Seconds per head step with cached features, with recomputed features, and setup time."""
    progress = Progress(quiet=True)
    method, ctx = pretrained_method("phantom", "diffusion-linear", [], "cpu", None, 0, progress)
    data = load_data(load_protocol("phantom"), None, progress)
    _, rows = data.budget_rows(load_protocol("phantom").budget("1pct"), 0)
    labeled = SliceSet(data.store, rows, labeled=True)
    cfg: DiffusionLinearConfig = apply_overrides(DiffusionLinearConfig, [])
    taps = method._taps(ctx, labeled.slice_size)
    t = time.perf_counter()
    bank = FeatureBank(taps, labeled, cfg.predict_batch_size, cfg.feature_memory_mb, ctx.device)
    setup = time.perf_counter() - t
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    labels = labeled.labels()
    rng = np.random.default_rng(0)

    def run(get_feats) -> float:
        head = LinearHead(taps.group_channels, ctx.num_classes, labeled.slice_size)
        head.set_stats(bank.get(np.arange(len(labeled)), ctx.device))
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr)
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = np.sort(rng.integers(0, len(labeled), cfg.batch_size))
            loss = loss_fn(head(get_feats(idx)), labels[torch.from_numpy(idx)][:, None])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / steps

    cached = run(lambda idx: bank.get(idx, ctx.device))
    recomputed = run(lambda idx: by_resolution(taps(labeled.images(idx))))
    return cached, recomputed, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-steps", type=int, default=20)
    parser.add_argument("--skip-pretrain", action="store_true")
    args = parser.parse_args()
    lines = []
    if not args.skip_pretrain:
        s = bench("pretrain", "--method", "diffusion-linear", "--device", "cpu", "--quiet")
        lines.append(f"bench pretrain --method diffusion-linear (phantom defaults): {s:.0f}s "
                     f"(target < 900s; includes unlabeled preprocessing; ~0s when cached)")
        s = bench("run", "--method", "diffusion-linear", "--budget", "1pct", "--device", "cpu",
                  "--results", "/tmp/labelbench-bench-diffusion", "--force", "--quiet")
        lines.append(f"bench run --method diffusion-linear --budget 1pct, pretraining cached: "
                     f"{s:.0f}s (target < 120s)")
    cached, recomputed, setup = head_speedup(args.head_steps)
    lines.append(f"linear head step: cached features {cached * 1e3:.1f} ms, recomputed "
                 f"{recomputed * 1e3:.1f} ms -> {recomputed / cached:.0f}x faster (target >= 10x); "
                 f"one-off feature caching {setup:.1f}s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
