"""`nnunet`: the real nnU-Net v2 (`nnunetv2` package), planned and trained on the budget's slices.

For each run the budget's labeled slices are written as a 2D data set in nnU-Net raw layout
into run-scoped `nnUNet_raw` / `nnUNet_preprocessed` / `nnUNet_results` folders (a fresh
temporary folder, deleted after `fit` unless `keep_files`): every slice is its own case, a
2D NIfTI written with SimpleITK (nnU-Net reads it as a 1 × S × S image), `channel_names
{"0": "CT"}` (nnU-Net's CT normalisation). Then nnU-Net's own Python API does what
`nnUNetv2_plan_and_preprocess` does (fingerprint with its data set integrity check,
experiment planning, preprocessing of the `2d` configuration) and nnU-Net's trainer (the
class named by `trainer`, nnUNetTrainer by default: its loss with deep supervision, SGD with
Nesterov momentum and poly learning rate, patch sampling with foreground oversampling,
augmentation) trains on every labeled slice, followed by nnU-Net's final validation. Test
slices are predicted with `nnUNetPredictor`: each call's (N, 1, S, S) slices as one
N × S × S stack, which the `2d` configuration predicts slice by slice with its sliding window.

Schedule: the protocol's fine-tuning budget in samples, like every other method. nnU-Net's
batch comes from its plan (2 for a few slices, up to 5 % of the data set's voxels per batch),
so the epochs are set in `fit`: steps = samples ÷ planned batch (rounded up), in epochs of
`iterations_per_epoch` (nnU-Net's 250), the last epoch shortened to the remainder, so the
run sees exactly as many samples as a method with a fixed batch. The run reports (steps,
batch) to the runner (`ctx.finetune_steps`); `--set epochs=N` trains N full epochs and is
off-protocol unless that is the budget. `info.nnunet.schedule` records trainer, epochs,
iterations, batch, patch and samples; `info.nnunet.pseudo_dice` nnU-Net's own pseudo-Dice of
the last epoch and the Dice of its final validation.

Spacing: every slice, in training and at prediction, is handed to nnU-Net at one nominal
in-plane spacing (`NOMINAL_SPACING_MM`, 1 × 1 mm), so nnU-Net's plan has that target
spacing and it never resamples. The slices are already resized to the protocol's slice size
(the pixel grid every other method sees), and `predict` gets no spacing through the
`Method` interface: with the cases' true spacings (±12 % on the phantom) nnU-Net would
resample its training slices but not its test slices. One nominal spacing keeps training and
prediction on the same grid.

Mirroring: off by default (`mirroring = false`), in training and at test time, because flips
swap the left and right organs and no other method sees them; `--set mirroring=true` gives
nnU-Net's own default (its mirroring augmentation and test-time mirroring).

Splits: nnU-Net's default 5-fold cross-validation would leave labeled slices out of
training and needs five cases; the budget is the training set, so `fold = "all"` (the
default) trains on every slice (nnU-Net validates on the same slices). `fold = "0"` writes
one explicit split to `splits_final.json`: `val_fraction` of the slices (at least one)
held out, or, with fewer than two slices, val = train. The run record's `info.nnunet` says
which, with nnU-Net's plan (patch size, batch size, stages, target spacing).

nnU-Net reads `nnUNet_def_n_proc` once, when `nnunetv2.configuration` is first imported;
`processes` applies from the first nnU-Net run of a process on. Its own printing goes to
`nnunet.log` in the run folder (kept, with the folder, when a step fails).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk
import torch

from benchmark.compute import steps_for
from benchmark.config import fraction, non_negative, open_unit_interval, positive
from benchmark.errors import did_you_mean
from benchmark.method import Method, RunContext, SliceSet

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
    processes: int = positive(2)
    """Worker processes for fingerprinting, preprocessing and export (nnUNet_def_n_proc)."""
    augmentation_processes: int = non_negative(0)
    """Data augmentation workers (nnUNet_n_proc_DA); 0 = in the training process."""
    keep_files: bool = False
    """Keep the run's nnUNet_raw / _preprocessed / _results folder (its path is in the record)."""

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


