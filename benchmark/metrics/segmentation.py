"""Per-case Dice (DSC) and normalized surface Dice (NSD) under the FLARE22 evaluation rules.

Volumes are indexed ``(X, Y, Z)`` with ``Z`` the slice axis (last) and spacings are in mm in the
same axis order. Surfaces follow DeepMind's ``surface-distance`` package, as does MONAI's
``compute_surface_dice(..., use_subvoxels=True)``: surface elements ("surfels") sit on the
corners of the voxel grid, one per 2x2x2 neighbourhood that is neither all inside nor all
outside, and each carries the marching-cubes area of its neighbourhood code. NSD is the
surfel area lying within the tolerance of the other surface, over the total surfel area of
both surfaces. Distances are compared with the tolerance in float64, as the official FLARE22
script does (``tests/test_conformance.py`` holds us to a reimplementation of its loop to 1e-9);
values agree with MONAI to float32 precision except at exact ties, where MONAI compares in
float32.

Speed: every organ is cropped to the bounding box of ``pred | gt`` (plus the one-voxel zero
margin the 2x2x2 neighbourhoods need) before any surface work, and distances come from
per-slice 2D feature transforms (``distance_transform_edt``) combined exactly across slices,
about 4-6 times cheaper than one 3D distance transform of the crop.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from benchmark.metrics.registry import OrganPair, Scoring

# Surfel normals of the 256 neighbourhood codes, as in DeepMind's / MONAI's lookup table. Only
# absolute components matter for areas; each token lists a code's normals as digit triples in
# eighths ("400222111" = (4, 0, 0)/8, (2, 2, 2)/8, (1, 1, 1)/8), "-" means no surfel. Codes
# 0..127 are listed; code 255 - c (inside and outside swapped) has the same normals as code c.
_NORMALS_EIGHTHS = """
- 111 111 220220 111 202202 111111 400222111 111 111111 202202 400222111 220220 400222111
400222111 400400 111 022022 111111 040222111 111111 004222111 111111111 111222222111 111111
022022111 202202111 111333022202 111220220 333022111220 400111222111 400111222 111 111111
022022 040111222 111111 111202202 022022111 333022111202 111111 111111111 004222111
222222111111 111220220 400222111111 022333111220 400222111 220220 040222111 040111222 040040
220220111 333202111220 111040222111 040222111 111220220 040222111111 333220111202 040222111
220220220220 220220111 111220220 220220 111 111111 111111 111220220 022022 004222111 022022111
333022111220 111111 111111111 111202202 400222111111 040222111 222222111111 202333022111
400222111 202202 004222111 111202202 202333220111 004222111 004004 111111222004 111222004
202202111 004222111111 202202202202 111202202 202333220111 004222111 111202202 202202 111111
111111111 111022022 040111222111 022022111 004222111111 022022022022 022022111 111111111
111111111111 004222111111 111111111 040222111111 111111111 022022111 111111 400222111
222111222111 333022111202 040222111 333220022111 111222004 111022022 022022 400222111111
111111111 202202111 111111 220220111 111111 111111 111
""".split()  # noqa: SIM905 (as a list literal the table would take 128 lines)


@lru_cache(maxsize=16)
def _surfel_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area in mm^2 of the surfels of each of the 256 neighbourhood codes, shape (256,)."""
    sx, sy, sz = spacing
    # A normal (nx, ny, nz) of unit-voxel area scales with the face areas perpendicular to it.
    face = np.array([sy * sz, sx * sz, sx * sy])
    areas = np.zeros(256)
    for code, token in enumerate(_NORMALS_EIGHTHS):
        if token != "-":
            normals = np.array([int(d) for d in token], dtype=float).reshape(-1, 3) / 8
            areas[code] = areas[255 - code] = np.linalg.norm(normals * face, axis=1).sum()
    return areas


