"""labelbench's DSC and NSD against the official FLARE22 loop (2024 revision) to 1e-9.

Cases are written as NIfTI files in several orientations with float32 spacings and exact
distance ties, read back through labelbench's reader (canonical orientation, the file's
slice order kept) and scored by `score_case`; the reference (`tests/flare22_official.py`)
reads the same files' voxel arrays as stored, as the official script does, and measures
surfaces with DeepMind's surface-distance, whose code that script copies.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from benchmark.data.reader import read_header, read_label, slice_order
from benchmark.metrics.registry import Scoring
from benchmark.metrics.segmentation import SliceOrder, score_case
from tests.flare22_official import (
    TOLERANCE_MM,
    ZRANGE_LABELS,
    evaluate_case,
    float32_ties,
    surface_functions,
)

SHAPE = (34, 30, 26)  # file voxel order
SPACING = (0.9, 0.8, 0.6)  # mm per file axis; stored as float32 in the header
ORGANS = {label: f"organ{label}" for label in TOLERANCE_MM}

# Voxel axes of the file in world space: RAS, LPS, slices stored head first (z reversed),
# and a file whose third (slice) axis is canonical X.
ORIENTATIONS = {
    "RAS": np.eye(3),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "RAS-z-reversed": np.diag([1.0, 1.0, -1.0]),
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
}


def scoring(min_dsc: float = 0.2) -> Scoring:
    from benchmark.metrics.nsd import NSDParams

    params = NSDParams({k: float(v) for k, v in TOLERANCE_MM.items()}, min_dsc)
    return Scoring.of(["dsc", "nsd"], zrange_labels=ZRANGE_LABELS, nsd=params)


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and prediction in file order: blobs, boxes shifted by exact tie
    distances (5 slices of 0.6 mm = 3 mm; (2 × 0.9, 3 × 0.8) mm = 3 mm), low-DSC organs for
    the gate, z-range organs cut at both ends, organs missing from one volume."""
    rng = np.random.default_rng(seed)
    gt, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)

    def blob(centre, size, noise=0.4):
        grid = np.indices(SHAPE).astype(float)
        f = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, size, strict=True))
        return f + noise * ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2) < 1

    for label in ORGANS:
        centre = rng.uniform(6, np.array(SHAPE) - 6)
        size = rng.uniform(2.5, 6, 3)
        organ_gt = blob(centre, size)
        kind = (label + seed) % 5
        if kind == 0:  # whole box moved 5 slices: ties at 3 mm for tolerance-3 organs
            organ_gt = np.zeros(SHAPE, bool)
            lo = rng.integers(3, 10, 3)
            organ_gt[lo[0] : lo[0] + 8, lo[1] : lo[1] + 7, lo[2] : lo[2] + 9] = True
            organ_pred = np.roll(organ_gt, 5, axis=2)
        elif kind == 1:  # moved (2, 3) in-plane voxels: 1.8² + 2.4² = 3²
            organ_pred = np.roll(organ_gt, (2, 3), axis=(0, 1))
        elif kind == 2:  # a different blob nearby: low DSC, the gate decides
            organ_pred = blob(centre + rng.uniform(-4, 4, 3), size)
        elif kind == 3:
            organ_pred = ndimage.binary_dilation(organ_gt) if seed % 2 else organ_gt.copy()
        else:
            organ_pred = blob(centre, size * rng.uniform(0.8, 1.2, 3))
        gt[organ_gt & (gt == 0)] = label
        pred[organ_pred & (pred == 0)] = label
    if seed % 3 == 0:
        pred[pred == 9] = 0  # missed
    if seed % 3 == 1:
        gt[gt == 8] = 0  # predicted only
    return gt, pred


def write(path: Path, labels: np.ndarray, axes: np.ndarray) -> Path:
    affine = np.eye(4)
    affine[:3, :3] = axes * np.array(SPACING)  # column j: world direction of voxel axis j
    affine[:3, 3] = [-20.0, 15.0, 40.0]
    img = nib.Nifti1Image(labels, affine)
    img.header.set_data_dtype(np.uint8)
    nib.save(img, path)
    return path