# --- nnU-Net classes by name ----------------------------------------------------------------


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
        with _quiet():
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
    with _quiet():
        cls = recursive_find_python_class(folder, name, "nnunetv2.experiment_planning")
    if not (isinstance(cls, type) and issubclass(cls, ExperimentPlanner)):
        known = _subclass_names(ExperimentPlanner) | {"ExperimentPlanner"}
        raise ValueError(
            f"planner={name}: no nnU-Net experiment planner class of that name in "
            f"nnunetv2.experiment_planning{did_you_mean(name, known)}"
        )
    return cls


# --- schedule -------------------------------------------------------------------------------


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


# --- environment -------------------------------------------------------------------------


@contextlib.contextmanager
def nnunet_environment(root: Path, config: NNUNetConfig) -> Iterator[dict[str, Path]]:
    """Point nnU-Net's path variables at folders under `root` for the duration of the block.

    nnU-Net 2.8 reads `nnUNet_raw` / `_preprocessed` / `_results` and `nnUNet_n_proc_DA` when
    used, not at import; its spawned workers inherit them from `os.environ`. The previous
    values are restored on exit.
    """
    paths = {
        "nnUNet_raw": root / "nnUNet_raw",
        "nnUNet_preprocessed": root / "nnUNet_preprocessed",
        "nnUNet_results": root / "nnUNet_results",
    }
    values = {k: str(v) for k, v in paths.items()}
    # The planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails at 0: training
    # sets the configured value itself.
    values["nnUNet_n_proc_DA"] = str(max(1, config.augmentation_processes))
    values["nnUNet_def_n_proc"] = str(config.processes)
    values["nnUNet_compile"] = "false"
    saved = {k: os.environ.get(k) for k in values}
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    os.environ.update(values)
    try:
        yield paths
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _log_stdout(path: Path) -> Iterator[None]:
    """nnU-Net prints a lot; keep it out of the run's output, in a file."""
    with path.open("a") as f, contextlib.redirect_stdout(f):
        yield


# --- export --------------------------------------------------------------------------------


