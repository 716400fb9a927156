"""The official FLARE22 evaluation loop, rewritten from its public rules as a reference.

The official script is FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py in the public FLARE
repository (JunMa11/FLARE), with its SurfaceDice.py, a copy of DeepMind's surface-distance.
This module follows their rules step by step, not their text:

- the volumes are the files' voxel arrays as stored (no reorientation), the spacing is the
  label file's header zooms (float32);
- per label: absent from both → DSC = NSD = 1; absent from the ground truth only → 0, 0; else
  for aorta, IVC and esophagus both masks are cut to ``[z_lower:z_upper]`` of the ground
  truth's slice indices along the file's third axis (its last slice left out); DSC on the
  (cut) masks; from the 2024 revision on, NSD = 0 where DSC < 0.2; else NSD from
  ``compute_surface_distances`` and ``compute_surface_dice_at_tolerance``;
- ``compute_surface_distances``: crop both masks to the bounding box of their union, zero-pad
  one voxel, neighbourhood codes by correlating with the 2x2x2 kernel [[[128, 64], [32, 16]],
  [[8, 4], [2, 1]]], surfels where the code is neither 0 nor 255, each with the area of its
  code from the marching-cubes normal table scaled by the spacing, distances from one
  surface's surfels to the other's by ``scipy.ndimage.distance_transform_edt`` of the other's
  complement with ``sampling=spacing`` (float64), ``inf`` when the other has no surfels;
- ``compute_surface_dice_at_tolerance``: surfel area with ``distance <= tolerance`` (float64)
  on both sides over the total surfel area of both.

The normal table is DeepMind's, taken from MONAI's copy of it (not from labelbench), and
scaled in float64 in the official order. Used by `tests/test_conformance.py` and by
`perf/bench_metrics.py` (DeepMind's `surface-distance` is not installed here).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from functools import cache

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
        return {"gt_to_pred": empty, "pred_to_gt": empty, "areas_gt": empty, "areas_pred": empty}
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
        "gt_to_pred": gt_to_pred,
        "pred_to_gt": pred_to_gt,
        "areas_gt": areas_gt,
        "areas_pred": areas_pred,
    }


def compute_surface_dice_at_tolerance(distances: dict, tolerance_mm: float) -> float:
    overlap_gt = np.sum(distances["areas_gt"][distances["gt_to_pred"] <= tolerance_mm])
    overlap_pred = np.sum(distances["areas_pred"][distances["pred_to_gt"] <= tolerance_mm])
    total = np.sum(distances["areas_gt"]) + np.sum(distances["areas_pred"])
    return float((overlap_gt + overlap_pred) / total)


def compute_dice_coefficient(mask_gt: np.ndarray, mask_pred: np.ndarray) -> float:
    volume_sum = mask_gt.sum() + mask_pred.sum()
    if volume_sum == 0:
        return float("nan")
    return float(2 * (mask_gt & mask_pred).sum() / volume_sum)


def evaluate_case(
    gt_data: np.ndarray,
    seg_data: np.ndarray,
    spacing,
    tolerances: Mapping[int, float] = TOLERANCE_MM,
    zrange_labels: Collection[int] = ZRANGE_LABELS,
    min_dsc: float = 0.2,
) -> dict[int, tuple[float, float]]:
    """(DSC, NSD) per label of one case in the files' own voxel order, as the official loop
    computes them (2024 revision; ``min_dsc=0`` for the 2022 original). NaN where the official
    loop divides 0 by 0 (a z-range organ on a single ground-truth slice)."""
    out: dict[int, tuple[float, float]] = {}
    for i, tolerance in tolerances.items():
        gt_i, seg_i = gt_data == i, seg_data == i
        if not gt_i.any() and not seg_i.any():
            out[i] = (1.0, 1.0)
            continue
        if not gt_i.any():
            out[i] = (0.0, 0.0)
            continue
        if i in zrange_labels:
            z = np.where(gt_i)[2]
            z_lower, z_upper = z.min(), z.max()
            gt_i, seg_i = gt_i[:, :, z_lower:z_upper], seg_i[:, :, z_lower:z_upper]
        dsc = compute_dice_coefficient(gt_i, seg_i)
        if dsc < min_dsc:
            nsd = 0.0
        elif not gt_i.any() and not seg_i.any():
            nsd = float("nan")
        else:
            distances = compute_surface_distances(gt_i, seg_i, spacing)
            nsd = compute_surface_dice_at_tolerance(distances, tolerance)
        out[i] = (dsc, nsd)
    return out


def float32_ties(gt_data: np.ndarray, seg_data: np.ndarray, spacing, label: int) -> int:
    """Surfels of one label whose distance exceeds its tolerance in float64 but not after
    rounding to float32: where a float32 comparison (MONAI's) and the official one differ."""
    distances = compute_surface_distances(gt_data == label, seg_data == label, spacing)
    tol = TOLERANCE_MM[label]
    d = np.concatenate([distances["gt_to_pred"], distances["pred_to_gt"]])
    return int(np.count_nonzero((d > tol) & (d.astype(np.float32) <= np.float32(tol))))
