"""The denoising model and noise schedule: MONAI's `DiffusionModelUNet` and DDPM/DDIM schedulers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from benchmark.config import identity_dict, non_negative, positive, unit_interval


@dataclass(frozen=True)
class DDPMConfig:
    """DDPM pretraining (ε-prediction). Defaults are the `cpu` preset, sized for the phantom.

    `--set preset=paper` selects a 256 × 256 GPU configuration modelled on guided-diffusion's
    unconditional 256-px model (channel multipliers 1, 1, 2, 2, 4, 4; attention at 32², 16²
    and 8²; two residual blocks per level) at half its width. Presets set the model and
    batch, never the pretraining length: that is the protocol's `pretrain_samples`.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "paper": {
            "resolution": 256,
            "channels": (128, 128, 256, 256, 512, 512),
            "attention_levels": (False, False, False, True, True, True),
            "num_res_blocks": 2,
            "num_head_channels": 64,
            "pretrain_batch_size": 16,
            "pretrain_lr": 1e-4,
            "ema_decay": 0.9999,
            "checkpoint_every": 5_000,
            "tap_blocks": (1, 2, 3),
        },
    }

    preset: str = "cpu"
    """Named starting point for the fields below: cpu or paper."""
    resolution: int = non_negative(64)
    """Side (pixels) of the diffusion model's input; slices are resized to it. 0 = the
    protocol's slice size (128 on the phantom: 4.7× the pretraining step time of 64 on 2 CPU
    cores, `perf/bench_diffusion.py`)."""
    channels: tuple[int, ...] = positive((32, 64, 64))
    """Channels per UNet level (each divisible by norm_num_groups)."""
    attention_levels: tuple[bool, ...] = (False, False, True)
    """Self-attention per level."""
    num_res_blocks: int = positive(1)
    """Residual blocks per level."""
    num_head_channels: int = positive(32)
    """Channels per attention head."""
    norm_num_groups: int = positive(32)
    """GroupNorm groups."""
    train_timesteps: int = positive(1000)
    """T, the number of diffusion steps."""
    beta_schedule: str = "linear_beta"
    """MONAI schedule name (linear_beta, scaled_linear_beta, sigmoid_beta, cosine)."""
    pretrain_lr: float = non_negative(5e-4)
    """AdamW learning rate of pretraining (constant after a short warm-up)."""
    pretrain_batch_size: int = positive(16)
    """Slices per pretraining step."""
    pretrain_iterations: int | None = positive(None)
    """Optimizer steps of pretraining. None: the protocol's pretraining budget ÷
    pretrain_batch_size (rounded up), as for every pretraining method; another value makes
    the run off-protocol."""
    ema_decay: float = unit_interval(0.99)
    """Exponential moving average of the weights; the EMA model is the one transferred. Warmed
    up: min(ema_decay, (1 + step) / (10 + step)) at each step (`pretrain.ema_decay_at`)."""
    checkpoint_every: int = positive(100, execution=True)
    """Steps between resumable checkpoints (execution only: a resumed pretraining continues
    exactly, so this is not part of the pretrained model's key)."""
    mixed_precision: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    pretrain_seed: int = non_negative(0)
    """Seed of pretraining; one pretrained model serves every fine-tuning seed and budget."""
    tap_blocks: tuple[int, ...] = non_negative((0, 1))
    """Indices into MONAI's `up_blocks` whose outputs are features (see features.py)."""

    def pretrain_fields(self) -> dict[str, Any]:
        """The fields that define the pretrained model (and so its cache key)."""
        names = {f.name for f in dataclasses.fields(DDPMConfig)} - {"preset", "tap_blocks"}
        return {k: v for k, v in identity_dict(self).items() if k in names}


def build_unet(cfg: DDPMConfig, out_channels: int = 1) -> DiffusionModelUNet:
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=out_channels,
        channels=cfg.channels,
        attention_levels=cfg.attention_levels,
        num_res_blocks=cfg.num_res_blocks,
        num_head_channels=cfg.num_head_channels,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_scheduler(cfg: DDPMConfig, sampler: str = "ddpm") -> DDPMScheduler | DDIMScheduler:
    if sampler == "ddim":
        return DDIMScheduler(num_train_timesteps=cfg.train_timesteps, schedule=cfg.beta_schedule)
    return DDPMScheduler(num_train_timesteps=cfg.train_timesteps, schedule=cfg.beta_schedule)


def model_resolution(cfg: DDPMConfig, slice_size: int) -> int:
    return cfg.resolution or slice_size


def to_model_input(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, 1, S, S) slices in [0, 1] → (N, 1, R, R) in [-1, 1], as DDPMs expect."""
    if images.shape[-1] != resolution:
        images = F.interpolate(
            images,
            size=(resolution, resolution),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    return images * 2 - 1


def from_model_output(samples: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clipped."""
    return ((samples + 1) / 2).clamp(0, 1)
