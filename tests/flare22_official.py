"""The official FLARE22 evaluation loop, rewritten from its public rules as a reference.

The official script is FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py in the public FLARE
repository (JunMa11/FLARE), with its SurfaceDice.py, a copy of DeepMind's surface-distance.
Its 2024 revision is the one FLARE24 scores the same 13 organs with
(FLARE24/T2andT3_FLARE24_DSC_NSD_Eval.py, March 2024). This module follows their rules and
the order of their steps, not their text:

- the volumes are the files' voxel arrays as stored (no reorientation), the spacing is the
  label file's header zooms (float32);
- per label, the script's branches in its order, each counting the organ's voxels again as
  it does (`evaluate_case` costs what the script's loop costs; `perf/bench_metrics.py` times
  it): absent from both → DSC = NSD = 1; absent from the ground truth only → 0, 0; from the
  2024 revision on, absent from the prediction only → 0, 0; else for aorta, IVC and
  esophagus both masks are cut to ``[z_lower:z_upper]`` of the ground truth's slice indices
  along the file's third axis (its last slice left out); DSC on the (cut) masks; from the
  2024 revision on, NSD = 0 where DSC < 0.2 (FLARE23's script gates at 0.1); else NSD from
  ``compute_surface_distances`` and ``compute_surface_dice_at_tolerance``.

Surface distances are DeepMind's own (`surface-distance` 0.1, a dev dependency: DeepMind's
later release of the code that the script's SurfaceDice.py copies, with the same 3D
algorithm; ``surface="deepmind"``, the default). ``surface="rewrite"`` uses this module's
rewrite of them from their rules, which `tests/test_conformance.py` holds to the package:

- ``compute_surface_distances``: crop both masks to the bounding box of their union, zero-pad
  one voxel, neighbourhood codes by correlating with the 2x2x2 kernel [[[128, 64], [32, 16]],
  [[8, 4], [2, 1]]], surfels where the code is neither 0 nor 255, each with the area of its
  code from the marching-cubes normal table scaled by the spacing, distances from one
  surface's surfels to the other's by ``scipy.ndimage.distance_transform_edt`` of the other's
  complement with ``sampling=spacing`` (float64), ``inf`` when the other has no surfels;
- ``compute_surface_dice_at_tolerance``: surfel area with ``distance <= tolerance`` (float64)
  on both sides over the total surfel area of both.

The rewrite's normal table is DeepMind's, taken from MONAI's copy of it (not from
labelbench), and scaled in float64 in the official order.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping
from functools import cache
from types import ModuleType, SimpleNamespace

import numpy as np
from scipy import ndimage

ZRANGE_LABELS = (5, 6, 10)
"""Aorta, IVC and esophagus: scored only on the ground truth's slices."""
TOLERANCE_MM = {1: 5, 2: 3, 3: 3, 4: 5, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 3, 11: 5, 12: 7, 13: 3}
"""The official script's `label_tolerance`, by label id."""
KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])


@cache
def _normals() -> np.ndarray:
    """DeepMind's neighbour-code → surfel normals table, (256, 4, 3) float64, zero-padded."""
    from monai.metrics.utils import _get_neighbour_code_to_normals_table

    return _get_neighbour_code_to_normals_table().numpy().astype(np.float64)


def _areas(spacing_mm) -> np.ndarray:
    table = np.zeros(256)
    for code, normals in enumerate(_normals()):
        total = 0.0
        for n in normals:
            v = np.zeros(3)
            v[0] = n[0] * spacing_mm[1] * spacing_mm[2]
            v[1] = n[1] * spacing_mm[0] * spacing_mm[2]
            v[2] = n[2] * spacing_mm[0] * spacing_mm[1]
            total += np.linalg.norm(v)
        table[code] = total
    return table


