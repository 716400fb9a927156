"""Compute matched by the protocol: a method's steps from the protocol's samples budget.

The protocol's `[training]` table fixes how many samples every method sees in fine-tuning
and in pretraining. A method declares which config fields set its steps and batch size
(`Method.compute`); `resolve` fills steps left at None from the budget and says whether a
run stays on-protocol. A method whose batch is chosen inside `fit` (nnU-Net's plan) declares
no batch field: it takes its steps from `ctx.training` there and reports (steps, batch) in
`ctx.finetune_steps`, and `settle` then records the samples it saw. Off-protocol runs are
recorded and shown, never ranked.
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
    """Labeled slices seen in fine-tuning (steps × batch); None when the method's own, or
    until `settle` when the batch is chosen in `fit`."""
    pretrain_samples: int | None
    """Unlabeled slices seen in pretraining; 0 without pretraining, None when its own."""
    off_protocol: str | None
    finetune_in_fit: bool = False
    """The method chooses its batch in `fit` and reports (steps, batch) there (`settle`)."""


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
    in_fit = False
    for phase, (steps_field, batch_field) in method_cls.compute.items():
        if batch_field is None:  # the batch is known in fit only: `settle` decides there
            if phase != "finetune":
                raise ValueError(f"{method_cls.name}: only fine-tuning may choose its batch in fit")
            in_fit = True
            continue
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
    finetune = None if in_fit else seen["finetune"]
    return config, Compute(finetune, seen["pretrain"], "; ".join(reasons) or None, in_fit)


def settle(compute: Compute, reported: tuple[int, int] | None, training: Training) -> Compute:
    """The compute of a run whose method chose its batch in `fit`, from the (optimizer steps,
    batch size) it reported: on-protocol when the steps are the budget's (samples ÷ batch,
    rounded up), as `resolve` requires of every other method. Other runs pass unchanged."""
    if not compute.finetune_in_fit:
        return compute
    reasons = [compute.off_protocol] if compute.off_protocol else []
    samples = None
    if reported is None:
        reasons.append("the method did not report its fine-tuning steps and batch")
    else:
        steps, batch = reported
        samples = steps * batch
        wanted = steps_for(training.finetune_samples, batch)
        if steps != wanted:
            reasons.append(
                f"{steps} steps × batch {batch} is {samples} finetune samples; the protocol "
                f"fixes {training.finetune_samples} ({wanted} steps)"
            )
    return dataclasses.replace(
        compute, finetune_samples=samples, off_protocol="; ".join(reasons) or None
    )


def beyond_budget(compute: Compute, curve_samples: Sequence[int]) -> str | None:
    """Why a run trained past the fine-tuning samples it declares, from its learning curve
    (samples seen at each validation), or None. A method that declares the protocol's
    budget but runs a schedule of its own would otherwise be recorded with the budget's
    samples, on-protocol, and ranked."""
    if not curve_samples or compute.finetune_samples is None:
        return None
    seen = max(curve_samples)
    if seen <= compute.finetune_samples:
        return None
    return (
        f"its learning curve reaches {seen} finetune samples, beyond the "
        f"{compute.finetune_samples} its config declares"
    )


def configure(
    method_cls: type[Method], overrides: Sequence[str], training: Training
) -> tuple[Any, Compute]:
    """A method's config from its defaults, `--set` overrides and the protocol's budget."""
    return resolve(method_cls, apply_overrides(method_cls.Config, overrides), training)
