"""`diffusion-decoder`: the DDPM's encoder frozen, its decoder and a new head fine-tuned."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from benchmark.config import non_negative
from benchmark.method import RunContext, SliceSet
from benchmark.supervised import SupervisedConfig, SupervisedMethod
from methods.diffusion.backbone import DiffusionTransfer
from methods.diffusion.model import DDPMConfig, build_scheduler, model_resolution, to_model_input


@dataclass(frozen=True)
class DiffusionDecoderConfig(SupervisedConfig, DDPMConfig):
    """DDPM pretraining (shared with diffusion-linear) plus decoder fine-tuning, which uses the
    same supervised recipe as the U-Net baselines.

    The backbone fields (`resolution`, `channels`, pretraining) are diffusion-linear's, with
    the same defaults, so both methods always transfer one pretrained model: a backbone
    choice made on diffusion-linear's validation ablation (`perf/ablation_diffusion.py`)
    applies here too. Tuning tried for this method itself: none beyond the shared recipe
    (timestep 50, as the lowest of DDPM-Seg's timesteps)."""

    timestep: int = non_negative(50)
    """Diffusion timestep at which the decoder is fine-tuned and applied."""
    noise_seed: int = non_negative(0)
    """Seed of the fixed noise added at `timestep`."""


class NoisedSegmenter(nn.Module):
    """(N, 1, S, S) in [0, 1] → (N, K, S, S) logits through the DDPM UNet at a fixed timestep.

    `conv_in`, `time_embed`, `down_blocks` and `middle_block` are frozen; `up_blocks` and a new
    output head (GroupNorm, SiLU, 3×3 conv to K classes) train.
    """

    def __init__(
        self,
        unet: DiffusionModelUNet,
        cfg: DiffusionDecoderConfig,
        num_classes: int,
        slice_size: int,
    ):
        super().__init__()
        self.unet = unet
        self.resolution = model_resolution(cfg, slice_size)
        self.slice_size = slice_size
        self.timestep = cfg.timestep
        unet.requires_grad_(True)  # the backbone comes frozen: train what is not the encoder
        for part in (unet.conv_in, unet.time_embed, unet.down_blocks, unet.middle_block):
            part.requires_grad_(False)
        width = cfg.channels[0]
        unet.out = nn.Sequential(
            nn.GroupNorm(cfg.norm_num_groups, width),
            nn.SiLU(),
            nn.Conv2d(width, num_classes, 3, padding=1),
        )
        scheduler = build_scheduler(cfg)
        self.register_buffer("alpha_bar", scheduler.alphas_cumprod[cfg.timestep].float())
        gen = torch.Generator().manual_seed(cfg.noise_seed)
        self.register_buffer(
            "noise", torch.randn(1, 1, self.resolution, self.resolution, generator=gen)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x0 = to_model_input(images, self.resolution)
        a = self.alpha_bar
        xt = a.sqrt() * x0 + (1 - a).sqrt() * self.noise
        t = torch.full((len(x0),), self.timestep, device=x0.device, dtype=torch.long)
        logits = self.unet(xt, t)
        if logits.shape[-1] != self.slice_size:
            logits = F.interpolate(
                logits,
                size=(self.slice_size, self.slice_size),
                mode="bilinear",
                align_corners=False,
            )
        return logits


class DiffusionDecoder(DiffusionTransfer, SupervisedMethod):
    """Pretrained DDPM encoder frozen; decoder + head fine-tuned with the shared recipe."""

    name = "diffusion-decoder"
    summary = "DDPM pretrained on unlabeled slices; encoder frozen, decoder + head fine-tuned"
    Config = DiffusionDecoderConfig

    def build_model(self, labeled: SliceSet, ctx: RunContext) -> NoisedSegmenter:
        return NoisedSegmenter(self.backbone, self.config, ctx.num_classes, labeled.slice_size)
