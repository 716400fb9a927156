"""HD95: the 95th-percentile Hausdorff distance of one organ in mm (SSL4MIS, DHC report it).

Computed as MONAI's ``compute_hausdorff_distance(percentile=95, spacing=...)`` does: the
surface of a mask is its voxels that a one-voxel erosion (6-neighbourhood) removes; for each
direction (prediction to ground truth and back) the exact Euclidean distance of every surface
voxel to the other surface, in mm; the 95th percentile (linear interpolation) of each
direction, and the larger of the two. 0 mm when the organ is absent from both volumes; when
it is in one volume only, the diagonal of the whole volume in mm, the largest distance the
image allows (the worst-case convention BraTS uses with its fixed 373.13 mm), so that means
over organs and cases stay finite. Lower is better.

Off by default: add "hd95" to `[metrics] names` of a protocol to score it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from benchmark.metrics.registry import Metric, OrganPair

PERCENTILE = 95.0


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` that a 6-neighbourhood erosion removes (the image border erodes)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed(
    source: np.ndarray, target: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Distance in mm from each `source` voxel to the nearest `target` voxel."""
    distance = ndimage.distance_transform_edt(~target, sampling=spacing)
    return distance[source]


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """HD95 in mm of two non-empty boolean masks of one shape."""
    # Pad by one voxel so that the crop's border is not taken for the image's border.
    pred, gt = np.pad(pred, 1), np.pad(gt, 1)
    edge_pred, edge_gt = _surface(pred), _surface(gt)
    return float(
        max(
            np.percentile(_directed(edge_pred, edge_gt, spacing), PERCENTILE),
            np.percentile(_directed(edge_gt, edge_pred, spacing), PERCENTILE),
        )
    )


def _compute(organ: OrganPair, params: None) -> float:
    if not (organ.pred.any() and organ.gt.any()):
        return organ.extent_mm
    return hd95(organ.pred, organ.gt, organ.spacing)


METRIC = Metric(
    name="hd95",
    display="HD95 (mm)",
    higher_is_better=False,
    needs_spacing=True,
    compute=_compute,
    both_absent=0.0,
    doc="95th-percentile Hausdorff distance in mm (lower is better)",
)
