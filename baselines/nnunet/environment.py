"""Running nnU-Net inside a run: its path variables pointed at run-scoped folders, and its
printing kept out of the run's output."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from baselines.nnunet.config import NNUNetConfig


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
def log_stdout(path: Path) -> Iterator[None]:
    """nnU-Net prints a lot; keep it out of the run's output, in a file."""
    with path.open("a") as f, contextlib.redirect_stdout(f):
        yield


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Drop what nnU-Net prints (its class lookups and predictor)."""
    with open(os.devnull, "w") as f, contextlib.redirect_stdout(f):
        yield
