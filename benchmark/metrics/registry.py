"""Declared per-organ metrics: one module per metric, listed by name in the protocol.

A metric is the module `benchmark/metrics/<name>.py` that defines ``METRIC = Metric(...)``:
its name, display name, direction, whether it needs the voxel spacing, the protocol keys it
reads from `[metrics]` and a per-organ compute. The protocol lists the metrics it scores
(`[metrics] names = ["dsc", "nsd"]`); the runner, the store (long format: one row per run,
case, organ and metric), the report, the CLI and the sweep loop over that list, so adding a
metric is one new file and one protocol line.

Every metric sees the same organ crops (`OrganPair`): the FLARE22 rules that decide *what*
is scored (the z-range cut of aorta, IVC and esophagus) are applied once, before any metric,
in `benchmark.metrics.segmentation.score_case`; the rules of what an absent organ scores are
the metric's own.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from benchmark.errors import did_you_mean

NOT_METRICS = frozenset({"registry", "segmentation", "generative"})
"""Modules of `benchmark.metrics` that declare no per-organ metric."""

DEFAULT_METRICS = ("dsc", "nsd")
"""The metrics of a protocol whose `[metrics]` table has no `names`."""

GENERAL_KEYS = frozenset({"names", "zrange_labels"})
"""`[metrics]` keys that belong to no single metric."""


@dataclass(frozen=True)
class OrganPair:
    """One organ of one case as every metric sees it.

    `pred` and `gt` are boolean crops of one shape holding every scored voxel of the organ
    in both volumes (either may be empty, never both); axes (X, Y, Z) as the volumes.
    """

    label: int
    pred: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, float, float]
    """Voxel size in mm per axis."""
    extent_mm: float
    """Diagonal of the whole volume in mm: the largest distance two of its voxels can have."""


def _no_params(table: Mapping[str, Any], labels: Mapping[int, str]) -> None:
    return None


@dataclass(frozen=True)
class Metric:
    """A per-organ metric; `compute(organ, params)` returns one float, never NaN."""

    name: str
    display: str
    """Column header in reports and the CLI ("DSC", "HD95 (mm)")."""
    higher_is_better: bool
    needs_spacing: bool
    compute: Callable[[OrganPair, Any], float]
    both_absent: float
    """The score of an organ absent from both prediction and ground truth."""
    params: Callable[[Mapping[str, Any], Mapping[int, str]], Any] = _no_params
    """Parse (and validate, raising ValueError) the metric's keys of the protocol's
    `[metrics]` table; the result is passed to `compute`."""
    keys: tuple[str, ...] = ()
    """The `[metrics]` keys `params` reads."""
    doc: str = ""
    """One line for the README and `bench evaluate --help`."""


def metric_modules() -> list[str]:
    """Names of the modules of this package that may declare a metric."""
    import benchmark.metrics as package

    return sorted(
        m.name
        for m in pkgutil.iter_modules(package.__path__)
        if m.name not in NOT_METRICS and not m.name.startswith("_")
    )


@cache
def get_metric(name: str) -> Metric:
    """The metric declared by `benchmark/metrics/<name>.py`; ValueError when there is none."""
    known = metric_modules()
    if name not in known:
        raise ValueError(
            f"unknown metric {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}"
        )
    metric = getattr(importlib.import_module(f"benchmark.metrics.{name}"), "METRIC", None)
    if not isinstance(metric, Metric) or metric.name != name:
        raise ValueError(f"benchmark/metrics/{name}.py declares no METRIC named {name!r}")
    return metric


def display_name(name: str) -> str:
    """A metric's display name, or its name in capitals when no such module is installed
    (a store may hold rows of a metric this checkout lacks)."""
    try:
        return get_metric(name).display
    except ValueError:
        return name.upper()


def higher_is_better(name: str) -> bool:
    try:
        return get_metric(name).higher_is_better
    except ValueError:
        return True


@dataclass(frozen=True)
class Scoring:
    """How a protocol scores a case: its metrics in order, their parameters, the z-range rule."""

    metrics: tuple[Metric, ...]
    params: dict[str, Any] = field(default_factory=dict)
    zrange_labels: tuple[int, ...] = ()
    """Labels scored only inside the ground truth's z-range (FLARE: aorta 5, IVC 6,
    esophagus 10), its last slice in the file's own order left out."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    @classmethod
    def parse(cls, table: Mapping[str, Any], labels: Mapping[int, str]) -> Scoring:
        """The protocol's `[metrics]` table; ValueError naming the key that is wrong."""
        if not isinstance(table, Mapping):
            raise ValueError("[metrics] must be a table")
        names = table.get("names", list(DEFAULT_METRICS))
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError("metrics.names must be a non-empty list of metric names")
        if len(set(names)) != len(names):
            raise ValueError(f"metrics.names lists a metric twice: {names}")
        if "dsc" not in names:
            raise ValueError(
                "metrics.names must include 'dsc': validation, selection and the sanity gate use it"
            )
        metrics = tuple(get_metric(n) for n in names)
        used = GENERAL_KEYS.union(*(m.keys for m in metrics))
        unused = sorted(set(table) - used)
        if unused:
            raise ValueError(
                f"metrics.{unused[0]} is not read by the declared metrics ({', '.join(names)}); "
                f"known keys: {', '.join(sorted(used))}"
            )
        zrange = tuple(int(i) for i in table.get("zrange_labels", ()))
        if not set(zrange) <= set(labels):
            raise ValueError(f"metrics.zrange_labels {list(zrange)} are not all label ids")
        params = {m.name: m.params(table, labels) for m in metrics}
        return cls(metrics, params, zrange)

    @classmethod
    def of(cls, names: Sequence[str], zrange_labels: Sequence[int] = (), **params: Any) -> Scoring:
        """A scoring from metric names and parsed parameters by metric name (tests, scripts)."""
        return cls(tuple(get_metric(n) for n in names), dict(params), tuple(zrange_labels))
