"""`unet-scratch`: a randomly initialised U-Net trained only on the budget's labeled slices.

The reference point every label-efficient method must beat: `segmentation_models_pytorch.Unet`
with `encoder_weights=None` (no ImageNet weights, nothing downloaded), trained with the
shared supervised recipe (`benchmark.supervised`: Dice + cross-entropy, AdamW, cosine).
"""

from __future__ import annotations

from dataclasses import dataclass

import segmentation_models_pytorch as smp
import torch

from benchmark.method import FINETUNE, Method, RunContext, SliceSet
from benchmark.supervised import SupervisedConfig, predict_supervised, train_supervised


@dataclass(frozen=True)
class UNetConfig(SupervisedConfig):
    """The shared supervised recipe plus the U-Net's encoder."""

    encoder: str = "resnet18"
    """smp encoder name; weights are always random-init here."""


def build_unet(config: UNetConfig, num_classes: int) -> smp.Unet:
    return smp.Unet(
        encoder_name=config.encoder, encoder_weights=None, in_channels=1, classes=num_classes
    )


class UNetScratch(Method):
    """Random-init `smp.Unet` trained on the labeled budget only (no pretraining)."""

    name = "unet-scratch"
    summary = "random-init U-Net (segmentation-models-pytorch), Dice + CE on the budget only"
    Config = UNetConfig
    compute = FINETUNE

    def fit(self, labeled: SliceSet, ctx: RunContext) -> None:
        torch.manual_seed(ctx.seed)
        self.model = build_unet(self.config, ctx.num_classes)
        ctx.info["final_loss"] = train_supervised(self.model, self.config, labeled, ctx)[-1]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return predict_supervised(self.model, images, self.config.predict_batch_size)