def compute_surface_distances(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing_mm) -> dict:
    union = mask_gt | mask_pred
    if not union.any():
        empty = np.array([])
        return {
            "distances_gt_to_pred": empty,
            "distances_pred_to_gt": empty,
            "surfel_areas_gt": empty,
            "surfel_areas_pred": empty,
        }
    lo = np.array([np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != i))).min()
                   for i in range(3)])  # fmt: skip
    hi = np.array([np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != i))).max()
                   for i in range(3)])  # fmt: skip
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
    crop_gt = np.zeros(hi - lo + 2, np.uint8)
    crop_pred = np.zeros(hi - lo + 2, np.uint8)
    crop_gt[:-1, :-1, :-1] = mask_gt[box]
    crop_pred[:-1, :-1, :-1] = mask_pred[box]
    code_gt = ndimage.correlate(crop_gt, KERNEL, mode="constant", cval=0)
    code_pred = ndimage.correlate(crop_pred, KERNEL, mode="constant", cval=0)
    borders_gt = (code_gt != 0) & (code_gt != 255)
    borders_pred = (code_pred != 0) & (code_pred != 255)
    if borders_gt.any():
        dist_gt = ndimage.distance_transform_edt(~borders_gt, sampling=spacing_mm)
    else:
        dist_gt = np.inf * np.ones(borders_gt.shape)
    if borders_pred.any():
        dist_pred = ndimage.distance_transform_edt(~borders_pred, sampling=spacing_mm)
    else:
        dist_pred = np.inf * np.ones(borders_pred.shape)
    areas = _areas(spacing_mm)
    gt_to_pred, areas_gt = dist_pred[borders_gt], areas[code_gt][borders_gt]
    pred_to_gt, areas_pred = dist_gt[borders_pred], areas[code_pred][borders_pred]
    # Sorted by distance as the official SurfaceDice.py does it (Python's sorted over
    # (distance, area) tuples): NSD does not depend on the order, its cost is the script's.
    if len(gt_to_pred):
        gt_to_pred, areas_gt = np.array(sorted(zip(gt_to_pred, areas_gt, strict=True))).T
    if len(pred_to_gt):
        pred_to_gt, areas_pred = np.array(sorted(zip(pred_to_gt, areas_pred, strict=True))).T
    return {
        "distances_gt_to_pred": gt_to_pred,
        "distances_pred_to_gt": pred_to_gt,
        "surfel_areas_gt": areas_gt,
        "surfel_areas_pred": areas_pred,
    }


def compute_surface_dice_at_tolerance(distances: dict, tolerance_mm: float) -> float:
    areas_gt, areas_pred = distances["surfel_areas_gt"], distances["surfel_areas_pred"]
    overlap_gt = np.sum(areas_gt[distances["distances_gt_to_pred"] <= tolerance_mm])
    overlap_pred = np.sum(areas_pred[distances["distances_pred_to_gt"] <= tolerance_mm])
    return float((overlap_gt + overlap_pred) / (np.sum(areas_gt) + np.sum(areas_pred)))


def compute_dice_coefficient(mask_gt: np.ndarray, mask_pred: np.ndarray) -> float:
    volume_sum = mask_gt.sum() + mask_pred.sum()
    if volume_sum == 0:
        return float("nan")
    return float(2 * (mask_gt & mask_pred).sum() / volume_sum)


SURFACES = ("deepmind", "rewrite")


class _NumpyWithAliases(ModuleType):
    """NumPy as surface-distance 0.1 sees it: with `np.Inf` and `np.NaN` (for a mask without
    surfels, and for the DSC of two empty masks), which NumPy 2 removed; every other name is
    NumPy's own. Given to that package alone, so that no other code finds the aliases."""

    Inf = np.inf
    NaN = np.nan

    def __getattr__(self, name: str):
        return getattr(np, name)