def official(gt_path: Path, pred_path: Path, min_dsc: float = 0.2):
    gt_nii = nib.load(gt_path)
    case_spacing = gt_nii.header.get_zooms()
    gt_data = np.uint8(gt_nii.get_fdata())
    seg_data = np.uint8(nib.load(pred_path).get_fdata())
    return (
        gt_data,
        seg_data,
        case_spacing,
        evaluate_case(gt_data, seg_data, case_spacing, min_dsc=min_dsc),
    )


def ours(gt_path: Path, pred_path: Path, min_dsc: float = 0.2, order: SliceOrder | None = None):
    gt, spacing = read_label(gt_path, ORGANS)
    pred, _ = read_label(pred_path, ORGANS)
    order = order or SliceOrder(*slice_order(read_header(gt_path).affine))
    return score_case(pred, gt, spacing, ORGANS, scoring(min_dsc), order)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("seed", range(3))
def test_matches_official_loop(tmp_path, orientation, seed):
    gt, pred = make_case(seed)
    axes = ORIENTATIONS[orientation]
    gt_path = write(tmp_path / "gt.nii.gz", gt, axes)
    pred_path = write(tmp_path / "pred.nii.gz", pred, axes)
    gt_data, _, spacing, reference = official(gt_path, pred_path)
    assert spacing[2] == np.float32(0.6) and float(spacing[2]) != 0.6  # float32 zooms
    np.testing.assert_array_equal(gt_data, gt)  # the reference reads the file's own order
    mine = ours(gt_path, pred_path)
    compared = 0
    for label, (dsc, nsd) in reference.items():
        if np.isnan(dsc) or np.isnan(nsd):
            continue  # the official loop cannot score it (single-slice z-range organ)
        assert mine[label]["dsc"] == pytest.approx(dsc, abs=1e-9, rel=0), label
        assert mine[label]["nsd"] == pytest.approx(nsd, abs=1e-9, rel=0), label
        compared += 1
    assert compared >= 12


def test_cases_hold_float32_ties_and_gated_organs(tmp_path):
    """The cases above exercise what the float32 comparison and the gate got wrong."""
    ties, gated = 0, 0
    for seed in range(3):
        gt, pred = make_case(seed)
        for label in ORGANS:
            ties += float32_ties(gt, pred, SPACING_F32, label)
        reference = evaluate_case(gt, pred, SPACING_F32)
        ungated = evaluate_case(gt, pred, SPACING_F32, min_dsc=0.0)
        gated += sum(reference[k][1] != ungated[k][1] for k in ORGANS)
    assert ties > 0 and gated > 0


SPACING_F32 = tuple(np.float32(s) for s in SPACING)


def test_2022_script_without_gate(tmp_path):
    gt, pred = make_case(1)
    gt_path = write(tmp_path / "gt.nii.gz", gt, np.eye(3))
    pred_path = write(tmp_path / "pred.nii.gz", pred, np.eye(3))
    *_, reference = official(gt_path, pred_path, min_dsc=0.0)
    mine = ours(gt_path, pred_path, min_dsc=0.0)
    for label, (_, nsd) in reference.items():
        assert mine[label]["nsd"] == pytest.approx(nsd, abs=1e-9, rel=0)


