"""GPU figures of the diffusion model's `paper` preset (256 × 256): pretraining throughput in
bf16 and its peak memory, and sampling throughput for DDPM (1000 steps) and DDIM (50 steps).

    python benchmarks/bench_gpu_diffusion.py [--preset paper] [--train-steps 60]
        [--sample-n 64] [--ddpm-steps 1000] [--ddim-steps 50] [--device cuda]

Pretraining runs the project's own `pretrain_ddpm` (the same loop `bench pretrain` runs:
bf16 autocast, AdamW, gradient clipping, EMA) on in-memory random slices, twice: a short run
that absorbs start-up and kernel selection, and a longer one; the throughput is the
difference in steps over the difference in time, so start-up does not count. Sampling runs
`sample` (the one `bench sample` and `bench fidelity` use) with random weights: the speed of
a UNet does not depend on its weights. Runs on CPU too, with `--preset cpu`, for a check.
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


def main() -> None:
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
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    base = apply_overrides(DDPMConfig, [f"preset={args.preset}"])
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
        out = sample(
            model, base, args.sample_n, res, sampler, steps, batch_size=args.sample_batch
        )
        sync(device)
        dt = time.perf_counter() - t
        peak = peak_gib(device)
        assert out.shape == (args.sample_n, 1, res, res)
        print(
            f"sampling {sampler.upper()} {steps} steps: {args.sample_n} images in {dt:.1f} s = "
            f"{args.sample_n / dt:.2f} images/s ({args.sample_n * steps / dt:.0f} UNet "
            f"evaluations/s, batch {args.sample_batch}); peak GPU memory {peak:.2f} GiB"
        )


if __name__ == "__main__":
    main()
