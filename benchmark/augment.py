"""Batch augmentations for 2D CT slices, run on the training device.

No left-right flips: they would swap left and right organs (kidneys, adrenals).
Each draws its random numbers on the CPU from a `torch.Generator` (the same numbers on every
device), or takes them already drawn (`uniforms`, on the device): a training loop can draw a
whole run's numbers up front and copy them once, instead of once per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AFFINE_DRAWS = 4
"""Uniform numbers `random_affine` takes per image."""
INTENSITY_DRAWS = 2
"""Uniform numbers `random_intensity` takes per image."""


def _uniforms(
    n: int, k: int, generator: torch.Generator | None, given: torch.Tensor | None, device
) -> torch.Tensor:
    """(n, k) uniform numbers in [0, 1) on `device`: `given`, or drawn from `generator`."""
    if given is not None:
        if tuple(given.shape) != (n, k):
            raise ValueError(f"expected ({n}, {k}) uniform draws, got {tuple(given.shape)}")
        return given
    if generator is None:
        raise ValueError("pass a generator or the uniform draws")
    return torch.rand(n, k, generator=generator).to(device)


def random_affine(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator | None,
    max_rotate_deg: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    max_shift: float = 0.05,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same random rotation, scale and shift for each image (N, C, H, W) and its labels (N, H, W).

    Shift is a fraction of the image size. Labels are resampled by nearest neighbour. What
    comes in from outside the field of view is 0 in both: the window's low end (air) in the
    image, background in the labels, so no organ intensity is smeared into background. The
    random numbers: `uniforms` (N, `AFFINE_DRAWS`) on the images' device, or drawn from
    `generator` (the same numbers: `torch.rand(N, AFFINE_DRAWS, generator=generator)`).
    """
    n = images.shape[0]
    rnd = _uniforms(n, AFFINE_DRAWS, generator, uniforms, images.device)
    angle = (rnd[:, 0] * 2 - 1) * math.radians(max_rotate_deg)
    s = scale[0] + rnd[:, 1] * (scale[1] - scale[0])
    shift = (rnd[:, 2:] * 2 - 1) * max_shift * 2  # grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if labels is None:
        return out, None
    lab = F.grid_sample(
        labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out, lab[:, 0].long()


def random_intensity(
    images: torch.Tensor,
    generator: torch.Generator | None,
    contrast: float = 0.1,
    brightness: float = 0.05,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random per-image contrast (×(1 ± contrast)) and brightness (± brightness) in [0, 1] units.

    The random numbers: `uniforms` (N, `INTENSITY_DRAWS`), or drawn from `generator`.
    """
    n = images.shape[0]
    rnd = _uniforms(n, INTENSITY_DRAWS, generator, uniforms, images.device)
    c = 1 + (rnd[:, 0] * 2 - 1) * contrast
    b = (rnd[:, 1] * 2 - 1) * brightness
    return images * c.view(n, 1, 1, 1) + b.view(n, 1, 1, 1)


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator,
    size: int,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_rotate_deg: float = 10.0,
) -> torch.Tensor:
    """A random crop of each image (N, C, H, W), rotated by a small angle, resized to size².

    The crop covers a `scale` fraction of the image area with aspect ratio in `ratio`
    (torchvision's RandomResizedCrop, sampled per image, without its retry loop: sides are
    clipped to the image), and lies inside the image. Bilinear; outside is 0 (below the window).
    """
    n = images.shape[0]
    rnd = torch.rand(n, 5, generator=generator).to(images.device)
    area = scale[0] + rnd[:, 0] * (scale[1] - scale[0])
    log_r = math.log(ratio[0]) + rnd[:, 1] * (math.log(ratio[1]) - math.log(ratio[0]))
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (rnd[:, 2] * 2 - 1) * (1 - w)  # grid coordinates span [-1, 1]
    cy = (rnd[:, 3] * 2 - 1) * (1 - h)
    angle = (rnd[:, 4] * 2 - 1) * math.radians(max_rotate_deg)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([w * cos, -h * sin, cx], 1), torch.stack([w * sin, h * cos, cy], 1)], 1
    )
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_gamma(
    images: torch.Tensor, generator: torch.Generator, gamma: tuple[float, float] = (0.7, 1.5)
) -> torch.Tensor:
    """Per-image gamma (log-uniform in `gamma`) of images in [0, 1]: a contrast-curve change."""
    n = images.shape[0]
    u = torch.rand(n, generator=generator).to(images.device)
    g = torch.exp(math.log(gamma[0]) + u * (math.log(gamma[1]) - math.log(gamma[0])))
    return images.clamp(0, 1) ** g.view(n, 1, 1, 1)


def random_gaussian_blur(
    images: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 1.5),
) -> torch.Tensor:
    """Blur each image (N, 1, H, W) with probability p, sigma uniform in `sigma` (pixels)."""
    n = images.shape[0]
    rnd = torch.rand(n, 2, generator=generator).to(images.device)
    s = sigma[0] + rnd[:, 0] * (sigma[1] - sigma[0])
    radius = max(1, math.ceil(3 * sigma[1]))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-(x[None] ** 2) / (2 * s[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (n, taps)
    c = images.shape[1]
    flat = images.reshape(1, n * c, *images.shape[2:])
    kern = k.repeat_interleave(c, 0)
    pad = (radius, radius, radius, radius)
    out = F.pad(flat, pad, mode="replicate")
    out = F.conv2d(out, kern[:, None, None, :], groups=n * c)  # along width
    out = F.conv2d(out, kern[:, None, :, None], groups=n * c)  # along height
    out = out.reshape(images.shape)
    apply = (rnd[:, 1] < p).view(n, 1, 1, 1)
    return torch.where(apply, out, images)


def ct_view(
    images: torch.Tensor,
    generator: torch.Generator,
    size: int,
    crop_scale: tuple[float, float] = (0.25, 1.0),
    max_rotate_deg: float = 10.0,
    contrast: float = 0.3,
    brightness: float = 0.1,
    gamma: tuple[float, float] = (0.7, 1.5),
    blur_p: float = 0.5,
) -> torch.Tensor:
    """One random view of gray CT slices for contrastive learning (SimCLR's recipe for CT).

    Random resized crop with a small rotation, gamma, contrast and brightness jitter, and
    Gaussian blur; no colour jitter, grayscale or flips (flips would swap left and right organs).
    """
    x = random_resized_crop(images, generator, size, crop_scale, max_rotate_deg=max_rotate_deg)
    x = random_gamma(x, generator, gamma)
    x = random_intensity(x, generator, contrast=contrast, brightness=brightness)
    return random_gaussian_blur(x, generator, p=blur_p)
