"""What `simclr` and `mae` share: a cached, self-supervised encoder inside `unet-scratch`'s U-Net.

Pretraining (label-free, on the protocol's unlabeled slices) trains `model.encoder` of the
`smp.Unet` that `unet-scratch` builds; its weights are cached as `encoder.pt` in the run's
pretraining folder (keyed by the content hash of the pretraining fields and the unlabeled
pool), hash-checked by `benchmark.checkpoint`, and shared by every budget and fine-tuning
seed. Fine-tuning is `unet-scratch`'s exactly: the same seeded random initialisation of the
whole U-Net, then the pretrained encoder weights loaded over it, then `train_supervised`
with the same config fields, iterations, loss and augmentation. The only difference from
`unet-scratch` is the encoder's initial weights.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from baselines.unet_scratch import UNetConfig, build_unet
from benchmark.checkpoint import load_verified, save_verified, sha256_file
from benchmark.config import identity_dict, non_negative, positive
from benchmark.method import PRETRAIN_AND_FINETUNE, RunContext, SliceSet
from benchmark.progress import Progress
from benchmark.supervised import SupervisedConfig, SupervisedMethod, optimize

ENCODER = "encoder.pt"
FINE_TUNING = (
    "fine-tuned with unet-scratch's recipe (same iterations, Dice + CE loss): only the "
    "initialisation differs"
)
"""The end of every subclass's `summary`."""
Net = TypeVar("Net", bound=nn.Module)


@dataclass(frozen=True)
class SSLConfig(UNetConfig):
    """The self-supervised pretraining fields `simclr` and `mae` share; each adds its batch
    size, weight decay and its own objective's fields."""

    preset: str = "cpu"
    """Named starting point for the pretraining fields: cpu or gpu."""
    pretrain_iterations: int | None = positive(None)
    """Optimizer steps of pretraining. None: the protocol's pretraining budget ÷
    pretrain_batch_size (rounded up), as for every pretraining method; another value makes
    the run off-protocol."""
    pretrain_lr: float = non_negative(1e-3)
    """AdamW learning rate (linear warm-up over 10 % of the steps, then cosine to 0)."""
    pretrain_seed: int = non_negative(0)
    """Seed of pretraining; one encoder serves every fine-tuning seed and budget."""


def pretrain_fields(config: UNetConfig) -> dict[str, Any]:
    """The fields that define the pretrained encoder: all but the fine-tuning recipe's."""
    recipe = {f.name for f in dataclasses.fields(SupervisedConfig)} | {"preset"}
    fields = identity_dict(config)
    # JSON round trip: tuples become lists, as in the cache's side file.
    return json.loads(json.dumps({k: v for k, v in fields.items() if k not in recipe}))


def sample_batch(n: int, batch_size: int, gen: torch.Generator) -> np.ndarray:
    """Indices of a batch: distinct while the pool allows (a repeat would be a false negative)."""
    if n >= batch_size:
        return torch.randperm(n, generator=gen)[:batch_size].numpy()
    return torch.randint(n, (batch_size,), generator=gen).numpy()


def pretrain_loop(
    model: torch.nn.Module,
    cfg: Any,
    n_slices: int,
    step_loss: Callable[[np.ndarray, torch.Generator], torch.Tensor],
    title: str,
    progress: Progress,
) -> list[float]:
    """The self-supervised schedule `simclr` and `mae` share; returns the loss per step.

    AdamW (`pretrain_lr`, `pretrain_weight_decay`), linear warm-up over the first tenth of
    `pretrain_iterations`, then cosine decay; each step draws `pretrain_batch_size` slice
    indices from a generator seeded with `pretrain_seed` and asks `step_loss(idx, gen)`.
    """
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.pretrain_lr, weight_decay=cfg.pretrain_weight_decay
    )
    steps = cfg.pretrain_iterations
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, 1 / warmup, 1.0, warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps - warmup)),
        ],
        milestones=[warmup],
    )
    gen = torch.Generator().manual_seed(cfg.pretrain_seed)
    return optimize(
        lambda: step_loss(sample_batch(n_slices, cfg.pretrain_batch_size, gen), gen),
        opt,
        sched,
        steps,
        progress.task(title, steps),
    )


def pretrain_model(
    model: Net | None,
    build: Callable[[], Net],
    cfg: Any,
    unlabeled: SliceSet,
    device: torch.device,
    step_loss: Callable[[Net, np.ndarray, torch.Generator], torch.Tensor],
    title: str,
    progress: Progress,
) -> tuple[Net, list[float]]:
    """Pretrain `model` (None: `build()` one, after seeding torch with `pretrain_seed`) on
    `device` by `pretrain_loop` with `step_loss(model, idx, gen)`; returns it in eval mode
    and the loss per step."""
    torch.manual_seed(cfg.pretrain_seed)
    net = (model if model is not None else build()).to(device).train()
    losses = pretrain_loop(
        net, cfg, len(unlabeled), lambda idx, gen: step_loss(net, idx, gen), title, progress
    )
    return net.eval(), losses


class PretrainedEncoderUNet(SupervisedMethod):
    """Base of the encoder-pretraining baselines; subclasses set `family` (the pretraining's
    name in its cache key) and `train_model`, which pretrains a network with an `encoder`."""

    uses_pretraining = True
    compute = PRETRAIN_AND_FINETUNE
    family: ClassVar[str]
    train_model: ClassVar[Callable[..., tuple[nn.Module, list[float]]]]
    """`train_model(config, unlabeled, device, progress)` → (network, loss per step); a
    `staticmethod`."""
    encoder_state: dict[str, torch.Tensor]

    def pretrain_key(self, seed: int) -> dict[str, Any]:
        # The config's pretrain_seed, not the run seed: one encoder for every budget and seed.
        return {"family": self.family, **pretrain_fields(self.config)}

    def train_encoder(
        self, unlabeled: SliceSet, ctx: RunContext
    ) -> tuple[dict[str, torch.Tensor], list[float]]:
        """Pretrain from scratch; returns the encoder's state dict and the loss per step."""
        model, losses = self.train_model(self.config, unlabeled, ctx.device, ctx.progress)
        return model.encoder.state_dict(), losses

    def pretrain(self, unlabeled: SliceSet, ctx: RunContext) -> None:
        expect = pretrain_fields(self.config)
        path = Path(ctx.cache_dir) / ENCODER
        cached = load_verified(path, expect)
        if cached is not None:
            state, meta = cached[0]["encoder"], cached[1]
        else:
            ctx.progress.console.print(
                f"no cached {self.family} encoder for this config and unlabeled pool: "
                f"pretraining on {len(unlabeled)} slices ({Path(ctx.cache_dir).name})",
                highlight=False,
            )
            state, losses = self.train_encoder(unlabeled, ctx)
            state = {k: v.detach().cpu() for k, v in state.items()}
            meta = {"config": expect, "steps": len(losses), "losses": losses}
            save_verified({"encoder": state}, path, meta)
            meta = {**meta, "sha256": sha256_file(path)}
        self.encoder_state = state
        tail = meta["losses"][-20:]
        ctx.info["pretrain"] = {
            "family": self.family,
            "cached": cached is not None,
            "steps": meta["steps"],
            "sha256": meta["sha256"][:16],
            "first_loss": round(float(meta["losses"][0]), 4) if meta["losses"] else None,
            "final_loss": round(sum(tail) / max(1, len(tail)), 4),
        }

    def build_model(self, labeled: SliceSet, ctx: RunContext) -> nn.Module:
        model = build_unet(self.config, ctx.num_classes)  # as unet-scratch, then:
        model.encoder.load_state_dict(self.encoder_state)
        return model
