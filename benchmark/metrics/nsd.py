"""NSD: normalized surface Dice of one organ at its tolerance, as FLARE22 scores it.

Protocol keys (`[metrics]`): `nsd_tolerance_mm`, the tolerance in mm of every label id, and
`nsd_min_dsc`, the DSC below which NSD is 0 without being computed. The gate is that of the
official script's 2024 revision (FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py, the loop FLARE24
scores the same 13 organs with, FLARE24/T2andT3_FLARE24_DSC_NSD_Eval.py: ``if DSC_i < 0.2:
NSD_i = 0``; FLARE23's script gates at 0.1); the 2022 original has none, which 0 reproduces.
1 when the organ is absent from both volumes, 0 when it is in one only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchmark.metrics.registry import Metric, OrganPair
from benchmark.metrics.segmentation import cropped_surface_dice, dice


@dataclass(frozen=True)
class NSDParams:
    tolerance_mm: dict[int, float]
    """NSD tolerance in mm per label id."""
    min_dsc: float = 0.2
    """NSD is 0 where DSC is below this (0: always computed, the 2022 script)."""


def _params(table: Mapping[str, Any], labels: Mapping[int, str]) -> NSDParams:
    if "nsd_tolerance_mm" not in table:
        raise ValueError("metrics.nsd_tolerance_mm is missing (NSD needs a tolerance per label)")
    tol = {int(k): float(v) for k, v in table["nsd_tolerance_mm"].items()}
    if set(tol) != set(labels):
        raise ValueError("metrics.nsd_tolerance_mm must give a tolerance for every label id")
    if any(v <= 0 for v in tol.values()):
        raise ValueError("metrics.nsd_tolerance_mm values must be positive mm")
    gate = table.get("nsd_min_dsc", 0.2)
    if isinstance(gate, bool) or not isinstance(gate, int | float) or not 0 <= gate <= 1:
        raise ValueError(f"metrics.nsd_min_dsc must be in [0, 1], not {gate!r}")
    return NSDParams(tol, float(gate))


def _compute(organ: OrganPair, params: NSDParams) -> float:
    if not (organ.pred.any() and organ.gt.any()):
        return 0.0
    if params.min_dsc > 0 and dice(organ.pred, organ.gt) < params.min_dsc:
        return 0.0
    return cropped_surface_dice(
        organ.pred, organ.gt, organ.spacing, params.tolerance_mm[organ.label]
    )


METRIC = Metric(
    name="nsd",
    display="NSD",
    higher_is_better=True,
    needs_spacing=True,
    compute=_compute,
    both_absent=1.0,
    params=_params,
    keys=("nsd_tolerance_mm", "nsd_min_dsc"),
    doc="normalized surface Dice at the organ's tolerance (0-1)",
)
