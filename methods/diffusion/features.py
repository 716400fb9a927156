"""Feature taps on the DDPM's decoder, as in label-efficient segmentation with diffusion
models (Baranchuk et al., ICLR 2022, yandex-research/ddpm-segmentation), and their cache.

Each image is noised to timestep t with one fixed, seeded noise tensor per timestep (shared
by all images, so features are deterministic), passed through the UNet, and the outputs of
chosen decoder blocks are taken with forward hooks.

Block choice. Baranchuk et al. tap guided-diffusion `output_blocks` 5, 6, 7, 8 and 12 of a
256-px model (three output blocks per level, the third of each upsamples): 5 ends the 16²
level and outputs 32², 6 and 7 are at 32², 8 upsamples to 64², 12 is the first at 128². So
the mid-to-late decoder at 1/8 to 1/2 of the input size, at timesteps {50, 150, 250}.
MONAI's `up_blocks[i]` is one whole level (its residual blocks, then an upsampler except
for the last level), and a hook sees the level's output: with L levels, `up_blocks[i]`
outputs at 1/2^(L-2-i) of the input for i < L-1, and the last at full size.

- `cpu` preset (3 levels, channels 32-64-64): `up_blocks[0]` → 1/2 (64 channels),
  `up_blocks[1]` → 1/1 (64), `up_blocks[2]` → 1/1 (32). There is no 1/8 or 1/4 decoder
  output; the default (0, 1) is the mid-to-late band (1/2 and 1/1 after the last
  upsampling, before the full-size level), 128 channels per timestep. At 64 × 64 input
  that is 32² and 64²; at 128 × 128 (`resolution=0` on the phantom) 64² and 128².
- `paper` preset (6 levels, 256 px): `up_blocks[1]` → 1/8 (32²), `[2]` → 1/4 (64²),
  `[3]` → 1/2 (128²): the default (1, 2, 3) is DDPM-Seg's band (the ends of its levels at
  32², 64² and 128²: blocks 5, 8 and 11, next to its 12).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from methods.diffusion.model import to_model_input

DEFAULT_TIMESTEPS = (50, 150, 250)


class DecoderTaps:
    """Deterministic decoder features of a frozen DDPM UNet.

    `__call__` returns one tensor per (timestep, block), in that nesting order, each of shape
    (N, C_block, h_block, w_block) at the block's own resolution (float32 holding float16
    values: see `storable`). Upsample them to the slice size (bilinear) and concatenate for
    pixel features; `channels` gives C_block. Hooks are attached only during a call, so
    several tap sets can share one backbone.
    """

    def __init__(
        self,
        model: DiffusionModelUNet,
        scheduler: DDPMScheduler,
        resolution: int,
        blocks: tuple[int, ...],
        timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS,
        noise_seed: int = 0,
    ):
        if not blocks or max(blocks) >= len(model.up_blocks) or min(blocks) < 0:
            raise ValueError(f"tap blocks {blocks} outside 0..{len(model.up_blocks) - 1}")
        if not timesteps or max(timesteps) >= scheduler.num_train_timesteps:
            raise ValueError(
                f"tap timesteps {timesteps} outside 0..{scheduler.num_train_timesteps - 1}"
            )
        self.model = model.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.resolution = resolution
        self.blocks = tuple(blocks)
        self.timesteps = tuple(timesteps)
        gen = torch.Generator().manual_seed(noise_seed)
        self.noise = {
            t: torch.randn(1, 1, resolution, resolution, generator=gen) for t in timesteps
        }
        device = next(self.model.parameters()).device
        probe = self(torch.zeros(1, 1, resolution, resolution, device=device))
        self.channels = [f.shape[1] for f in probe]
        self.group_channels = [f.shape[1] for f in by_resolution(probe)]
        """Channels of `by_resolution(features)`: one entry per distinct block resolution."""

    @contextmanager
    def _hooks(self, out: dict[int, torch.Tensor]):
        def store(block: int):
            def hook(_module, _inputs, output):
                out[block] = output

            return hook

        handles = [self.model.up_blocks[b].register_forward_hook(store(b)) for b in self.blocks]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (N, 1, S, S) in [0, 1] on the model's device."""
        x0 = to_model_input(images, self.resolution)
        feats: list[torch.Tensor] = []
        out: dict[int, torch.Tensor] = {}
        with self._hooks(out):
            for t in self.timesteps:
                noise = self.noise[t].to(x0.device).expand_as(x0)
                ts = torch.full((len(x0),), t, device=x0.device, dtype=torch.long)
                xt = self.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=ts)
                out.clear()
                self.model(xt, ts)
                feats.extend(storable(out[b], b, t) for b in self.blocks)
        return feats


