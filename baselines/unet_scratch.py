"""`unet-scratch`: a randomly initialised U-Net trained only on the budget's labeled slices.

The reference point every label-efficient method must beat: `segmentation_models_pytorch.Unet`
with `encoder_weights=None` (no ImageNet weights, nothing downloaded), Dice + cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import segmentation_models_pytorch as smp
import torch
from monai.losses import DiceCELoss

from benchmark.augment import random_affine, random_intensity
from benchmark.method import Method, RunContext, SliceSet


@dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters of the supervised U-Net recipe (shared by every U-Net fine-tuning)."""

    encoder: str = "resnet18"
    """smp encoder name; weights are always random-init here."""
    iterations: int = 300
    """Optimizer steps, the same for every budget."""
    batch_size: int = 8
    """Slices per step (drawn with replacement when the budget is smaller)."""
    lr: float = 1e-3
    """AdamW learning rate, cosine-decayed to 0."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    augment: bool = True
    """Random rotation (±10°), scale (0.9-1.1), shift (±5%) and intensity jitter."""
    predict_batch_size: int = 32
    """Slices per forward pass at prediction."""


def train_unet(
    model: torch.nn.Module, config: UNetConfig, labeled: SliceSet, ctx: RunContext
) -> list[float]:
    """The shared supervised recipe: AdamW + cosine, Dice + CE, augmentation. Returns losses."""
    device = ctx.device
    model.to(device).train()
    images, labels = labeled.images().to(device), labeled.labels().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.iterations, 1))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    gen = torch.Generator().manual_seed(ctx.seed)
    batches = labeled.batches(config.batch_size, np.random.default_rng(ctx.seed))
    losses = []
    task = ctx.progress.task("fit", config.iterations)
    for _ in range(config.iterations):
        idx = torch.from_numpy(next(batches)).to(device)
        x, y = images[idx], labels[idx]
        if config.augment:
            x, y = random_affine(x, y, gen)
            x = random_intensity(x, gen)
        logits = model(x)
        loss = loss_fn(logits, y[:, None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
        task.advance(loss=losses[-1])
    task.close()
    model.eval()
    return losses


@torch.no_grad()
def predict_unet(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Argmax label maps (N, S, S) for images (N, 1, S, S)."""
    device = next(model.parameters()).device
    model.eval()
    out = [
        model(images[i : i + batch_size].to(device)).argmax(1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


class UNetScratch(Method):
    """Random-init `smp.Unet` trained on the labeled budget only (no pretraining)."""

    name = "unet-scratch"
    summary = "random-init U-Net (segmentation-models-pytorch), Dice + CE on the budget only"
    Config = UNetConfig

    def fit(self, labeled: SliceSet, ctx: RunContext) -> None:
        torch.manual_seed(ctx.seed)
        self.model = smp.Unet(
            encoder_name=self.config.encoder,
            encoder_weights=None,
            in_channels=1,
            classes=ctx.num_classes,
        )
        ctx.info["final_loss"] = train_unet(self.model, self.config, labeled, ctx)[-1]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return predict_unet(self.model, images, self.config.predict_batch_size)
