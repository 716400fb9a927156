"""GPU figures of the diffusion model's `paper` preset (256 × 256): pretraining throughput in
bf16 and its peak memory, sampling throughput for DDPM (1000 steps) and DDIM (50 steps), and
diffusion-linear's heads (DDPM-Seg's MLP ensemble and the linear head) on 256 × 256 features.

    python perf/bench_gpu_diffusion.py [--preset paper] [--train-steps 60]
        [--sample-n 64] [--ddpm-steps 1000] [--ddim-steps 50] [--device cuda]
        [--head-steps 50] [--set key=value ...]

Pretraining runs the project's own `pretrain_ddpm` (the same loop `bench pretrain` runs:
bf16 autocast, AdamW, gradient clipping, EMA) on in-memory random slices, twice: a short run
that absorbs start-up and kernel selection, and a longer one; the throughput is the
difference in steps over the difference in time, so start-up does not count. Sampling runs
`sample` (the one `bench sample` and `bench fidelity` use) with random weights: the speed of
a UNet does not depend on its weights. The heads: the preset's decoder taps (`tap_blocks`,
timesteps 50, 150, 250) of random slices at the model's input size, cached in a
`FeatureBank` (images/s of feature extraction), then head training steps on the cached
features (slices/s; the MLP ensemble samples `pixels` pixels per slice, as in a run) and
prediction of whole 256 × 256 label maps (images/s), each with its peak memory. Runs on
CPU too, with `--preset cpu` and `--set` overrides for a tiny model: the test suite does.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.compute import steps_for
from benchmark.config import apply_overrides
from benchmark.progress import Progress
from benchmark.protocol import load_protocol
from methods.diffusion.features import FeatureBank
from methods.diffusion.heads import build_head
from methods.diffusion.linear import DiffusionLinearConfig, make_taps
from methods.diffusion.model import DDPMConfig, build_unet
from methods.diffusion.pretrain import pretrain_ddpm
from methods.diffusion.sampling import sample


class RandomSlices:
    """What `pretrain_ddpm` reads of a SliceSet: random slices in [0, 1] held in memory."""

    def __init__(self, n: int, size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self._images = torch.from_numpy(rng.random((n, 1, size, size), dtype=np.float32))
        self.slice_size = size

    def __len__(self) -> int:
        return len(self._images)

    def images(self, idx: np.ndarray) -> torch.Tensor:
        return self._images[torch.from_numpy(np.asarray(idx))]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**30


def timed_pretraining(cfg: DDPMConfig, data: RandomSlices, device: torch.device) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        t = time.perf_counter()
        pretrain_ddpm(cfg, data, Path(tmp), device, Progress(quiet=True))  # type: ignore[arg-type]
        sync(device)
        return time.perf_counter() - t


def bench_heads(
    base: DiffusionLinearConfig, steps: int, n: int, device: torch.device, classes: int = 14
) -> None:
    """Feature caching, head training and head prediction at the model's input size."""
    res = base.resolution
    data = RandomSlices(n, res, seed=1)
    labels = torch.randint(0, classes, (n, res, res), device=device)
    taps = make_taps(build_unet(base).to(device).eval(), base, res)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    bank = FeatureBank(taps, data, base.predict_batch_size, 1 << 30, device)  # type: ignore[arg-type]
    sync(device)
    dt = time.perf_counter() - t
    print(
        f"decoder features (blocks {base.tap_blocks}, timesteps {base.tap_timesteps}, "
        f"{sum(taps.channels)} channels): {n / dt:.1f} images/s; {bank.megabytes:.0f} MB cached "
        f"for {n} slices at the blocks' own resolutions; peak GPU memory {peak_gib(device):.2f} GiB"
    )
    rng = np.random.default_rng(0)
    for kind in ("mlp-ensemble", "linear"):
        cfg = dataclasses.replace(base, head=kind)
        head = build_head(kind, taps.group_channels, classes, res, cfg.members, cfg.hidden,
                          cfg.vote, cfg.pixels).to(device)  # fmt: skip
        head.set_stats(bank.get(np.arange(min(n, 16)), device))
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr)
        points = head.draw_points(steps + 1, cfg.batch_size, torch.Generator().manual_seed(0))
        points = None if points is None else points.to(device)

        t = time.perf_counter()
        for i in range(steps + 1):
            if i == 1:  # the first step is a warm-up
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sync(device)
                t = time.perf_counter()
            idx = np.sort(rng.integers(0, n, cfg.batch_size))
            target = labels[torch.from_numpy(idx).to(device)]
            loss = head.loss(bank.get(idx, device), target, None if points is None else points[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        train_s = (time.perf_counter() - t) / steps
        train_peak = peak_gib(device)
        head.eval()
        with torch.no_grad():
            batch = min(n, cfg.predict_batch_size)
            head.labels(bank.get(np.arange(2), device))  # warm-up
            sync(device)
            t = time.perf_counter()
            out = head.labels(bank.get(np.arange(batch), device))
            sync(device)
            pred_s = time.perf_counter() - t
        assert out.shape == (batch, res, res)
        what = (
            f"{cfg.members} MLPs {cfg.hidden}, {cfg.vote} vote, {cfg.pixels} pixels per slice"
            if kind == "mlp-ensemble"
            else "1×1 convolution"
        )
        print(
            f"{kind} head on {res}×{res} features ({what}): training {train_s * 1e3:.1f} ms/step "
            f"= {cfg.batch_size / train_s:.0f} slices/s (batch {cfg.batch_size}; peak GPU memory "
            f"{train_peak:.2f} GiB); prediction {batch / pred_s:.1f} images/s "
            f"(peak {peak_gib(device):.2f} GiB)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--train-steps", type=int, default=60, help="timed pretraining steps")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--sample-n", type=int, default=64)
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--ddpm-steps", type=int, default=1000)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-ddpm", action="store_true", help="time DDIM sampling only")
    parser.add_argument("--head-steps", type=int, default=50, help="timed head steps (0: none)")
    parser.add_argument("--head-slices", type=int, default=64, help="slices of cached features")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    base = apply_overrides(DiffusionLinearConfig, [f"preset={args.preset}", *args.overrides])
    res = base.resolution
    amp = base.mixed_precision and device.type == "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    params = sum(p.numel() for p in build_unet(base).parameters())
    print(
        f"device {name}; torch {torch.__version__}; preset {args.preset}: {res}×{res}, "
        f"channels {base.channels}, {params / 1e6:.1f} M parameters, batch "
        f"{base.pretrain_batch_size}, bf16 autocast {amp}"
    )

    data = RandomSlices(max(256, base.pretrain_batch_size * 4), res)
    never = 10**9  # no intermediate checkpoints inside the timed steps

    def cfg(steps: int) -> DDPMConfig:
        return dataclasses.replace(base, pretrain_iterations=steps, checkpoint_every=never)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    short = timed_pretraining(cfg(args.warmup_steps), data, device)
    long = timed_pretraining(cfg(args.warmup_steps + args.train_steps), data, device)
    per_step = (long - short) / args.train_steps
    # Pretraining length is the protocol's (samples ÷ batch), not the preset's.
    flare = load_protocol("flare22").training.pretrain_samples
    flare_steps = steps_for(flare, base.pretrain_batch_size)
    images_s = base.pretrain_batch_size / per_step
    peak = peak_gib(device)
    print(
        f"pretraining: {per_step * 1000:.1f} ms/step, {images_s:.1f} training images/s "
        f"(batch {base.pretrain_batch_size}, {args.train_steps} timed steps); peak GPU memory "
        f"{peak:.2f} GiB; the flare22 protocol's {flare_steps} steps ≈ "
        f"{flare_steps * per_step / 3600:.2f} h"
    )

    model = build_unet(base).to(device).eval()
    runs = [("ddim", args.ddim_steps)] + ([] if args.skip_ddpm else [("ddpm", args.ddpm_steps)])
    for sampler, steps in runs:
        sample(model, base, min(args.sample_batch, 4), res, sampler, 2, batch_size=4)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t = time.perf_counter()
        out = sample(model, base, args.sample_n, res, sampler, steps, batch_size=args.sample_batch)
        sync(device)
        dt = time.perf_counter() - t
        peak = peak_gib(device)
        assert out.shape == (args.sample_n, 1, res, res)
        print(
            f"sampling {sampler.upper()} {steps} steps: {args.sample_n} images in {dt:.1f} s = "
            f"{args.sample_n / dt:.2f} images/s ({args.sample_n * steps / dt:.0f} UNet "
            f"evaluations/s, batch {args.sample_batch}); peak GPU memory {peak:.2f} GiB"
        )
    if args.head_steps:
        bench_heads(base, args.head_steps, args.head_slices, device)


if __name__ == "__main__":
    main()