def storable(features: torch.Tensor, block: int, timestep: int) -> torch.Tensor:
    """`features` rounded to float16 and back to float32, as a `FeatureBank` on disk stores
    them. Every consumer (the bank in memory or on disk, validation, prediction) sees these
    same values, so a head is selected and scored on the inputs it was trained on, and a
    budget whose features spill to disk is not computed at another precision than one whose
    features stay in memory. A value beyond float16's range fails the run, never an inf."""
    rounded = features.half()
    if not torch.isfinite(rounded).all():
        worst = float(features.float().abs().max())
        raise FloatingPointError(
            f"decoder block {block} at timestep {timestep} gives features up to {worst:.3g} "
            "(or non-finite), beyond float16's range (65504) in which features are kept"
        )
    if features.dtype == torch.float32:  # in place: no second float32 copy of the block
        return features.copy_(rounded)
    return rounded.float()


def by_resolution(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate, along channels, the features that share a spatial size (first-seen order).

    A head whose first layer is linear (the 1×1 linear head, the first layer of each MLP)
    over the upsampled concatenation equals one over these groups (a linear map splits over
    channel groups and commutes with bilinear upsampling), with one upsampling per
    resolution instead of one per (timestep, block).
    """
    groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for f in feats:
        groups.setdefault(tuple(f.shape[-2:]), []).append(f)
    return [torch.cat(g, 1) if len(g) > 1 else g[0] for g in groups.values()]


class FeatureBank:
    """Tapped features of a slice set, computed once: float32 in memory up to `memory_mb` (on
    the run's device: RAM on the CPU, the GPU's memory on a GPU, so a training step or a
    validation copies nothing between host and device), else a float16 memory map on disk.

    Features stay at each block's own resolution, grouped by resolution (`by_resolution`);
    heads upsample per batch. They are stored channels-last (N, h, w, C) and handed out as
    (N, C, h, w) views in that memory format, so a head that samples pixels reads each
    pixel's channels as one contiguous row. Training a head on the bank instead of
    recomputing the UNet every step is what makes head training cheap
    (`perf/bench_diffusion.py`).
    """

    def __init__(
        self,
        taps: DecoderTaps,
        slices,
        batch_size: int,
        memory_mb: int,
        device: torch.device,
        progress=None,
    ):
        probe = by_resolution(taps(slices.images(np.arange(1)).to(device)))
        shapes = [(*f.shape[2:], f.shape[1]) for f in probe]  # (h, w, C): channels-last
        total_mb = len(slices) * sum(int(np.prod(s)) for s in shapes) * 4 / 2**20
        self._tmp = None
        if total_mb > memory_mb:  # float16 on disk: half the bytes, converted per batch
            total_mb /= 2
            self._tmp = tempfile.TemporaryDirectory(prefix="labelbench-features-")
            self.arrays = [
                np.lib.format.open_memmap(
                    f"{self._tmp.name}/f{i}.npy", "w+", np.float16, (len(slices), *s)
                )
                for i, s in enumerate(shapes)
            ]
        else:  # float32 in memory on the device: no copy or conversion per training step
            self.arrays = [
                torch.empty((len(slices), *s), dtype=torch.float32, device=device) for s in shapes
            ]
        self.on_disk = self._tmp is not None
        self.megabytes = total_mb
        starts = range(0, len(slices), batch_size)
        for start in progress.track(starts, "features", len(starts)) if progress else starts:
            idx = np.arange(start, min(start + batch_size, len(slices)))
            feats = by_resolution(taps(slices.images(idx).to(device)))
            for arr, f in zip(self.arrays, feats, strict=True):
                rows = f.permute(0, 2, 3, 1)
                if isinstance(arr, torch.Tensor):
                    arr[idx[0] : idx[-1] + 1] = rows
                else:
                    arr[idx] = rows.cpu().numpy().astype(arr.dtype)

    def __len__(self) -> int:
        return len(self.arrays[0])

    def get(self, idx: np.ndarray | torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """Features of slices `idx` (sorted), one float32 tensor (N, C, h, w) per resolution
        group, in channels-last memory. A tensor `idx` must be sorted already; on the bank's
        device it needs no host-to-device copy."""
        if isinstance(idx, torch.Tensor):
            order, rows_at = idx.cpu().numpy() if self.on_disk else None, idx
        else:
            order = np.sort(idx)
            rows_at = torch.from_numpy(order)
        out = []
        for a in self.arrays:
            if isinstance(a, torch.Tensor):
                rows = a.index_select(0, rows_at.to(a.device)).to(device)
            else:
                rows = torch.from_numpy(np.asarray(a[order])).to(device).float()
            out.append(rows.permute(0, 3, 1, 2))
        return out
