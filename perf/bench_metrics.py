"""Seconds per case for FLARE22 DSC + NSD: ``score_case`` vs the official FLARE22 loop vs
MONAI, on one core, same masks, in one run (the ratios are what to read: the machine is shared).

Builds one 512 × 512 × 100 case at spacing (0.74, 0.74, 2.5) mm with the 13 FLARE22 organs as
perturbed ellipsoids and tubes of realistic size, and a prediction whose boundaries are moved
by a smooth random field (plus a 1-voxel in-plane erosion for some organs), DSC about 0.9.
The official loop is ``tests/flare22_official.py``: the FLARE22 script's loop (2024
revision) written from its rules, step for step (it counts each organ's voxels as often as the
script does), with DeepMind's surface-distance package doing the surface work, as the script's
SurfaceDice.py (a copy of it) does; it takes the label volumes as they are and does its own
per-organ masks. Reading the files is not timed for anyone. MONAI gets one-hot float tensors
prepared beforehand (not timed) with the z-range organs already cut to the ground truth's
slices, and runs ``compute_surface_dice(use_subvoxels=True)`` and ``DiceMetric``.
``score_case`` and the official loop run in turns, best of ``--repeats`` each. Prints the
timings, the speedups and the largest differences in values (against the official loop: 0 up
to float rounding; against MONAI: float32 precision).

    python perf/bench_metrics.py [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # one core for numpy/scipy and torch alike

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.metrics import DiceMetric, compute_surface_dice
from scipy import ndimage

from benchmark.metrics.nsd import NSDParams
from benchmark.metrics.registry import Scoring
from benchmark.metrics.segmentation import score_case

# The official loop's reimplementation lives with the tests; run as a script, only perf/ is
# on the path, so the repository root goes there too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.flare22_official import evaluate_case

torch.set_num_threads(1)

SHAPE = (512, 512, 100)
SPACING = (0.74, 0.74, 2.5)
# label: (name, centre (x, y, z) mm, semi-axes (x, y, z) mm, NSD tolerance mm)
ORGANS = {
    1: ("liver", (120, 170, 150), (85, 75, 70), 5),
    2: ("right kidney", (120, 250, 110), (28, 30, 52), 3),
    3: ("spleen", (270, 240, 160), (45, 35, 50), 3),
    4: ("pancreas", (200, 190, 120), (70, 18, 22), 5),
    5: ("aorta", (195, 230, 130), (11, 11, 110), 2),
    6: ("inferior vena cava", (165, 225, 125), (10, 12, 95), 2),
    7: ("right adrenal gland", (145, 235, 160), (10, 6, 16), 2),
    8: ("left adrenal gland", (235, 240, 160), (10, 6, 16), 2),
    9: ("gallbladder", (130, 130, 110), (18, 14, 30), 2),
    10: ("esophagus", (205, 215, 200), (8, 7, 50), 3),
    11: ("stomach", (250, 150, 175), (60, 45, 55), 5),
    12: ("duodenum", (165, 175, 95), (35, 18, 28), 7),
    13: ("left kidney", (270, 255, 110), (28, 30, 52), 3),
}
TUBES = (5, 6, 10)  # also FLARE's z-range organs


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: int) -> np.ndarray:
    """Unit-variance-ish random field, smooth over about ``cell`` voxels."""
    coarse = rng.standard_normal([s // cell + 2 for s in shape])
    field = ndimage.zoom(coarse, [s / (c - 1) for s, c in zip(shape, coarse.shape, strict=True)])
    return field[: shape[0], : shape[1], : shape[2]]


def organ_masks(rng, centre, axes, tube: bool):
    """Ground truth and predicted mask of one organ inside its bounding box (slices)."""
    spacing, centre, axes = np.asarray(SPACING), np.asarray(centre), np.asarray(axes)
    lo = np.maximum(((centre - axes) / spacing).astype(int) - 10, 0)
    hi = np.minimum(((centre + axes) / spacing).astype(int) + 10, SHAPE)
    x, y, z = (np.arange(a, b) * s for a, b, s in zip(lo, hi, spacing, strict=True))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    u = (z - centre[2]) / axes[2]
    if tube:  # a vessel-like tube whose centre line drifts along z
        cx, cy, along = centre[0] + 6 * np.sin(2 * u), centre[1] + 4 * np.cos(1.5 * u), u**8
    else:
        cx, cy, along = centre[0], centre[1], u**2
    f = ((x - cx) / axes[0]) ** 2 + ((y - cy) / axes[1]) ** 2 + along
    f = f + 0.15 * smooth_noise(rng, f.shape, 12)  # organ shape irregularity
    gt = f < 1
    pred = f + 0.2 * smooth_noise(rng, f.shape, 5) < 1  # smooth boundary deformation
    if rng.random() < 0.5:
        pred = ndimage.binary_erosion(pred, np.ones((3, 3, 1), bool))
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), gt, pred


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    for label, (_, centre, axes, _) in ORGANS.items():
        box, organ_gt, organ_pred = organ_masks(rng, centre, axes, label in TUBES)
        gt[box][organ_gt] = label
        pred[box][organ_pred] = label
    return gt, pred


def one_hot(labels: np.ndarray, gt: np.ndarray) -> torch.Tensor:
    """(1, 14, X, Y, Z) float one-hot, z-range organs cut to the ground truth's [z_min, z_max)."""
    out = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), 14)
    out = out.permute(3, 0, 1, 2)[None].float()
    for label in TUBES:
        z = np.flatnonzero((gt == label).any(axis=(0, 1)))
        out[0, label, :, :, : z[0]] = 0
        out[0, label, :, :, z[-1] :] = 0  # the top ground-truth slice is left out, as in FLARE22
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # MONAI deprecation notices

    gt, pred = make_case(args.seed)
    organs = {label: spec[0] for label, spec in ORGANS.items()}
    tolerances = {label: spec[3] for label, spec in ORGANS.items()}

    scoring = Scoring.of(["dsc", "nsd"], zrange_labels=TUBES, nsd=NSDParams(tolerances, 0.2))
    times, official_times = [], []
    for _ in range(args.repeats):  # in turns, so both see the same load on a shared machine
        start = time.perf_counter()
        scores = score_case(pred, gt, SPACING, organs, scoring)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        official = evaluate_case(gt, pred, SPACING, tolerances, TUBES, min_dsc=0.2)
        official_times.append(time.perf_counter() - start)
    ours = {label: (v["dsc"], v["nsd"]) for label, v in scores.items()}
    official_s = min(official_times)

    y_pred, y = one_hot(pred, gt), one_hot(gt, gt)
    start = time.perf_counter()
    nsd = compute_surface_dice(
        y_pred, y, [tolerances[label] for label in ORGANS], include_background=False,
        spacing=SPACING, use_subvoxels=True,
    )[0]  # fmt: skip
    monai_nsd_s = time.perf_counter() - start
    start = time.perf_counter()
    dsc = DiceMetric(include_background=False, reduction="none")(y_pred, y)[0]
    monai_dice_s = time.perf_counter() - start
    monai_s = monai_nsd_s + monai_dice_s

    off_diff = max(abs(ours[k][i] - official[k][i]) for k in ORGANS for i in (0, 1))
    dsc_diff = max(abs(ours[label][0] - float(dsc[label - 1])) for label in ORGANS)
    nsd_diff = max(abs(ours[label][1] - float(nsd[label - 1])) for label in ORGANS)
    dscs = [ours[label][0] for label in ORGANS]
    nsds = [ours[label][1] for label in ORGANS]
    ours_s = min(times)
    print(f"case: {'x'.join(map(str, SHAPE))} voxels, spacing {SPACING} mm, {len(ORGANS)} organs")
    print(f"values: DSC {min(dscs):.3f}-{max(dscs):.3f}, NSD {min(nsds):.3f}-{max(nsds):.3f}")
    runs = ", ".join(f"{t:.3f}" for t in times)
    print(f"score_case, 1 core: {ours_s:.3f} s (best of {len(times)} runs: {runs})")
    print(
        f"official FLARE22 loop (DeepMind surface-distance), 1 core: {official_s:.2f} s "
        f"(best of {args.repeats} runs)"
    )
    print(
        f"MONAI, 1 core: {monai_s:.2f} s "
        f"(compute_surface_dice {monai_nsd_s:.2f} s + DiceMetric {monai_dice_s:.2f} s)"
    )
    print(
        f"speedup: {official_s / ours_s:.1f}x vs the official loop, "
        f"{monai_s / ours_s:.1f}x vs MONAI total, "
        f"{monai_nsd_s / ours_s:.1f}x vs compute_surface_dice alone"
    )
    print(f"max |difference| vs official: {off_diff:.2e}")
    print(f"max |difference| vs MONAI: DSC {dsc_diff:.2e}, NSD {nsd_diff:.2e}")


if __name__ == "__main__":
    main()
