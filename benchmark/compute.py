"""Compute matched by the protocol: a method's steps from the protocol's samples budget.

The protocol's `[training]` table fixes how many samples every method sees in fine-tuning
and in pretraining. A method declares which config fields set its steps and batch size
(`Method.compute`); `resolve` fills steps left at None from the budget and says whether a
run stays on-protocol. Off-protocol runs are recorded and shown, never ranked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmark.config import apply_overrides
from benchmark.method import Method
from benchmark.protocol import Training


@dataclass(frozen=True)
class Compute:
    """Samples a run sees, and why it is off-protocol (None when it is not)."""

    finetune_samples: int | None
    """Labeled slices seen in fine-tuning (steps × batch); None when the method's own."""
    pretrain_samples: int | None
    """Unlabeled slices seen in pretraining; 0 without pretraining, None when its own."""
    off_protocol: str | None


def steps_for(samples: int, batch_size: int) -> int:
    """Optimizer steps that see at least `samples` samples in batches of `batch_size`."""
    return math.ceil(samples / batch_size)


def resolve(method_cls: type[Method], config: Any, training: Training) -> tuple[Any, Compute]:
    """The config with its steps filled from the protocol, and the run's compute."""
    if method_cls.compute is None:
        reason = f"{method_cls.name} trains on its own schedule, not the protocol's budget"
        return config, Compute(None, None, reason)
    budgets = {"finetune": training.finetune_samples, "pretrain": training.pretrain_samples}
    filled: dict[str, int] = {}
    seen = {"finetune": 0, "pretrain": 0}
    reasons = []
    for phase, (steps_field, batch_field) in method_cls.compute.items():
        batch = getattr(config, batch_field)
        steps = getattr(config, steps_field)
        wanted = steps_for(budgets[phase], batch)
        if steps is None:
            steps = filled[steps_field] = wanted
        elif steps != wanted:
            reasons.append(
                f"{steps_field}={steps} × {batch_field}={batch} is {steps * batch} {phase} "
                f"samples; the protocol fixes {budgets[phase]} ({wanted} steps)"
            )
        seen[phase] = steps * batch
    config = dataclasses.replace(config, **filled) if filled else config
    return config, Compute(seen["finetune"], seen["pretrain"], "; ".join(reasons) or None)


def configure(
    method_cls: type[Method], overrides: Sequence[str], training: Training
) -> tuple[Any, Compute]:
    """A method's config from its defaults, `--set` overrides and the protocol's budget."""
    return resolve(method_cls, apply_overrides(method_cls.Config, overrides), training)
