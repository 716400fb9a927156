"""`mae`: masked-image-modelling pretraining of `unet-scratch`'s encoder, then fine-tuning.

A masked CNN in the style of SparK (Tian et al., ICLR 2023), simplified: each unlabeled
slice is cut into `patch_size` × `patch_size` patches and `mask_ratio` (75 %) of them, drawn
per image, are zeroed in the encoder's input. The U-Net's encoder (`smp.Unet(...).encoder`,
ResNet-18 by default, ordinary dense convolutions, not SparK's sparse ones) encodes the
masked slice; at each of its scales the masked positions are then filled with a learned
per-scale mask token (SparK's "densify" step, weighted by the share of the position that is
masked), and a light U-Net decoder (smp's `UnetDecoder` with `decoder_channels`, new
weights, dropped after pretraining) reconstructs the pixels. The loss is the mean squared
error on the masked patches only, against per-patch normalised pixels (MAE's
`norm_pix_loss`) by default. AdamW with warm-up and cosine decay. The encoder is cached (see
`baselines.pretrained_unet`).

Fine-tuning is `unet-scratch`'s recipe exactly (same U-Net, seeded initialisation,
iterations, Dice + CE loss, augmentation); only the encoder's initial weights differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from baselines.pretrained_unet import FINE_TUNING, PretrainedEncoderUNet, SSLConfig, pretrain_model
from benchmark.config import non_negative, open_unit_interval, positive
from benchmark.errors import ConfigError
from benchmark.method import SliceSet
from benchmark.progress import Progress


@dataclass(frozen=True)
class MAEConfig(SSLConfig):
    """`unet-scratch`'s config plus masked-image-modelling pretraining (`cpu` preset defaults).

    `--set preset=gpu` pretrains with larger batches; the length is the protocol's
    `pretrain_samples`, as for every pretraining method.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "gpu": {"pretrain_batch_size": 128, "pretrain_lr": 1.5e-3},
    }

    pretrain_batch_size: int = positive(16)
    """Slices per step."""
    pretrain_weight_decay: float = non_negative(0.05)
    """AdamW weight decay of pretraining (MAE's)."""
    mask_ratio: float = open_unit_interval(0.75)
    """Fraction of patches masked in each slice."""
    patch_size: int = positive(16)
    """Side of a masked patch in pixels at the slice size (must divide it)."""
    norm_pix_loss: bool = True
    """Reconstruct per-patch normalised pixels (zero mean, unit variance), as MAE."""
    decoder_channels: tuple[int, ...] = positive((128, 64, 32, 16, 16))
    """Channels of the light reconstruction decoder, deepest first (one per encoder stage)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), not {self.mask_ratio}")


def random_patch_mask(n: int, grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, grid, grid) float mask, 1 = visible; exactly round(ratio · grid²) patches masked."""
    count = grid * grid
    n_masked = min(count - 1, max(1, round(ratio * count)))
    order = torch.rand(n, count, generator=generator).argsort(1)
    keep = torch.ones(n, count)
    keep.scatter_(1, order[:, :n_masked], 0.0)
    return keep.view(n, 1, grid, grid)


class MaskedAutoencoder(nn.Module):
    """The U-Net encoder, per-scale mask tokens and a light U-Net decoder to one channel."""

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        net = smp.Unet(
            encoder_name=cfg.encoder,
            encoder_weights=None,
            in_channels=1,
            classes=1,
            decoder_channels=tuple(cfg.decoder_channels),
        )
        self.encoder, self.decoder, self.head = net.encoder, net.decoder, net.segmentation_head
        self.mask_tokens = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, c, 1, 1)) for c in self.encoder.out_channels[1:]]
        )

    def forward(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Reconstruction (N, 1, S, S) of images (N, 1, S, S) from their visible patches.

        `keep` is the patch mask (N, 1, g, g), 1 = visible.
        """
        size = images.shape[-1]
        feats = self.encoder(images * F.interpolate(keep, size=size, mode="nearest"))
        dense = [feats[0]]
        for f, token in zip(feats[1:], self.mask_tokens, strict=True):
            if f.shape[-1] < keep.shape[-1]:  # coarser than the patches: share visible
                m = F.adaptive_avg_pool2d(keep, f.shape[-2:])
            else:
                m = F.interpolate(keep, size=f.shape[-2:], mode="nearest")
            dense.append(f * m + token * (1 - m))
        return self.head(self.decoder(dense))


def patch_targets(images: torch.Tensor, patch: int, normalise: bool) -> torch.Tensor:
    """Pixels (N, 1, S, S), each patch normalised to zero mean and unit variance if asked."""
    if not normalise:
        return images
    n, _, s, _ = images.shape
    g = s // patch
    x = images.reshape(n, g, patch, g, patch)
    mean = x.mean(dim=(2, 4), keepdim=True)
    var = x.var(dim=(2, 4), keepdim=True, unbiased=False)
    return ((x - mean) / (var + 1e-6).sqrt()).reshape(images.shape)


def masked_loss(
    model: MaskedAutoencoder, images: torch.Tensor, keep: torch.Tensor, cfg: MAEConfig
) -> torch.Tensor:
    """Mean squared error of the reconstruction on the masked patches only."""
    pred = model(images, keep)
    target = patch_targets(images, cfg.patch_size, cfg.norm_pix_loss)
    masked = 1 - F.interpolate(keep, size=images.shape[-1], mode="nearest")
    return (((pred - target) ** 2) * masked).sum() / masked.sum().clamp(min=1)


def train_mae(
    cfg: MAEConfig,
    unlabeled: SliceSet,
    device: torch.device,
    progress: Progress,
    model: MaskedAutoencoder | None = None,
) -> tuple[MaskedAutoencoder, list[float]]:
    """Pretrain (a new model unless one is given); returns it and the loss per step."""
    size = unlabeled.slice_size
    if size % cfg.patch_size:
        raise ConfigError(
            f"--set patch_size={cfg.patch_size}: must divide the protocol's slice size {size}"
        )
    grid = size // cfg.patch_size

    def step_loss(net: MaskedAutoencoder, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        keep = random_patch_mask(len(idx), grid, cfg.mask_ratio, gen).to(device)
        return masked_loss(net, unlabeled.images(idx).to(device), keep, cfg)

    return pretrain_model(
        model,
        lambda: MaskedAutoencoder(cfg),
        cfg,
        unlabeled,
        device,
        step_loss,
        "MAE pretraining",
        progress,
    )


class MAE(PretrainedEncoderUNet):
    """Masked-CNN (SparK-style) pretrained encoder in `unet-scratch`'s U-Net, same fine-tuning."""

    name = family = "mae"
    summary = (
        "U-Net encoder pretrained by masked image modelling (SparK-style masked CNN, 75% of "
        "patches masked, loss on masked patches) on the unlabeled slices; "
        f"{FINE_TUNING}"
    )
    Config = MAEConfig
    train_model = staticmethod(train_mae)
