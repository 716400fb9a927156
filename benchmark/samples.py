"""Writing a generative model's samples: the raw array, a PNG grid and what made them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


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
