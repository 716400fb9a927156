"""`nnunet`: the real nnU-Net v2 (`nnunetv2` package), planned and trained on the budget's slices.

For each run the budget's labeled slices are written as a 2D data set in nnU-Net raw layout
into run-scoped `nnUNet_raw` / `nnUNet_preprocessed` / `nnUNet_results` folders (a fresh
temporary folder, deleted after `fit` unless `keep_files`): every slice is its own case,
a 2D NIfTI written with SimpleITK (nnU-Net reads it as a 1 × S × S image with spacing
(999 × max, sx, sy)), in-plane spacing kept (the case's voxel spacing × its in-plane size /
slice size, in mm), `channel_names {"0": "CT"}` (nnU-Net's CT normalisation). Then nnU-Net's
own Python API does what `nnUNetv2_plan_and_preprocess` does (fingerprint with its data set
integrity check, experiment planning, preprocessing of the `2d` configuration) and a
trainer subclass (`nnUNetTrainerLabelbench`: nnU-Net's default trainer, loss, augmentation,
poly-LR SGD, with `epochs` × `iterations_per_epoch` from the config) trains on every labeled
slice, followed by nnU-Net's final validation. Test slices are predicted with
`nnUNetPredictor`: each call's (N, 1, S, S) slices as one N × S × S stack, which the `2d`
configuration predicts slice by slice with its sliding window and test-time mirroring.

Splits: nnU-Net's default 5-fold cross-validation would leave labeled slices out of
training and needs five cases; the budget is the training set, so `fold = "all"` (the
default) trains on every slice (nnU-Net validates on the same slices). `fold = "0"` writes
one explicit split to `splits_final.json`: `val_fraction` of the slices (at least one)
held out, or, with fewer than two slices, val = train. The run record's `info.nnunet` says
which, with nnU-Net's plan (patch size, batch size, stages, target spacing).

Slices reach `predict` without their spacing (the `Method` interface gives images only), so
they are handed to nnU-Net at the plan's target spacing, i.e. without resampling; the
training slices, whose spacing is known, are resampled to it by nnU-Net as usual. On the
phantom the in-plane spacings differ by up to 25 % between cases, well inside nnU-Net's
scale augmentation (0.7-1.4).

nnU-Net reads `nnUNet_def_n_proc` once, when `nnunetv2.configuration` is first imported;
`processes` applies from the first nnU-Net run of a process on. Its own printing goes to
`nnunet.log` in the run folder (kept, with the folder, when a step fails).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from benchmark.config import fraction, non_negative, open_unit_interval, positive
from benchmark.method import Method, RunContext, SliceSet

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID:03d}_Labelbench"
CONFIGURATION = "2d"


@dataclass(frozen=True)
class NNUNetConfig:
    """nnU-Net v2 on the budget's slices; everything not listed here is nnU-Net's own choice.

    The default schedule (10 epochs × 30 iterations = 300 optimizer steps of the planned
    batch, 2 on the phantom: 600 patches) is sized for CPUs; nnU-Net's own is 1000 × 250. It
    is not matched to the protocol's fine-tuning budget, so nnunet runs are off-protocol.
    """

    epochs: int = positive(10)
    """Trainer epochs (nnU-Net's default: 1000)."""
    iterations_per_epoch: int = positive(30)
    """Training iterations per epoch (nnU-Net's default: 250)."""
    val_iterations_per_epoch: int = positive(5)
    """Validation iterations per epoch, for nnU-Net's pseudo-Dice log (nnU-Net's default: 50)."""
    fold: str = "all"
    """"all": train on every labeled slice; "0": one explicit split in splits_final.json."""
    val_fraction: float = open_unit_interval(0.2)
    """With fold "0": share of the slices held out for validation (at least one)."""
    planner: str = "ExperimentPlanner"
    """nnU-Net experiment planner class (e.g. nnUNetPlannerResEncM for the ResEnc presets)."""
    mirroring: bool = True
    """nnU-Net's mirroring augmentation and test-time mirroring (its default; flips swap left
    and right organs, which the other methods never see)."""
    test_time_mirroring: bool = True
    """Mirroring at prediction (nnU-Net's TTA; `nnUNetv2_predict --disable_tta` turns it off)."""
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
        if min(self.epochs, self.iterations_per_epoch, self.val_iterations_per_epoch) < 1:
            raise ValueError("epochs and iterations per epoch must be at least 1")


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


def slice_spacing(labeled: SliceSet, i: int) -> tuple[float, float]:
    """In-plane spacing (mm) of slice `i` along its two array axes, after resizing to S × S."""
    store = labeled.store
    row = int(labeled.rows[i])
    case = store.cases[store.case_ids[store.slice_case[row]]]
    s = labeled.slice_size
    return (
        float(case["spacing"][0]) * case["shape"][0] / s,
        float(case["spacing"][1]) * case["shape"][1] / s,
    )


def _write_2d(array: np.ndarray, spacing: tuple[float, float], path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    # SimpleITK orders spacing (column, row); nnU-Net reverses it back to array order.
    image.SetSpacing((spacing[1], spacing[0]))
    sitk.WriteImage(image, str(path), useCompression=True)


def export_raw_dataset(labeled: SliceSet, raw_root: Path, num_classes: int) -> dict[str, str]:
    """Write the labeled slices as an nnU-Net raw 2D data set; returns case name → slice id.

    `raw_root/DATASET_NAME/{imagesTr,labelsTr,dataset.json}`; images float32 in [0, 1]
    (`{case}_0000.nii.gz`), labels uint8 (`{case}.nii.gz`), labels 0..num_classes-1 declared.
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
        spacing = slice_spacing(labeled, i)
        _write_2d(images[i], spacing, folder / "imagesTr" / f"{name}_0000.nii.gz")
        _write_2d(labels[i], spacing, folder / "labelsTr" / f"{name}.nii.gz")
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
def trainer_class() -> type:
    """`nnUNetTrainerLabelbench`, defined on first use so nnunetv2 is imported late."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerLabelbench(nnUNetTrainer):
        """nnU-Net's default trainer; `configure` sets the schedule, mirroring and progress."""

        def configure(self, config: NNUNetConfig, task: Any = None) -> None:
            self.num_epochs = config.epochs
            self.num_iterations_per_epoch = config.iterations_per_epoch
            self.num_val_iterations_per_epoch = config.val_iterations_per_epoch
            self.save_every = max(config.epochs, 1)
            self.mirroring = config.mirroring
            self.task = task

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            rot, dummy_2d, patch, mirror_axes = (
                super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            )
            if not getattr(self, "mirroring", True):  # as nnUNetTrainerNoMirroring
                mirror_axes = None
                self.inference_allowed_mirroring_axes = None
            return rot, dummy_2d, patch, mirror_axes

        def on_epoch_end(self):
            super().on_epoch_end()
            if getattr(self, "task", None) is not None:
                self.task.advance(loss=float(self.logger.get_value("train_losses", step=-1)))

    return nnUNetTrainerLabelbench


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
    the `2d` configuration on the budget's slices, with a short trainer set by the config."""

    name = "nnunet"
    summary = (
        "nnU-Net v2 (nnunetv2 package), 2d configuration planned and trained on the budget's "
        "slices; short trainer (epochs x iterations from the config)"
    )
    Config = NNUNetConfig
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
        """What `nnUNetv2_train` does (one process), with the trainer class given directly."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        seconds = info["seconds"]
        # restored when the environment block ends
        os.environ["nnUNet_n_proc_DA"] = str(cfg.augmentation_processes)  # noqa: SIM112
        dataset_json = json.loads((preprocessed / DATASET_NAME / "dataset.json").read_text())
        random.seed(ctx.seed)
        np.random.seed(ctx.seed % 2**32)
        torch.manual_seed(ctx.seed)
        trainer = trainer_class()(
            plans={**plans, "continue_training": False},
            configuration=CONFIGURATION,
            fold=fold,
            dataset_json=dataset_json,
            device=ctx.device,
        )
        task = ctx.progress.task("nnU-Net training (epochs)", cfg.epochs)
        trainer.configure(cfg, task)
        with _timed(seconds, "train"):
            trainer.run_training()
        task.close()
        info["trainer"] = type(trainer).__name__
        info["optimizer_steps"] = cfg.epochs * cfg.iterations_per_epoch
        info["final_train_loss"] = _finite(trainer.logger.get_value("train_losses", -1))
        if cfg.final_validation:
            with _timed(seconds, "validation"):
                trainer.perform_actual_validation(False)
            summary = Path(trainer.output_folder) / "validation" / "summary.json"
            if summary.exists():
                dice = json.loads(summary.read_text())["foreground_mean"]["Dice"]
                info["nnunet_validation_dice"] = _finite(dice)
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
        # Test slices come without spacing: give them the plan's, so nnU-Net does not resample.
        spacing = [float(s) for s in trainer.configuration_manager.spacing]
        if len(spacing) == 2:
            spacing = [999.0 * max(spacing), *spacing]  # as SimpleITKIO reads a 2D image
        self.spacing = spacing
        info["predict_spacing_mm"] = [round(s, 4) for s in spacing[1:]]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        stack = images[:, 0].cpu().numpy().astype(np.float32)[None]  # (1, N, S, S)
        props = {"spacing": self.spacing}
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