def _neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit code of every 2x2x2 neighbourhood of ``mask`` zero-padded by one voxel.

    Returns uint8 of shape ``mask.shape + 1``; bit weights 128, 64, ..., 1 go to the corners
    (0,0,0), (0,0,1), (0,1,0), ..., (1,1,1) like MONAI's conv kernel. The zero padding closes
    surfaces that touch the crop (or volume) border, as MONAI and DeepMind do.
    """
    v = np.pad(mask, 1).view(np.uint8)
    c = v[:, :, :-1] * np.uint8(2) + v[:, :, 1:]  # combine along z, then y, then x: 6 passes
    c = c[:, :-1] * np.uint8(4) + c[:, 1:]
    return c[:-1] * np.uint8(16) + c[1:]


def _within_tolerance(
    points: tuple[np.ndarray, ...],
    target: np.ndarray,
    spacing: tuple[float, float, float],
    tolerance_mm: float,
) -> np.ndarray:
    """Whether each grid point in ``points`` (index arrays) is within the tolerance of ``target``.

    Squared distance splits into in-slice and across-slice parts, so a 2D feature transform
    per slice of ``target`` plus a minimum over the few slices within reach gives the exact
    3D Euclidean distance, evaluated at the query points only.
    """
    sx, sy, sz = spacing
    n_x, n_y, n_z = target.shape
    within = target[points]  # points on the target surface are at distance 0
    x, y, z = (p[~within] for p in points)
    # Slice-major copy: contiguous 2D slices, and flat indexing of the feature transform below.
    background = np.ascontiguousarray(np.moveaxis(~target, 2, 0))
    has_target = ~background.all(axis=(1, 2))
    # (x, y) of the nearest target; slices without target stay unset and are masked by `penalty`
    nearest = np.empty((n_z, 2, n_x, n_y), dtype=np.int32)
    for k in np.flatnonzero(has_target):
        ndimage.distance_transform_edt(
            background[k], sampling=(sx, sy), return_distances=False,
            return_indices=True, indices=nearest[k],
        )  # fmt: skip
    nearest = nearest.reshape(-1)
    # One slice more than the tolerance reaches, so float rounding cannot drop a tie.
    reach = int(tolerance_mm / sz) + 1
    # Slices outside the crop or without target add an infinite penalty instead of a branch.
    penalty = np.full(n_z + 2 * reach, np.inf)
    penalty[reach : reach + n_z][has_target] = 0.0
    plane = n_x * n_y
    in_plane = x * n_y + y
    best = np.full(x.shape, np.inf)
    for dz in range(-reach, reach + 1):
        k = z + dz
        at = np.clip(k, 0, n_z - 1) * (2 * plane) + in_plane
        d2 = ((nearest[at] - x) * sx) ** 2 + ((nearest[at + plane] - y) * sy) ** 2
        np.minimum(best, d2 + ((dz * sz) ** 2 + penalty[k + reach]), out=best)
    # Compare in float64, as the official FLARE script (DeepMind's surface-distance) does: a
    # distance that lands on the tolerance only after rounding to float32 (five slices of
    # float32(0.6) mm against 3 mm) is outside it. MONAI's float32 comparison counts it in.
    within[~within] = np.sqrt(best) <= tolerance_mm
    return within


def cropped_surface_dice(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float], tolerance_mm: float
) -> float:
    """NSD of boolean masks whose foreground lies entirely inside the given arrays."""
    areas = _surfel_areas(spacing)
    code_pred, code_gt = _neighbourhood_codes(pred), _neighbourhood_codes(gt)
    edge_pred = (code_pred != 0) & (code_pred != 255)
    edge_gt = (code_gt != 0) & (code_gt != 255)
    pts_pred, pts_gt = np.nonzero(edge_pred), np.nonzero(edge_gt)
    area_pred, area_gt = areas[code_pred[pts_pred]], areas[code_gt[pts_gt]]
    close_pred = _within_tolerance(pts_pred, edge_gt, spacing, tolerance_mm)
    close_gt = _within_tolerance(pts_gt, edge_pred, spacing, tolerance_mm)
    total = area_pred.sum() + area_gt.sum()
    return float((area_pred[close_pred].sum() + area_gt[close_gt].sum()) / total)


def _check_spacing(spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    sx, sy, sz = (float(s) for s in spacing)
    if min(sx, sy, sz) <= 0:
        raise ValueError(f"spacing must be positive mm, got {spacing}")
    return sx, sy, sz


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(
            f"expected two (X, Y, Z) volumes of one shape, got {pred.shape}, {gt.shape}"
        )


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of one shape; 1.0 when both are empty."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {gt.shape}")
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    return 1.0 if total == 0 else float(2 * np.count_nonzero(pred & gt) / total)


def surface_dice(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float], tolerance_mm: float
) -> float:
    """Normalized surface Dice of two boolean (X, Y, Z) masks at ``tolerance_mm`` (mm).

    ``spacing`` is the voxel size in mm per axis. Returns 1.0 when both masks are empty (MONAI
    returns NaN there) and 0.0 when exactly one is.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    _check_pair(pred, gt)
    spacing = _check_spacing(spacing)
    box = ndimage.find_objects((pred | gt).view(np.uint8))
    if not box:
        return 1.0
    if not (pred.any() and gt.any()):
        return 0.0
    return cropped_surface_dice(pred[box[0]], gt[box[0]], spacing, tolerance_mm)


