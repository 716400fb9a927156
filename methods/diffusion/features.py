"""Feature taps on the DDPM's decoder, as in label-efficient segmentation with diffusion
models (Baranchuk et al., ICLR 2022, yandex-research/ddpm-segmentation).

Each image is noised to timestep t with one fixed, seeded noise tensor per timestep (shared
by all images, so features are deterministic), passed through the UNet, and the outputs of
chosen decoder blocks are taken with forward hooks.

Block choice. Baranchuk et al. tap guided-diffusion `output_blocks` 5, 6, 7, 8 and 12 of a
256-px model: the mid-to-late decoder at 32² to 128², i.e. at 1/8 to 1/2 of the input
size, at timesteps {50, 150, 250}. MONAI's `up_blocks[i]` ends with an upsampler except the
last, so with L levels block i outputs at 1/2^(L-2-i) of the input (the last at full size).
For the 3-level `cpu` preset, blocks (0, 1) give 1/2 and 1/1; for the 6-level `paper`
preset, blocks (2, 3, 4) give 1/8, 1/4 and 1/2, the same band as the paper.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from methods.diffusion.model import to_model_input

DEFAULT_TIMESTEPS = (50, 150, 250)


class DecoderTaps:
    """Deterministic decoder features of a frozen DDPM UNet.

    `__call__` returns one tensor per (timestep, block), in that nesting order, each of shape
    (N, C_block, h_block, w_block) at the block's own resolution (float32). Upsample them to
    the slice size (bilinear) and concatenate for pixel features; `channels` gives C_block.
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
        if max(timesteps) >= scheduler.num_train_timesteps:
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
        self._out: dict[int, torch.Tensor] = {}
        for b in self.blocks:
            model.up_blocks[b].register_forward_hook(self._hook(b))
        self.channels = self._probe_channels()
        probe = [
            torch.zeros(1, c, *shape) for c, shape in zip(self.channels, self._shapes, strict=True)
        ]
        self.group_channels = [f.shape[1] for f in by_resolution(probe)]
        """Channels of `by_resolution(features)`: one entry per distinct block resolution."""

    def _hook(self, block: int):
        def store(_module, _inputs, output):
            self._out[block] = output

        return store

    def _probe_channels(self) -> list[int]:
        device = next(self.model.parameters()).device
        feats = self(torch.zeros(1, 1, self.resolution, self.resolution, device=device))
        self._shapes = [tuple(f.shape[-2:]) for f in feats]
        return [f.shape[1] for f in feats]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (N, 1, S, S) in [0, 1] on the model's device."""
        x0 = to_model_input(images, self.resolution)
        feats = []
        for t in self.timesteps:
            noise = self.noise[t].to(x0.device).expand_as(x0)
            ts = torch.full((len(x0),), t, device=x0.device, dtype=torch.long)
            xt = self.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=ts)
            self._out.clear()
            self.model(xt, ts)
            feats.extend(self._out[b].float() for b in self.blocks)
        return feats


def by_resolution(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate, along channels, the features that share a spatial size (first-seen order).

    A linear head over the upsampled concatenation equals one over these groups (a 1×1
    convolution splits over channel groups), with one upsampling per resolution instead of
    one per (timestep, block).
    """
    groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for f in feats:
        groups.setdefault(tuple(f.shape[-2:]), []).append(f)
    return [torch.cat(g, 1) if len(g) > 1 else g[0] for g in groups.values()]
