"""`simclr`: SimCLR (Chen et al. 2020) pretraining of `unet-scratch`'s encoder, then fine-tuning.

Pretraining: two random views of each unlabeled slice (`benchmark.augment.ct_view`: random
resized crop with a small rotation, gamma / contrast / brightness jitter, Gaussian blur; no
colour jitter, grayscale or flips), the U-Net's encoder (`smp.Unet(...).encoder`, ResNet-18
by default), global average pooling of its deepest features, a 2-layer MLP projection head,
and the NT-Xent loss (normalised temperature-scaled cross-entropy over the 2B views of a
batch, each view's positive its sibling, the 2B - 2 others negatives). AdamW with warm-up
and cosine decay. The projection head is dropped; the encoder is cached (see
`baselines.pretrained_unet`).

Fine-tuning is `unet-scratch`'s recipe exactly (same U-Net, seeded initialisation,
iterations, Dice + CE loss, augmentation); only the encoder's initial weights differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.pretrained_unet import FINE_TUNING, PretrainedEncoderUNet, SSLConfig, pretrain_model
from baselines.unet_scratch import build_unet
from benchmark.augment import ct_view
from benchmark.config import fraction, non_negative, positive
from benchmark.method import SliceSet
from benchmark.progress import Progress


@dataclass(frozen=True)
class SimCLRConfig(SSLConfig):
    """`unet-scratch`'s config plus SimCLR pretraining; defaults are the `cpu` preset.

    `--set preset=gpu` pretrains with larger batches on full-size views; the length is the
    protocol's `pretrain_samples`, as for every pretraining method.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "gpu": {
            "pretrain_batch_size": 256,
            "view_size": 0,
            "pretrain_lr": 2e-3,
        },
    }

    pretrain_batch_size: int = positive(32)
    """Slices per step (2 views each)."""
    pretrain_weight_decay: float = non_negative(1e-4)
    """AdamW weight decay of pretraining."""
    temperature: float = positive(0.2)
    """NT-Xent temperature."""
    projection_dim: int = positive(128)
    """Output size of the projection head."""
    projection_hidden: int = positive(512)
    """Hidden size of the projection head."""
    view_size: int = non_negative(64)
    """Side of each view in pixels (0 = the slice size); smaller is faster on a CPU."""
    crop_scale_min: float = fraction(0.25)
    """Smallest crop, as a fraction of the slice area."""


class SimCLRModel(nn.Module):
    """Encoder → global average pool → MLP projection → L2-normalised embedding."""

    def __init__(self, encoder: nn.Module, feature_dim: int, hidden: int, out: int):
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)[-1].mean(dim=(2, 3))
        return F.normalize(self.projector(h), dim=1)


def build_simclr(cfg: SimCLRConfig) -> SimCLRModel:
    encoder = build_unet(cfg, num_classes=2).encoder
    return SimCLRModel(encoder, encoder.out_channels[-1], cfg.projection_hidden, cfg.projection_dim)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss of L2-normalised embeddings (B, D) of two views of the same B images."""
    z = torch.cat([z1, z2])
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own negative
    b = len(z1)
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, target)


def two_views(
    images: torch.Tensor, gen: torch.Generator, cfg: SimCLRConfig, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent random views (B, 1, size, size) of each image."""
    scale = (cfg.crop_scale_min, 1.0)
    first = ct_view(images, gen, size, crop_scale=scale)
    return first, ct_view(images, gen, size, crop_scale=scale)


def train_simclr(
    cfg: SimCLRConfig,
    unlabeled: SliceSet,
    device: torch.device,
    progress: Progress,
    model: SimCLRModel | None = None,
) -> tuple[SimCLRModel, list[float]]:
    """Pretrain (a new model unless one is given); returns it and the loss per step."""
    size = cfg.view_size or unlabeled.slice_size

    def step_loss(net: SimCLRModel, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        v1, v2 = two_views(unlabeled.images(idx), gen, cfg, size)
        return nt_xent(net(v1.to(device)), net(v2.to(device)), cfg.temperature)

    return pretrain_model(
        model,
        lambda: build_simclr(cfg),
        cfg,
        unlabeled,
        device,
        step_loss,
        "SimCLR pretraining",
        progress,
    )


class SimCLR(PretrainedEncoderUNet):
    """SimCLR-pretrained encoder in `unet-scratch`'s U-Net, fine-tuned with its recipe."""

    name = family = "simclr"
    summary = (
        "U-Net encoder pretrained with SimCLR (NT-Xent, CT augmentations) on the unlabeled "
        f"slices; {FINE_TUNING}"
    )
    Config = SimCLRConfig
    train_model = staticmethod(train_simclr)