@cache
def _deepmind() -> SimpleNamespace:
    """DeepMind's surface-distance functions, as the official script calls them. Its
    `scipy.ndimage.filters` and `.morphology` imports are deprecated namespaces of the same
    functions; their warnings are silenced for it."""
    from surface_distance import metrics

    metrics.np = _NumpyWithAliases("numpy")

    def quiet(fn: Callable) -> Callable:
        def call(*args):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return fn(*args)

        return call

    return SimpleNamespace(
        compute_surface_distances=quiet(metrics.compute_surface_distances),
        compute_surface_dice_at_tolerance=metrics.compute_surface_dice_at_tolerance,
        compute_dice_coefficient=metrics.compute_dice_coefficient,
    )


def surface_functions(surface: str = "deepmind") -> SimpleNamespace:
    """`compute_surface_distances`, `compute_surface_dice_at_tolerance` and
    `compute_dice_coefficient`: DeepMind's, or this module's rewrite of them."""
    if surface == "deepmind":
        return _deepmind()
    if surface == "rewrite":
        return SimpleNamespace(
            compute_surface_distances=compute_surface_distances,
            compute_surface_dice_at_tolerance=compute_surface_dice_at_tolerance,
            compute_dice_coefficient=compute_dice_coefficient,
        )
    raise ValueError(f"surface must be one of {SURFACES}, not {surface!r}")


def evaluate_case(
    gt_data: np.ndarray,
    seg_data: np.ndarray,
    spacing,
    tolerances: Mapping[int, float] = TOLERANCE_MM,
    zrange_labels: Collection[int] = ZRANGE_LABELS,
    min_dsc: float = 0.2,
    surface: str = "deepmind",
) -> dict[int, tuple[float, float]]:
    """(DSC, NSD) per label of one case in the files' own voxel order, as the official loop
    computes them (2024 revision; ``min_dsc=0`` for the 2022 original). NaN where the official
    loop divides 0 by 0 (a z-range organ on a single ground-truth slice)."""
    sd = surface_functions(surface)
    out: dict[int, tuple[float, float]] = {}
    for i, tolerance in tolerances.items():
        if np.sum(gt_data == i) == 0 and np.sum(seg_data == i) == 0:
            out[i] = (1.0, 1.0)
        elif np.sum(gt_data == i) == 0 and np.sum(seg_data == i) > 0:
            out[i] = (0.0, 0.0)
        elif min_dsc > 0 and np.sum(gt_data == i) > 0 and np.sum(seg_data == i) == 0:
            out[i] = (0.0, 0.0)  # the 2024 revision's branch, before any cut
        else:
            if i in zrange_labels:
                z = np.where(np.uint8(gt_data == i) > 0)[2]
                z_lower, z_upper = np.min(z), np.max(z)
                gt_i = gt_data[:, :, z_lower:z_upper] == i
                seg_i = seg_data[:, :, z_lower:z_upper] == i
            else:
                gt_i, seg_i = gt_data == i, seg_data == i
            dsc = float(sd.compute_dice_coefficient(gt_i, seg_i))
            if dsc < min_dsc:
                nsd = 0.0
            elif not gt_i.any() and not seg_i.any():
                nsd = float("nan")  # 0 / 0 in the script, with a warning
            else:
                distances = sd.compute_surface_distances(gt_i, seg_i, spacing)
                nsd = float(sd.compute_surface_dice_at_tolerance(distances, tolerance))
            out[i] = (dsc, nsd)
    return out


def float32_ties(gt_data: np.ndarray, seg_data: np.ndarray, spacing, label: int) -> int:
    """Surfels of one label whose distance exceeds its tolerance in float64 but not after
    rounding to float32: where a float32 comparison (MONAI's) and the official one differ."""
    distances = _deepmind().compute_surface_distances(gt_data == label, seg_data == label, spacing)
    tol = TOLERANCE_MM[label]
    d = np.concatenate([distances["distances_gt_to_pred"], distances["distances_pred_to_gt"]])
    return int(np.count_nonzero((d > tol) & (d.astype(np.float32) <= np.float32(tol))))
