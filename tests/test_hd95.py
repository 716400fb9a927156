"""HD95 in mm against MONAI's compute_hausdorff_distance(percentile=95, spacing=...)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from benchmark.metrics.hd95 import hd95
from benchmark.metrics.registry import Scoring, get_metric
from benchmark.metrics.segmentation import score_case

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def monai_hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    def one_hot(mask):
        fg = torch.from_numpy(mask.astype(np.float32))
        return torch.stack([1 - fg, fg])[None]

    hd = compute_hausdorff_distance(one_hot(pred), one_hot(gt), percentile=95, spacing=spacing)
    return float(hd[0, 0])


def blob(rng, shape, sigma=1.5, level=0.2) -> np.ndarray:
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma) > level


@pytest.mark.parametrize("seed", range(4))
def test_matches_monai(seed):
    rng = np.random.default_rng(seed)
    spacing = [(1.0, 1.0, 1.0), (0.8, 0.8, 3.0), (1.3, 0.7, 2.0), (0.74, 0.74, 2.5)][seed]
    shape = (22, 20, 12)
    gt = blob(rng, shape)
    pred = blob(rng, shape) if seed % 2 else ndimage.binary_dilation(gt, iterations=2)
    assert hd95(pred, gt, spacing) == pytest.approx(monai_hd95(pred, gt, spacing), rel=1e-5)


def test_declared_and_scored_through_the_protocol_rules():
    metric = get_metric("hd95")
    assert not metric.higher_is_better and metric.needs_spacing and metric.both_absent == 0.0
    gt = np.zeros((10, 10, 6), np.uint8)
    gt[2:6, 2:6, 1:5] = 1
    pred = np.zeros_like(gt)
    pred[3:7, 2:6, 1:5] = 1
    pred[8, 8, 5] = 2  # predicted only: the worst distance, the volume's diagonal
    spacing = (1.0, 2.0, 3.0)
    scores = score_case(pred, gt, spacing, {1: "a", 2: "b", 3: "c"}, Scoring.of(["dsc", "hd95"]))
    assert scores[1]["hd95"] == pytest.approx(monai_hd95(pred == 1, gt == 1, spacing), rel=1e-6)
    assert scores[2]["hd95"] == pytest.approx(np.linalg.norm([10, 20, 18]))
    assert scores[3] == {"dsc": 1.0, "hd95": 0.0}  # absent from both