def _write_2d(array: np.ndarray, spacing: tuple[float, float], path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    # SimpleITK orders spacing (column, row); nnU-Net reverses it back to array order.
    image.SetSpacing((spacing[1], spacing[0]))
    sitk.WriteImage(image, str(path), useCompression=True)


def export_raw_dataset(labeled: SliceSet, raw_root: Path, num_classes: int) -> dict[str, str]:
    """Write the labeled slices as an nnU-Net raw 2D data set; returns case name → slice id.

    `raw_root/DATASET_NAME/{imagesTr,labelsTr,dataset.json}`; images float32 in [0, 1]
    (`{case}_0000.nii.gz`), labels uint8 (`{case}.nii.gz`), labels 0..num_classes-1 declared,
    every slice at `NOMINAL_SPACING_MM` (the spacing `predict` hands nnU-Net too).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = Path(raw_root) / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    images = labeled.images()[:, 0].numpy().astype(np.float32)
    labels = labeled.labels().numpy().astype(np.uint8)
    names = {}
    for i, slice_id in enumerate(labeled.ids):
        name = f"slice_{i:05d}"
        _write_2d(images[i], NOMINAL_SPACING_MM, folder / "imagesTr" / f"{name}_0000.nii.gz")
        _write_2d(labels[i], NOMINAL_SPACING_MM, folder / "labelsTr" / f"{name}.nii.gz")
        names[name] = slice_id
    generate_dataset_json(
        str(folder),
        channel_names={0: "CT"},
        labels={"background": 0, **{f"class_{k}": k for k in range(1, num_classes)}},
        num_training_cases=len(names),
        file_ending=".nii.gz",
        dataset_name=DATASET_NAME,
        description="labeled slices of one labelbench budget draw, one 2D case per slice",
        overwrite_image_reader_writer="SimpleITKIO",
        license="same as the source data set",
        converted_by="labelbench",
    )
    return names


def write_split(preprocessed: Path, names: list[str], val_fraction: float) -> dict[str, Any]:
    """One explicit split in `splits_final.json`; val = train when there are fewer than 2 cases."""
    names = sorted(names)
    if len(names) < 2:
        split = {"train": names, "val": names}
    else:
        n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
        split = {"train": names[:-n_val], "val": names[-n_val:]}
    (preprocessed / DATASET_NAME / "splits_final.json").write_text(json.dumps([split], indent=1))
    return {
        "fold": 0,
        "source": "splits_final.json (one split)",
        "n_train": len(split["train"]),
        "n_val": len(split["val"]),
        "val_is_train": split["val"] == split["train"],
    }


# --- training -----------------------------------------------------------------------------


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


class NNUNet(Method):
    """nnU-Net v2 (`nnunetv2`): its own planning, preprocessing, training and prediction of
    the `2d` configuration on the budget's slices, for the protocol's fine-tuning samples."""

    name = "nnunet"
    summary = (
        "nnU-Net v2 (nnunetv2 package), 2d configuration planned and trained on the budget's "
        "slices with its own trainer, for the protocol's fine-tuning samples; no mirroring"
    )
    Config = NNUNetConfig
    # No batch field: the batch is nnU-Net's plan, so fit sets the epochs (benchmark.compute).
    compute: ClassVar[dict[str, tuple[str, str | None]]] = {"finetune": ("epochs", None)}
    selection_rule = "final checkpoint (nnU-Net's own rule)"

    def fit(self, labeled: SliceSet, ctx: RunContext) -> None:
        cfg: NNUNetConfig = self.config
        root = Path(tempfile.mkdtemp(prefix="labelbench-nnunet-"))
        seconds: dict[str, float] = {}
        info: dict[str, Any] = {"work_dir": str(root) if cfg.keep_files else None}
        info["seconds"] = seconds
        ctx.info["nnunet"] = info
        step = "export"
        try:
            with nnunet_environment(root, cfg) as paths, _log_stdout(root / "nnunet.log"):
                with _timed(seconds, "export"):
                    names = export_raw_dataset(labeled, paths["nnUNet_raw"], ctx.num_classes)
                step = "planning and preprocessing"
                plans_id = self._plan_and_preprocess(cfg, ctx, seconds)
                pre = paths["nnUNet_preprocessed"]
                plans = json.loads((pre / DATASET_NAME / f"{plans_id}.json").read_text())
                info["plan"] = describe_plan(plans, plans_id, cfg.planner)
                if cfg.fold == "all":
                    fold: int | str = "all"
                    info["split"] = {
                        "fold": "all",
                        "source": "nnU-Net fold 'all' (train = val = every slice)",
                        "n_train": len(names),
                        "n_val": len(names),
                        "val_is_train": True,
                    }
                else:
                    fold = 0
                    info["split"] = write_split(pre, list(names), cfg.val_fraction)
                step = "training"
                self._train(cfg, ctx, plans, pre, fold, info)
        except Exception as exc:
            raise RuntimeError(
                f"nnU-Net {step} failed: {exc} (nnU-Net's log and files are kept in {root})"
            ) from exc
        if not cfg.keep_files:
            shutil.rmtree(root, ignore_errors=True)

    def _plan_and_preprocess(
        self, cfg: NNUNetConfig, ctx: RunContext, seconds: dict[str, float]
    ) -> str:
        """What `nnUNetv2_plan_and_preprocess -c 2d --verify_dataset_integrity` does."""
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprints,
            plan_experiments,
            preprocess,
        )

        task = ctx.progress.task("nnU-Net fingerprint, plan, preprocess", 3)
        with _timed(seconds, "fingerprint"):
            extract_fingerprints(
                [DATASET_ID],
                num_processes=cfg.processes,
                check_dataset_integrity=True,  # nnU-Net's verify_dataset_integrity
                clean=True,
                verbose=False,
                show_progress_bar=False,
            )
        task.advance()
        with _timed(seconds, "plan"):
            plans_id = plan_experiments([DATASET_ID], cfg.planner)
        task.advance()
        with _timed(seconds, "preprocess"):
            preprocess(
                [DATASET_ID],
                plans_id,
                configurations=(CONFIGURATION,),
                num_processes=(cfg.processes,),
                verbose=False,
                show_progress_bar=False,
            )
        task.advance()
        task.close()
        return plans_id

    def _train(
        self,
        cfg: NNUNetConfig,
        ctx: RunContext,
        plans: dict[str, Any],
        preprocessed: Path,
        fold: int | str,
        info: dict[str, Any],
    ) -> None:
        """What `nnUNetv2_train` does (one process), for the protocol's samples."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        seconds = info["seconds"]
        plan = info["plan"]
        if tuple(plan["spacing_mm"]) != NOMINAL_SPACING_MM:  # it would resample training only
            raise RuntimeError(
                f"nnU-Net planned spacing {plan['spacing_mm']} mm, the slices are at "
                f"{list(NOMINAL_SPACING_MM)} mm"
            )
        samples = ctx.training.finetune_samples if ctx.training else None
        schedule = plan_schedule(cfg, plan["batch_size"], samples)
        info["schedule"] = {
            "trainer": cfg.trainer,
            "epochs": schedule.epochs,
            "iterations_per_epoch": schedule.iterations_per_epoch,
            "last_epoch_iterations": schedule.last_epoch_iterations,
            "batch_size": schedule.batch_size,
            "patch_size": plan["patch_size"],
            "optimizer_steps": schedule.steps,
            "samples_seen": schedule.samples,
            "from": "protocol finetune_samples" if cfg.epochs is None else "--set epochs",
        }
        # restored when the environment block ends
        os.environ["nnUNet_n_proc_DA"] = str(cfg.augmentation_processes)  # noqa: SIM112
        dataset_json = json.loads((preprocessed / DATASET_NAME / "dataset.json").read_text())
        random.seed(ctx.seed)
        np.random.seed(ctx.seed % 2**32)
        torch.manual_seed(ctx.seed)
        trainer = trainer_class(cfg.trainer)(
            plans={**plans, "continue_training": False},
            configuration=CONFIGURATION,
            fold=fold,
            dataset_json=dataset_json,
            device=ctx.device,
        )
        task = ctx.progress.task("nnU-Net training (epochs)", schedule.epochs)
        trainer.configure(schedule, cfg, task)
        # Checkpoints only serve a kept folder: the model is used from memory.
        trainer.disable_checkpointing = not cfg.keep_files
        with _timed(seconds, "train"):
            trainer.run_training()
        task.close()
        ctx.finetune_steps = (schedule.steps, schedule.batch_size)
        info["final_train_loss"] = _finite(trainer.logger.get_value("train_losses", -1))
        info["pseudo_dice"] = {
            "last_epoch": _finite(trainer.logger.get_value("mean_fg_dice", -1)),
            "ema": _finite(trainer.logger.get_value("ema_fg_dice", -1)),
        }
        if cfg.final_validation:
            with _timed(seconds, "validation"):
                trainer.perform_actual_validation(False)
            summary = Path(trainer.output_folder) / "validation" / "summary.json"
            if summary.exists():
                dice = json.loads(summary.read_text())["foreground_mean"]["Dice"]
                info["pseudo_dice"]["final_validation"] = _finite(dice)
        trainer.set_deep_supervision_enabled(False)
        network = trainer.network.eval()
        predictor = nnUNetPredictor(
            tile_step_size=cfg.tile_step_size,
            use_gaussian=True,
            use_mirroring=cfg.mirroring and cfg.test_time_mirroring,
            perform_everything_on_device=ctx.device.type == "cuda",
            device=ctx.device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        predictor.manual_initialization(
            network,
            trainer.plans_manager,
            trainer.configuration_manager,
            [{k: v.detach().clone() for k, v in network.state_dict().items()}],
            trainer.dataset_json,
            type(trainer).__name__,
            trainer.inference_allowed_mirroring_axes,
        )
        self.predictor = predictor
        axes = trainer.inference_allowed_mirroring_axes
        info["mirroring"] = {
            "axes": None if axes is None else list(axes),
            "test_time": predictor.use_mirroring and axes is not None,
        }

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        stack = images[:, 0].cpu().numpy().astype(np.float32)[None]  # (1, N, S, S)
        # The training slices' spacing (the plan's): nnU-Net does not resample. The first
        # axis is the slice axis of a 2D stack, never resampled; SimpleITKIO reads 2D images
        # with spacing 999 there.
        props = {"spacing": [999.0, *NOMINAL_SPACING_MM]}
        with _quiet():
            seg = self.predictor.predict_single_npy_array(stack, props)
        return torch.from_numpy(np.asarray(seg, dtype=np.int64))


@contextlib.contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = round(time.perf_counter() - t, 2)


def _finite(value: Any) -> float | None:
    """A float for the run record (JSON has no NaN: nnU-Net reports NaN when nothing is found)."""
    v = float(value)
    return round(v, 4) if np.isfinite(v) else None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with open(os.devnull, "w") as f, contextlib.redirect_stdout(f):
        yield
