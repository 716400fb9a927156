"""The `nnunet` config and the nnU-Net classes it names (trainer, experiment planner), looked
up by name as nnU-Net's own command-line tools look them up."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from baselines.nnunet.environment import quiet
from benchmark.config import (
    execution_only,
    fraction,
    non_negative,
    open_unit_interval,
    positive,
)
from benchmark.errors import did_you_mean

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID:03d}_Labelbench"
CONFIGURATION = "2d"


NOMINAL_SPACING_MM = (1.0, 1.0)
"""In-plane spacing every slice is handed to nnU-Net at, in training and at prediction."""
DEFAULT_TRAINER = "nnUNetTrainer"
DEFAULT_PLANNER = "ExperimentPlanner"


@dataclass(frozen=True)
class NNUNetConfig:
    """nnU-Net v2 on the budget's slices; everything not listed here is nnU-Net's own choice.

    The length is the protocol's fine-tuning budget in samples (epochs left unset): steps =
    samples ÷ the planned batch, in epochs of `iterations_per_epoch`.
    """

    trainer: str = DEFAULT_TRAINER
    """nnU-Net trainer class to train with (any in nnunetv2.training.nnUNetTrainer or in
    `nnUNet_extTrainer`, e.g. nnUNetTrainerDiceCELoss_noSmooth); its epochs and mirroring
    are set here, everything else is its own."""
    epochs: int | None = positive(None)
    """None: from the protocol's fine-tuning budget (the last epoch shortened). Set: that
    many full epochs, off-protocol unless it is the budget (nnU-Net's default: 1000)."""
    iterations_per_epoch: int = positive(250)
    """Training iterations per epoch (nnU-Net's default: 250); with epochs unset it changes
    the number of epochs, not the samples."""
    val_iterations_per_epoch: int = positive(50)
    """Validation iterations per epoch, for nnU-Net's pseudo-Dice (nnU-Net's default: 50)."""
    fold: str = "all"
    """"all": train on every labeled slice; "0": one explicit split in splits_final.json."""
    val_fraction: float = open_unit_interval(0.2)
    """With fold "0": share of the slices held out for validation (at least one)."""
    planner: str = DEFAULT_PLANNER
    """nnU-Net experiment planner class (e.g. nnUNetPlannerResEncM for the ResEnc presets)."""
    mirroring: bool = False
    """nnU-Net's mirroring augmentation and test-time mirroring. Off by default: flips swap
    left and right organs, which no other method sees (nnU-Net's own default is on)."""
    test_time_mirroring: bool = True
    """With mirroring on: also mirror at prediction (nnU-Net's TTA; `--disable_tta` off)."""
    final_validation: bool = True
    """Run nnU-Net's final validation after training, as `nnUNetv2_train` does."""
    tile_step_size: float = fraction(0.5)
    """Sliding-window step as a fraction of the patch size at prediction."""
    processes: int = positive(2, execution=True)
    """Worker processes for fingerprinting, preprocessing and export (nnUNet_def_n_proc;
    execution only)."""
    augmentation_processes: int = non_negative(0, execution=True)
    """Data augmentation workers (nnUNet_n_proc_DA); 0 = in the training process, seeded by
    the run's seed. Execution only: the same sampling and augmentation, but nnU-Net's workers
    draw unseeded (its NonDetMultiThreadedAugmenter with seeds=None), so such a run cannot be
    repeated bit for bit (nnU-Net's own default is 12 workers)."""
    keep_files: bool = execution_only(False)
    """Keep the run's nnUNet_raw / _preprocessed / _results folder (its path is in the record;
    execution only)."""

    def __post_init__(self) -> None:
        if self.fold not in ("all", "0"):
            raise ValueError(f"fold must be 'all' or '0', not {self.fold!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), not {self.val_fraction}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        # nnU-Net's own defaults always exist; other names are looked up (imports nnU-Net).
        if self.trainer != DEFAULT_TRAINER:
            find_trainer(self.trainer)
        if self.planner != DEFAULT_PLANNER:
            find_planner(self.planner)


def _subclass_names(cls: type) -> set[str]:
    names = set()
    for sub in cls.__subclasses__():
        names |= {sub.__name__, *_subclass_names(sub)}
    return names


@functools.cache
def find_trainer(name: str) -> type:
    """nnU-Net's trainer class `name`, found as `nnUNetv2_train -tr` finds it; ValueError
    naming close matches when there is none."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with quiet():
            cls = recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        cls = None
    if cls is None or not issubclass(cls, nnUNetTrainer):
        known = _subclass_names(nnUNetTrainer) | {"nnUNetTrainer"}
        raise ValueError(
            f"trainer={name}: no nnU-Net trainer class of that name in "
            f"nnunetv2.training.nnUNetTrainer or nnUNet_extTrainer{did_you_mean(name, known)}"
        )
    return cls


@functools.cache
def find_planner(name: str) -> type:
    """nnU-Net's experiment planner class `name`, found as `nnUNetv2_plan_experiment -pl`
    finds it; ValueError naming close matches when there is none."""
    import nnunetv2
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = os.path.join(nnunetv2.__path__[0], "experiment_planning")
    with quiet():
        cls = recursive_find_python_class(folder, name, "nnunetv2.experiment_planning")
    if not (isinstance(cls, type) and issubclass(cls, ExperimentPlanner)):
        known = _subclass_names(ExperimentPlanner) | {"ExperimentPlanner"}
        raise ValueError(
            f"planner={name}: no nnU-Net experiment planner class of that name in "
            f"nnunetv2.experiment_planning{did_you_mean(name, known)}"
        )
    return cls
