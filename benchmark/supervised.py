"""The supervised recipe every fine-tuned network shares (U-Net baselines, diffusion decoder).

Keeping one recipe means that methods differ only in their initialisation and architecture:
AdamW with cosine decay, Dice + cross-entropy, the same augmentation, the protocol's number of
samples, validation every `validate_every` samples and the best validated weights kept.

The Dice term is batch Dice (MONAI's `batch=True`, as nnU-Net's default): one Dice per organ
over the whole batch. Per-slice Dice scores an organ absent from a slice as a failure unless
the slice predicts none of it, which pushes small organs toward not being predicted at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceCELoss

from benchmark.augment import random_affine, random_intensity
from benchmark.config import non_negative, positive
from benchmark.method import RunContext, SliceSet
from benchmark.progress import Task
from benchmark.validation import Selection


@dataclass(frozen=True)
class SupervisedConfig:
    """Hyperparameters of supervised training on the labeled budget."""

    iterations: int | None = positive(None)
    """Optimizer steps. None: the protocol's fine-tuning budget ÷ batch_size (rounded up),
    the same samples for every budget and method; another value makes the run off-protocol."""
    batch_size: int = positive(8)
    """Slices per step (drawn with replacement when the budget is smaller)."""
    lr: float = non_negative(1e-3)
    """AdamW learning rate, cosine-decayed to 0."""
    weight_decay: float = non_negative(1e-4)
    """AdamW weight decay."""
    augment: bool = True
    """Random rotation (±10°), scale (0.9-1.1), shift (±5%) and intensity jitter."""
    predict_batch_size: int = positive(32)
    """Slices per forward pass at prediction."""


def optimize(
    step_loss: Callable[[], torch.Tensor],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    steps: int,
    task: Task,
    selection: Selection | None = None,
) -> list[float]:
    """`steps` optimizer and scheduler steps on `step_loss()`; closes `task`, returns the losses.

    Shared by supervised fine-tuning, the linear head and SimCLR / MAE pretraining (DDPM
    pretraining keeps its own loop for EMA, checkpoints and DDP). With a `selection`, the
    model is validated as the protocol asks and its best weights are restored at the end
    (the caller records `selection.finish`).
    """
    losses: list[float] = []
    for _ in range(steps):
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        task.advance(loss=losses[-1])
        if selection is not None:
            selection.step(losses[-1])
    task.close()
    return losses


def fine_tuning_steps(iterations: int | None) -> int:
    """The resolved step count of a fine-tuning config (the runner fills it from the protocol)."""
    if iterations is None:
        raise ValueError(
            "iterations is unset: build the config with benchmark.compute.resolve (the "
            "protocol's fine-tuning budget) or set it"
        )
    return iterations


def train_supervised(
    model: torch.nn.Module, config: SupervisedConfig, labeled: SliceSet, ctx: RunContext
) -> list[float]:
    """Train `model` ((N, 1, S, S) → (N, K, S, S) logits) on the labeled slices; returns losses.

    Validates on `ctx.validator` every `ctx.training.validate_every` samples and keeps the
    best weights when the protocol selects; the choice goes into `ctx.info["selection"]`.
    """
    device = ctx.device
    steps = fine_tuning_steps(config.iterations)
    model.to(device).train()
    images, labels = labeled.images().to(device), labeled.labels().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    gen = torch.Generator().manual_seed(ctx.seed)
    batches = labeled.batches(config.batch_size, np.random.default_rng(ctx.seed))

    def step_loss() -> torch.Tensor:
        idx = torch.from_numpy(next(batches)).to(device)
        x, y = images[idx], labels[idx]
        if config.augment:
            x, y = random_affine(x, y, gen)
            x = random_intensity(x, gen)
        return loss_fn(model(x), y[:, None])

    selection = Selection.for_context(
        ctx,
        model,
        lambda: ctx.validator.score(  # type: ignore[union-attr]
            lambda x: predict_supervised(model, x, config.predict_batch_size)
        ),
        config.batch_size,
        steps,
    )
    task = ctx.progress.task("fit", steps)
    losses = optimize(step_loss, opt, sched, steps, task, selection)
    if selection is not None:
        selection.finish(ctx.info)
    model.eval()
    return losses


@torch.no_grad()
def predict_supervised(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Argmax label maps (N, S, S) for images (N, 1, S, S)."""
    device = next(model.parameters()).device
    model.eval()
    out = [
        model(images[i : i + batch_size].to(device)).argmax(1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)
