"""Drawing samples from a generative method's pretrained model and writing them: the raw
array, a PNG grid and what made them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.progress import Progress
from benchmark.registry import get_generative
from benchmark.runner import pretrained_method


@dataclass
class SampleRequest:
    """One `bench sample` as the user asked for it."""

    method: str
    """A `GenerativeMethod`."""
    out_dir: Path
    sampler: str
    """One of the method's `samplers`."""
    n: int = 64
    steps: int | None = None
    """None = the method's `default_steps` for the sampler."""
    protocol: str = "phantom"
    seed: int = 0
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)
    data: Path | None = None


def draw_samples(req: SampleRequest, progress: Progress) -> float:
    """Draw `req.n` samples from the method's pretrained model (pretrained first when the cache
    has none) and write them to `req.out_dir` (see `write_samples`); returns the seconds the
    sampling took."""
    get_generative(req.method)  # a method that cannot sample is refused first

    def check_steps(method_cls: Any, config: Any) -> None:  # before any pretraining
        method_cls.check_steps(config, req.sampler, req.steps)

    model, ctx = pretrained_method(
        req.protocol, req.method, req.overrides, req.device, req.data, 0, progress, check_steps
    )
    t = time.perf_counter()
    images = model.sample(req.n, req.sampler, req.steps, req.seed, ctx)
    seconds = time.perf_counter() - t
    meta = {
        "method": req.method,
        "protocol": req.protocol,
        "n": req.n,
        "sampler": req.sampler,
        "steps": req.steps,
        "seed": req.seed,
        "pretrain_cache": ctx.info.get("pretrain_cache"),
        "seconds": seconds,
    }
    write_samples(images, req.out_dir, meta)
    return seconds


def write_samples(images: torch.Tensor, out_dir: Path, meta: dict[str, Any]) -> None:
    """Write `images` (N, 1, H, W) in [0, 1] (the protocol's HU window) to `out_dir`:
    `samples.npy` (float32), `samples_grid.png` (a near-square grid) and `samples.json`
    (`meta` plus the array's shape and range)."""
    from torchvision.utils import save_image

    n = len(images)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "samples.npy", images.numpy().astype(np.float32))
    save_image(images, out_dir / "samples_grid.png", nrow=int(np.ceil(np.sqrt(n))), padding=1)
    meta = {**meta, "shape": list(images.shape), "range": "[0, 1] = protocol HU window"}
    (out_dir / "samples.json").write_text(json.dumps(meta, indent=1))