class SliceOrder(NamedTuple):
    """Where the file's own slice axis (its third voxel axis) lies in the canonical (X, Y, Z)
    volume, and whether its indices run against that axis (a file stored head first in RAS+
    terms). The z-range rule drops the ground truth's last slice *in the file's order*."""

    axis: int = 2
    reversed: bool = False


AS_CANONICAL = SliceOrder()
"""A file stored in canonical (RAS+) order: the slice axis is Z, in increasing order."""


def _check_labels(pred: np.ndarray, gt: np.ndarray, organs: Mapping[int, str]) -> None:
    """Two integer label volumes of one (X, Y, Z) shape, and positive organ labels."""
    _check_pair(pred, gt)
    for volume in (pred, gt):
        if not np.issubdtype(volume.dtype, np.integer):
            raise TypeError(f"label volumes must be integer, got {volume.dtype}")
    if any(label < 1 for label in organs):
        raise ValueError(f"organ labels must be positive, got {sorted(organs)}")


def _checked(pred: np.ndarray, gt: np.ndarray, organs: Mapping[int, str]) -> tuple[list, list]:
    """Validate two label volumes; the bounding boxes of every organ label in each."""
    _check_labels(pred, gt, organs)
    # One pass per volume finds every label's bounding box, so later work is per-organ crops.
    top = max(organs, default=0)
    return ndimage.find_objects(pred, max_label=top), ndimage.find_objects(gt, max_label=top)


def _zrange(first: int, last: int, order: SliceOrder) -> tuple[int, int]:
    """[lo, hi) along the slice axis that the z-range rule keeps of a ground truth on
    canonical slices first..last: its last slice in the file's own order is left out."""
    if last == first:  # one slice: the official script fails (0/0); score that slice
        return first, first + 1
    if order.reversed:  # the file's last index is the canonical first
        return first + 1, last + 1
    return first, last


def _organ_masks(
    pred: np.ndarray,
    gt: np.ndarray,
    organs: Mapping[int, str],
    zrange_labels: Collection[int],
    order: SliceOrder,
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray] | None]]:
    """(label, (pred mask, gt mask)) cropped to the organ after the z-range rule (see
    `score_case`), or (label, None) when the organ is absent from both volumes."""
    pred_boxes, gt_boxes = _checked(pred, gt, organs)
    for label in organs:
        box_gt, box_pred = gt_boxes[label - 1], pred_boxes[label - 1]
        if box_gt is None and box_pred is None:
            yield label, None
            continue
        if box_gt is None:  # predicted only
            organ_pred = pred[box_pred] == label
            yield label, (organ_pred, np.zeros_like(organ_pred))
            continue
        if box_pred is None:  # missed: no z-range cut changes a score of an empty prediction
            organ_gt = gt[box_gt] == label
            yield label, (np.zeros_like(organ_gt), organ_gt)
            continue
        lo = [min(a.start, b.start) for a, b in zip(box_gt, box_pred, strict=True)]
        hi = [max(a.stop, b.stop) for a, b in zip(box_gt, box_pred, strict=True)]
        if label in zrange_labels:
            axis = order.axis
            lo[axis], hi[axis] = _zrange(box_gt[axis].start, box_gt[axis].stop - 1, order)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        yield label, (pred[box] == label, gt[box] == label)


