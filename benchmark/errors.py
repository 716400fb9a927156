"""User-facing errors. The CLI turns each into one red line and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class LabelbenchError(Exception):
    """Base of every error caused by the user's input (files, names, options)."""


class DatasetError(LabelbenchError):
    """A data set file or folder is missing, unreadable or inconsistent."""


class ProtocolError(LabelbenchError):
    """A protocol file is unknown or invalid."""


class UnknownMethodError(LabelbenchError):
    """No installed method has this name."""


class PluginError(LabelbenchError):
    """An installed method cannot be used as registered: its entry-point name is taken by
    another distribution, or its entry point or class is broken."""


class BudgetError(LabelbenchError):
    """A budget is unknown or cannot be drawn from the train pool."""


class ConfigError(LabelbenchError):
    """A `--set key=value` override does not fit the method's config."""


class StoreError(LabelbenchError):
    """The results store cannot be opened or is inconsistent."""


class WeightsError(LabelbenchError):
    """A pretrained weights file a metric needs (Inception for FID) is missing or unreadable."""


class PredictionError(LabelbenchError):
    """A method's `predict` returned something other than the label maps it promises (a run
    records it as failed, never scores it), or its `sample` non-finite images."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean: a, b?)' for the closest names, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def check_output_dir(folder: Path | None, option: str) -> None:
    """Refuse, before any work, an output folder (given as `option`) that is a file or lies
    under one: it would otherwise fail only once the work is done."""
    if folder is not None and not (existing := nearest_existing(folder)).is_dir():
        raise ConfigError(f"{option} {folder}: {existing} is a file; give a folder")


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists: where an output folder would be made. Not
    a folder: a file stands in the way. Checked before any work, for one-line errors."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing
