"""`NNUNet`, the `nnunet` method: export, plan and preprocess, train and predict through
nnU-Net's own Python API (see the package docstring)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from baselines.nnunet.config import (
    CONFIGURATION,
    DATASET_ID,
    DATASET_NAME,
    NOMINAL_SPACING_MM,
    NNUNetConfig,
)
from baselines.nnunet.environment import log_stdout, nnunet_environment, quiet
from baselines.nnunet.export import export_raw_dataset, write_split
from baselines.nnunet.trainer import describe_plan, plan_schedule, trainer_class
from benchmark.method import Method, RunContext, SliceSet


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
            with nnunet_environment(root, cfg) as paths, log_stdout(root / "nnunet.log"):
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
        slices = images[:, 0].cpu().numpy().astype(np.float32)  # (N, S, S)
        # The training slices' spacing (the plan's): nnU-Net does not resample. The first
        # axis is the slice axis of a 2D stack, never resampled; SimpleITKIO reads 2D images
        # with spacing 999 there.
        spacing = [999.0, *NOMINAL_SPACING_MM]
        labels = np.empty(slices.shape, dtype=np.int64)
        with quiet():
            # One case per slice, as each labeled slice was one case in training. nnU-Net
            # crops a case to its nonzero bounding box: a stack of slices would be cropped to
            # their union and tiled over air the network never saw beside a slice, and the
            # prediction of a slice would depend on which slices came with it.
            for i, image in enumerate(slices):
                props = {"spacing": spacing}  # nnU-Net writes its crop into it: one per call
                seg = self.predictor.predict_single_npy_array(image[None, None], props)
                labels[i] = np.asarray(seg)[0]
        return torch.from_numpy(labels)


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