def dice_case(
    pred: np.ndarray,
    gt: np.ndarray,
    organs: Mapping[int, str],
    zrange_labels: Collection[int] = (),
    order: SliceOrder = AS_CANONICAL,
) -> dict[int, float]:
    """DSC of every label in ``organs`` for one case under the rules of `score_case`.

    The cheap part of `score_case`, for validation during training: one pass counts, per
    index along the file's slice axis, the voxels of every (predicted, true) label pair, and
    every organ's DSC (the z-range cut included) is read off those counts. The same numbers
    as `score_case`'s DSC, without a mask per organ.
    """
    _check_labels(pred, gt, organs)
    counts = confusion_along(pred, gt, max(organs, default=0) + 2, order.axis)
    return dice_from_confusion(counts, organs, zrange_labels, order)


def dice_from_confusion(
    counts: np.ndarray,
    organs: Mapping[int, str],
    zrange_labels: Collection[int] = (),
    order: SliceOrder = AS_CANONICAL,
) -> dict[int, float]:
    """`dice_case` from (n, L, L) voxel counts of (predicted, true) label pairs per index
    along the file's slice axis (``order.axis``), with L above every organ label."""
    inter = np.diagonal(counts, axis1=1, axis2=2)  # [slice, label]
    in_pred, in_gt = counts.sum(2), counts.sum(1)
    scores: dict[int, float] = {}
    for label in organs:
        p, g, both = in_pred[:, label], in_gt[:, label], inter[:, label]
        lo, hi = 0, len(g)
        present = np.flatnonzero(g)
        if label in zrange_labels and len(present) and p.any():
            lo, hi = _zrange(int(present[0]), int(present[-1]), order)
        total = int(p[lo:hi].sum() + g[lo:hi].sum())
        scores[label] = 1.0 if total == 0 else float(2 * both[lo:hi].sum() / total)
    return scores


def confusion_along(pred: np.ndarray, gt: np.ndarray, n_labels: int, axis: int) -> np.ndarray:
    """(n, L, L) voxel counts of (predicted, true) label pairs per index along ``axis``;
    labels at or above ``n_labels - 1`` share the last bin, and values below 0 count as
    background (as they do for the bounding boxes of `score_case`)."""
    cap = n_labels - 1
    pair = np.clip(pred, 0, cap).astype(np.int32) * n_labels
    pair += np.clip(gt, 0, cap).astype(np.int32)
    step = n_labels * n_labels
    offset = np.arange(pred.shape[axis], dtype=np.int32) * step
    pair += offset.reshape([-1 if a == axis else 1 for a in range(pred.ndim)])
    counts = np.bincount(pair.ravel(), minlength=pred.shape[axis] * step)
    return counts.reshape(pred.shape[axis], n_labels, n_labels)


def score_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: tuple[float, float, float],
    organs: Mapping[int, str],
    scoring: Scoring,
    order: SliceOrder = AS_CANONICAL,
) -> dict[int, dict[str, float]]:
    """Every declared metric of every label in ``organs`` for one case: label → name → value.

    ``pred`` and ``gt`` are integer label volumes of shape (X, Y, Z); ``spacing`` is in mm in
    the same order. The FLARE22 rules of what is scored: for ``scoring.zrange_labels`` (FLARE:
    aorta 5, IVC 6, esophagus 10) both masks are first cut to ``[z_lower:z_upper]``, the first
    and last slice of the ground truth organ *in the file's own slice order* (``order``), so
    that last slice is left out as in the official script; a ground truth on a single slice
    (where that script divides 0 by 0) is scored on that slice. An organ absent from both
    volumes scores each metric's ``both_absent``; an organ present in one volume only is
    passed to the metric like any other (DSC and NSD give 0 there).
    """
    spacing = _check_spacing(spacing)
    extent = float(np.linalg.norm(np.array(pred.shape) * np.array(spacing)))
    scores: dict[int, dict[str, float]] = {}
    for label, masks in _organ_masks(pred, gt, organs, scoring.zrange_labels, order):
        if masks is None:
            scores[label] = {m.name: m.both_absent for m in scoring.metrics}
            continue
        organ = OrganPair(label, masks[0], masks[1], spacing, extent)
        scores[label] = {
            m.name: float(m.compute(organ, scoring.params.get(m.name))) for m in scoring.metrics
        }
    return scores
