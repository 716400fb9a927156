"""The supervised recipe every fine-tuned network shares (U-Net baselines, diffusion decoder),
and `SupervisedMethod`, the `Method` base that fits and predicts with it.

Keeping one recipe means that methods differ only in their initialisation and architecture:
AdamW with cosine decay, Dice + cross-entropy, the same augmentation, the protocol's number of
samples, validation every `validate_every` samples and the best validated weights kept.

The Dice term is batch Dice (MONAI's `batch=True`, as nnU-Net's default): one Dice per organ
over the whole batch. Per-slice Dice scores an organ absent from a slice as a failure unless
the slice predicts none of it, which pushes small organs toward not being predicted at all.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from benchmark.augment import AFFINE_DRAWS, INTENSITY_DRAWS, random_affine, random_intensity
from benchmark.config import non_negative, positive
from benchmark.method import FINETUNE, Method, RunContext, SliceSet
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
    predict_batch_size: int = positive(32, execution=True)
    """Slices per forward pass at prediction (execution only)."""


LOSS_READ_EVERY = 50
"""Steps between reads of the training loss to the host (and at every validation and the
end): reading it every step would make the host wait for the device every step."""


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
    (the caller records `selection.finish`). The losses stay on the device and are read in
    one transfer every `LOSS_READ_EVERY` steps, before each validation and at the end.
    """
    losses: list[float] = []
    unread: list[torch.Tensor] = []
    for step in range(1, steps + 1):
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        unread.append(loss.detach())
        due = selection is not None and selection.due(step)
        if due or step % LOSS_READ_EVERY == 0 or step == steps:
            read = torch.stack(unread).tolist()
            unread.clear()
            losses.extend(read)
            task.advance(len(read), loss=read[-1])
            if selection is not None:
                for value in read:  # in step order: only the last step can be a validation
                    selection.step(value)
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


def fine_tune(
    ctx: RunContext,
    model: torch.nn.Module,
    params: Iterable[torch.nn.Parameter],
    step_loss: Callable[[], torch.Tensor],
    score: Callable[[], float],
    config: Any,
    lr: float,
    steps: int,
    title: str,
) -> list[float]:
    """`steps` AdamW steps (`lr` cosine-decayed to 0, the config's `weight_decay`) on
    `step_loss()`, a batch of the config's `batch_size` each; returns the losses.

    Validates `model` with `score` every `ctx.training.validate_every` samples and keeps the
    best weights when the protocol selects; the choice goes into `ctx.info["selection"]`.
    Shared by the supervised recipe and the diffusion pixel classifier.
    """
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    selection = Selection.for_context(ctx, model, score, config.batch_size, steps)
    losses = optimize(step_loss, opt, sched, steps, ctx.progress.task(title, steps), selection)
    if selection is not None:
        selection.finish(ctx.info)
    return losses


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
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    batch_idx, affine, intensity = draw_streams(
        labeled, config.batch_size, steps, ctx.seed, config.augment, device
    )
    step_of = iter(range(steps))

    def step_loss() -> torch.Tensor:
        i = next(step_of)
        idx = batch_idx[i]
        x, y = images[idx], labels[idx]
        if config.augment:
            x, y = random_affine(x, y, None, uniforms=affine[i])
            x = random_intensity(x, None, uniforms=intensity[i])
        return loss_fn(model(x), y[:, None])

    def score() -> float:
        assert ctx.validator is not None  # only called when there is one
        return ctx.validator.score(
            lambda x: predict_supervised(model, x, config.predict_batch_size)
        )

    losses = fine_tune(ctx, model, params, step_loss, score, config, config.lr, steps, "fit")
    model.eval()
    return losses


def draw_batches(labeled: SliceSet, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """A fit's batches of slice indices, (steps, batch_size): `labeled.batches` with
    `np.random.default_rng(seed)`, drawn up front."""
    batches = labeled.batches(batch_size, np.random.default_rng(seed))
    return np.stack([next(batches) for _ in range(steps)])


def draw_streams(
    labeled: SliceSet, batch_size: int, steps: int, seed: int, augment: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A whole fit's random numbers, drawn up front and copied to `device` once: the batches'
    slice indices (steps, batch) and the uniforms of `random_affine` and `random_intensity`
    (steps, batch, k; empty without `augment`).

    The same numbers, in the same order, as drawing them step by step: the batches from
    `labeled.batches` with `np.random.default_rng(seed)`, then per step the affine and the
    intensity draws from `torch.Generator().manual_seed(seed)`. So every device sees the same
    random numbers, and a step needs no host-to-device copy.
    """
    idx = torch.from_numpy(draw_batches(labeled, batch_size, steps, seed))
    gen = torch.Generator().manual_seed(seed)
    affine, intensity = [], []
    for _ in range(steps if augment else 0):
        affine.append(torch.rand(batch_size, AFFINE_DRAWS, generator=gen))
        intensity.append(torch.rand(batch_size, INTENSITY_DRAWS, generator=gen))

    def stacked(draws: list[torch.Tensor], k: int) -> torch.Tensor:
        return torch.stack(draws) if draws else torch.empty(0, batch_size, k)

    return (
        idx.to(device),
        stacked(affine, AFFINE_DRAWS).to(device),
        stacked(intensity, INTENSITY_DRAWS).to(device),
    )


@torch.no_grad()
def predict_in_batches(
    labels_of: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """`labels_of` ((n, 1, S, S) on `device` → (n, S, S) labels) over `images` (N, 1, S, S) in
    batches of `batch_size`, concatenated on the CPU."""
    out = [
        labels_of(images[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


def predict_supervised(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Argmax label maps (N, S, S) for images (N, 1, S, S)."""
    model.eval()
    device = next(model.parameters()).device
    return predict_in_batches(lambda x: model(x).argmax(1), images, batch_size, device)


class SupervisedMethod(Method):
    """A method that fine-tunes one network with the shared recipe (its config a
    `SupervisedConfig`): `fit` seeds with the run seed, builds the network with `build_model`
    and trains it with `train_supervised`; `predict` is its argmax label map. Its compute is
    `FINETUNE` (the config's `iterations` × `batch_size`) unless a subclass declares more."""

    model: torch.nn.Module
    compute = FINETUNE

    @abc.abstractmethod
    def build_model(self, labeled: SliceSet, ctx: RunContext) -> torch.nn.Module:
        """The (N, 1, S, S) → (N, K, S, S) logits network to fine-tune, built after
        `torch.manual_seed(ctx.seed)` (so its random initialisation is the seed's)."""

    def fit(self, labeled: SliceSet, ctx: RunContext) -> None:
        torch.manual_seed(ctx.seed)
        self.model = self.build_model(labeled, ctx)
        ctx.info["final_loss"] = train_supervised(self.model, self.config, labeled, ctx)[-1]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return predict_supervised(self.model, images, self.config.predict_batch_size)