def test_zrange_follows_the_files_slice_order(tmp_path):
    """A file stored head first: the official rule drops the canonical *first* slice."""
    gt = np.zeros(SHAPE, np.uint8)
    gt[10:16, 10:16, 5:15] = 5  # aorta on file slices 5..14
    pred = gt.copy()
    pred[:, :, 14] = 0  # misses the file's last ground-truth slice, which the rule drops
    axes = ORIENTATIONS["RAS-z-reversed"]
    gt_path = write(tmp_path / "gt.nii.gz", gt, axes)
    pred_path = write(tmp_path / "pred.nii.gz", pred, axes)
    *_, reference = official(gt_path, pred_path)
    assert reference[5] == (1.0, 1.0)
    assert ours(gt_path, pred_path)[5] == {"dsc": 1.0, "nsd": 1.0}
    # Read as if stored in RAS order, the canonical last slice would be dropped instead.
    assert ours(gt_path, pred_path, order=SliceOrder())[5]["dsc"] < 1.0


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_spacing_is_the_headers_voxel_size(tmp_path, orientation):
    """The official script reads pixdim; an affine one float32 step off it (within the
    reader's tolerance) must not move a distance off its tie with the tolerance, in any
    stored orientation (nibabel recomputes the zooms from the affine when it reorients)."""
    pixdim = (0.8, 0.8, 0.5)
    gt = np.zeros(SHAPE, np.uint8)
    gt[8:16, 8:16, 4:12] = 2  # right kidney, tolerance 3 mm
    pred = np.roll(gt, 6, axis=2)  # 6 file slices of 0.5 mm: exactly 3 mm
    affine = np.eye(4)
    step = np.nextafter(np.float32(0.5), np.float32(1))  # 0.50000006
    affine[:3, :3] = ORIENTATIONS[orientation] * np.array([0.8, 0.8, float(step)])
    paths = []
    for name, labels in (("gt", gt), ("pred", pred)):
        img = nib.Nifti1Image(labels, affine)
        img.header.set_sform(affine, code=1)
        img.header.set_qform(None, code=0)
        img.header.set_zooms(pixdim)
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(img, paths[-1])
    assert nib.load(paths[0]).header.get_zooms() == pixdim
    *_, reference = official(*paths, min_dsc=0.0)
    by_affine = evaluate_case(gt, pred, (0.8, 0.8, float(step)), min_dsc=0.0)
    assert reference[2][1] == 1.0 and by_affine[2][1] < 1.0  # the tie decides
    mine = ours(*paths, min_dsc=0.0)
    assert mine[2]["nsd"] == pytest.approx(reference[2][1], abs=1e-9, rel=0)
    assert mine[2]["dsc"] == pytest.approx(reference[2][0], abs=1e-9, rel=0)


@pytest.mark.parametrize("seed", range(3))
def test_the_rewrite_of_surface_distances_is_deepminds(seed):
    """The reference's own rewrite of DeepMind's surface distances (kept to state the rules)
    gives DeepMind's distances and surfel areas exactly, on the tie cases."""
    gt, pred = make_case(seed)
    deepmind, rewrite = surface_functions("deepmind"), surface_functions("rewrite")
    for label in ORGANS:
        if not (gt == label).any() or not (pred == label).any():
            continue
        a = deepmind.compute_surface_distances(gt == label, pred == label, SPACING_F32)
        b = rewrite.compute_surface_distances(gt == label, pred == label, SPACING_F32)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{label} {key}")
    assert evaluate_case(gt, pred, SPACING_F32, surface="rewrite") == evaluate_case(
        gt, pred, SPACING_F32
    )


def test_a_missed_single_slice_zrange_organ_scores_0_as_in_2024(tmp_path):
    """The 2024 script scores an organ missing from the prediction 0, 0 before any z-range
    cut; the 2022 one cut it first, and an aorta on one ground-truth slice came out 0 / 0."""
    gt = np.zeros(SHAPE, np.uint8)
    gt[10:16, 10:16, 7] = 5  # aorta on a single file slice
    gt[4:9, 4:9, 3:8] = 1  # liver, found exactly
    pred = np.where(gt == 1, 1, 0).astype(np.uint8)
    gt_path = write(tmp_path / "gt.nii.gz", gt, np.eye(3))
    pred_path = write(tmp_path / "pred.nii.gz", pred, np.eye(3))
    *_, reference = official(gt_path, pred_path)
    assert reference[5] == (0.0, 0.0)
    assert ours(gt_path, pred_path)[5] == {"dsc": 0.0, "nsd": 0.0}
    *_, original = official(gt_path, pred_path, min_dsc=0.0)
    assert np.isnan(original[5][0]) and np.isnan(original[5][1])
