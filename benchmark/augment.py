"""Batch augmentations for 2D CT slices, run on the training device.

No left-right flips: they would swap left and right organs (kidneys, adrenals).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator,
    max_rotate_deg: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    max_shift: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same random rotation, scale and shift for each image (N, C, H, W) and its labels (N, H, W).

    Shift is a fraction of the image size. Labels are resampled by nearest neighbour.
    """
    n = images.shape[0]
    rnd = torch.rand(n, 4, generator=generator).to(images.device)
    angle = (rnd[:, 0] * 2 - 1) * math.radians(max_rotate_deg)
    s = scale[0] + rnd[:, 1] * (scale[1] - scale[0])
    shift = (rnd[:, 2:] * 2 - 1) * max_shift * 2  # grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if labels is None:
        return out, None
    lab = F.grid_sample(
        labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out, lab[:, 0].long()


def random_intensity(
    images: torch.Tensor,
    generator: torch.Generator,
    contrast: float = 0.1,
    brightness: float = 0.05,
) -> torch.Tensor:
    """Random per-image contrast (×(1 ± contrast)) and brightness (± brightness) in [0, 1] units."""
    n = images.shape[0]
    rnd = torch.rand(n, 2, generator=generator).to(images.device)
    c = 1 + (rnd[:, 0] * 2 - 1) * contrast
    b = (rnd[:, 1] * 2 - 1) * brightness
    return images * c.view(n, 1, 1, 1) + b.view(n, 1, 1, 1)
