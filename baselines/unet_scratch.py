"""`unet-scratch`: a randomly initialised U-Net trained only on the budget's labeled slices.

The reference point every label-efficient method must beat: `segmentation_models_pytorch.Unet`
with `encoder_weights=None` (no ImageNet weights, nothing downloaded), trained with the
shared supervised recipe (`benchmark.supervised.SupervisedMethod`: Dice + cross-entropy,
AdamW, cosine).
"""

from __future__ import annotations

from dataclasses import dataclass

import segmentation_models_pytorch as smp

from benchmark.method import FINETUNE, RunContext, SliceSet
from benchmark.supervised import SupervisedConfig, SupervisedMethod


@dataclass(frozen=True)
class UNetConfig(SupervisedConfig):
    """The shared supervised recipe plus the U-Net's encoder."""

    encoder: str = "resnet18"
    """smp encoder name; weights are always random-init here."""


def build_unet(config: UNetConfig, num_classes: int) -> smp.Unet:
    return smp.Unet(
        encoder_name=config.encoder, encoder_weights=None, in_channels=1, classes=num_classes
    )


class UNetScratch(SupervisedMethod):
    """Random-init `smp.Unet` trained on the labeled budget only (no pretraining)."""

    name = "unet-scratch"
    summary = "random-init U-Net (segmentation-models-pytorch), Dice + CE on the budget only"
    Config = UNetConfig
    compute = FINETUNE

    def build_model(self, labeled: SliceSet, ctx: RunContext) -> smp.Unet:
        return build_unet(self.config, ctx.num_classes)
