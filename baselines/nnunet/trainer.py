"""nnU-Net's training length for the protocol's samples (`Schedule`), the trainer subclass that
applies it, and the record of what nnU-Net planned."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from baselines.nnunet.config import CONFIGURATION, NNUNetConfig, find_trainer
from benchmark.compute import steps_for


@dataclass(frozen=True)
class Schedule:
    """nnU-Net's training length: epochs of `iterations_per_epoch`, the last one shorter."""

    epochs: int
    iterations_per_epoch: int
    last_epoch_iterations: int
    batch_size: int
    """nnU-Net's planned batch (patches per step)."""

    @property
    def steps(self) -> int:
        return (self.epochs - 1) * self.iterations_per_epoch + self.last_epoch_iterations

    @property
    def samples(self) -> int:
        """Patches seen in training (steps × batch)."""
        return self.steps * self.batch_size


def plan_schedule(config: NNUNetConfig, batch_size: int, samples: int | None) -> Schedule:
    """The schedule for nnU-Net's planned `batch_size`: from the protocol's fine-tuning
    `samples` when `epochs` is unset (steps = samples ÷ batch, rounded up, as for every
    method), else `epochs` full epochs."""
    per_epoch = config.iterations_per_epoch
    if config.epochs is not None:
        return Schedule(config.epochs, per_epoch, per_epoch, batch_size)
    if samples is None:
        raise ValueError("epochs is unset and there is no protocol budget to set it from")
    steps = steps_for(samples, batch_size)
    epochs = math.ceil(steps / per_epoch)
    return Schedule(epochs, per_epoch, steps - (epochs - 1) * per_epoch, batch_size)


@functools.cache
def trainer_class(name: str) -> type:
    """nnU-Net's trainer `name` with the run's schedule, mirroring choice and progress."""
    base = find_trainer(name)

    class Trainer(base):  # type: ignore[valid-type, misc]
        """`configure` sets the schedule (last epoch shortened), mirroring and progress."""

        schedule: Schedule
        mirroring = False
        task: Any = None

        def configure(self, schedule: Schedule, config: NNUNetConfig, task: Any = None) -> None:
            self.schedule = schedule
            self.num_epochs = schedule.epochs
            self.num_iterations_per_epoch = schedule.iterations_per_epoch
            self.num_val_iterations_per_epoch = config.val_iterations_per_epoch
            self.save_every = schedule.epochs
            self.mirroring = config.mirroring
            self.task = task

        def on_train_epoch_start(self):
            super().on_train_epoch_start()
            last = self.current_epoch == self.num_epochs - 1
            self.num_iterations_per_epoch = (
                self.schedule.last_epoch_iterations if last else self.schedule.iterations_per_epoch
            )

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            rot, dummy_2d, patch, mirror_axes = (
                super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            )
            if not self.mirroring:  # as nnUNetTrainerNoMirroring
                mirror_axes = None
                self.inference_allowed_mirroring_axes = None
            return rot, dummy_2d, patch, mirror_axes

        def on_epoch_end(self):
            super().on_epoch_end()
            if self.task is not None:
                self.task.advance(loss=float(self.logger.get_value("train_losses", step=-1)))

    Trainer.__name__ = Trainer.__qualname__ = f"{name}_labelbench"
    return Trainer


def describe_plan(plans: dict[str, Any], plans_identifier: str, planner: str) -> dict[str, Any]:
    """What nnU-Net chose for the 2d configuration: patch, batch, network depth, spacing."""
    cfg = plans["configurations"][CONFIGURATION]
    arch = cfg.get("architecture", {}).get("arch_kwargs", {})
    return {
        "planner": planner,
        "plans": plans_identifier,
        "configuration": CONFIGURATION,
        "patch_size": list(cfg["patch_size"]),
        "batch_size": int(cfg["batch_size"]),
        "n_stages": int(arch.get("n_stages", 0)),
        "features_per_stage": list(arch.get("features_per_stage", [])),
        "network": cfg.get("architecture", {}).get("network_class_name", ""),
        "spacing_mm": [round(float(s), 4) for s in cfg["spacing"]],
        "median_image_size": list(cfg.get("median_image_size_in_voxels", [])),
        "normalization": list(cfg.get("normalization_schemes", [])),
    }
