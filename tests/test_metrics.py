"""DSC and NSD against MONAI (DeepMind surfels, ``use_subvoxels=True``) and the FLARE22 rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, compute_surface_dice
from monai.metrics.utils import get_code_to_measure_table
from scipy import ndimage

from benchmark.metrics import segmentation
from benchmark.metrics.nsd import NSDParams
from benchmark.metrics.registry import Scoring
from benchmark.metrics.segmentation import SliceOrder, dice, dice_case, score_case, surface_dice

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def flare_scores(pred, gt, spacing, organs, tolerances, zrange_labels=(), min_dsc=0.2):
    """{label: (DSC, NSD)} under the FLARE22 rules (2024 gate unless `min_dsc` says)."""
    scoring = Scoring.of(
        ["dsc", "nsd"], zrange_labels=zrange_labels, nsd=NSDParams(dict(tolerances), min_dsc)
    )
    scores = score_case(pred, gt, spacing, organs, scoring)
    return {label: (v["dsc"], v["nsd"]) for label, v in scores.items()}


def one_hot(mask: np.ndarray) -> torch.Tensor:
    """(1, 2, X, Y, Z) background/foreground tensor of a boolean mask."""
    fg = torch.from_numpy(np.asarray(mask, dtype=np.float32))
    return torch.stack([1 - fg, fg])[None]


def monai_nsd(pred, gt, spacing, tolerance) -> float:
    nsd = compute_surface_dice(
        one_hot(pred), one_hot(gt), [tolerance], include_background=False,
        spacing=list(spacing), use_subvoxels=True,
    )  # fmt: skip
    return float(nsd[0, 0])


def monai_dice(pred, gt) -> float:
    return float(DiceMetric(include_background=False)(one_hot(pred), one_hot(gt))[0, 0])


def blob(rng, shape, sigma=1.5, level=0.1) -> np.ndarray:
    """Random smooth blob(s), often touching the volume border."""
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma) > level


def ellipsoid(rng, shape, spacing, centre_mm, axes_mm, noise) -> np.ndarray:
    """Ellipsoid with a smoothly perturbed boundary, in mm on the given grid."""
    axes = [np.arange(n) * s for n, s in zip(shape, spacing, strict=True)]
    grid = np.meshgrid(*axes, indexing="ij")
    f = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre_mm, axes_mm, strict=True))
    return f + noise * ndimage.gaussian_filter(rng.standard_normal(shape), 3) < 1


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 3.0), (1.3, 0.7, 2.0)])
def test_surfel_areas_match_monai(spacing):
    expected = get_code_to_measure_table(spacing)[0].numpy()
    np.testing.assert_allclose(segmentation._surfel_areas(spacing), expected, rtol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_random_blobs_match_monai(seed):
    rng = np.random.default_rng(seed)
    spacing = [(1.0, 1.0, 1.0), (0.8, 0.8, 3.0), (1.3, 0.7, 2.0)][seed % 3]
    pred, gt = blob(rng, (20, 18, 12)), blob(rng, (20, 18, 12))
    assert dice(pred, gt) == pytest.approx(monai_dice(pred, gt), abs=1e-6)
    for tolerance in (1.0, 2.0, 3.5):
        assert surface_dice(pred, gt, spacing, tolerance) == pytest.approx(
            monai_nsd(pred, gt, spacing, tolerance), abs=1e-6
        )


@pytest.mark.parametrize("seed", range(2))
def test_realistic_organ_matches_monai(seed):
    rng = np.random.default_rng(seed)
    shape, spacing = (96, 96, 24), (0.8, 0.8, 3.0)
    centre, axes = (38.0, 40.0, 36.0), (22.0, 15.0, 25.0)
    gt = ellipsoid(rng, shape, spacing, centre, axes, noise=1.0)
    shifted = tuple(c + d for c, d in zip(centre, rng.normal(0, 1.5, 3), strict=True))
    pred = ellipsoid(rng, shape, spacing, shifted, axes, noise=1.0)
    assert 0.7 < dice(pred, gt) < 0.99
    assert dice(pred, gt) == pytest.approx(monai_dice(pred, gt), abs=1e-6)
    for tolerance in (1.0, 3.0):
        assert surface_dice(pred, gt, spacing, tolerance) == pytest.approx(
            monai_nsd(pred, gt, spacing, tolerance), abs=1e-6
        )


def test_score_case_matches_monai_with_zrange_cut():
    rng = np.random.default_rng(7)
    shape, spacing = (36, 24, 16), (0.9, 0.9, 2.5)
    gt, pred = np.zeros(shape, np.int16), np.zeros(shape, np.int16)
    for label in (1, 2, 3):  # one organ per third of the volume, touching its neighbours
        part = slice(12 * label - 12, 12 * label)
        gt[part][blob(rng, (12, 24, 16))] = label
        pred[part][blob(rng, (12, 24, 16)) | (gt[part] == label)] = label
    organs, tolerances = {1: "a", 2: "b", 3: "c"}, {1: 2.0, 2: 3.0, 3: 5.0}
    scores = flare_scores(pred, gt, spacing, organs, tolerances, zrange_labels=(2,))
    for label, (dsc, nsd) in scores.items():
        g, p = gt == label, pred == label
        if label == 2:  # cut to [z_lower:z_upper] of the ground truth, as the FLARE22 script
            z = np.flatnonzero(g.any(axis=(0, 1)))
            g, p = g[:, :, z[0] : z[-1]], p[:, :, z[0] : z[-1]]
        assert dsc == pytest.approx(monai_dice(p, g), abs=1e-6)
        assert nsd == pytest.approx(monai_nsd(p, g, spacing, tolerances[label]), abs=1e-6)


def test_identical_masks_score_one():
    mask = blob(np.random.default_rng(1), (16, 16, 8))
    assert dice(mask, mask) == 1.0
    assert surface_dice(mask, mask, (0.8, 0.8, 3.0), 0.0) == pytest.approx(1.0)
    labels = mask.astype(np.uint8)
    assert flare_scores(labels, labels, (1, 1, 1), {1: "x"}, {1: 1.0}) == {1: (1.0, 1.0)}


def test_nsd_symmetric():
    rng = np.random.default_rng(2)
    a, b = blob(rng, (18, 16, 10)), blob(rng, (18, 16, 10))
    assert surface_dice(a, b, (0.7, 1.1, 2.5), 2.0) == pytest.approx(
        surface_dice(b, a, (0.7, 1.1, 2.5), 2.0), abs=1e-12
    )


def test_empty_and_one_sided_masks():
    empty, full = np.zeros((8, 8, 4), bool), np.zeros((8, 8, 4), bool)
    full[2:5, 2:5, 1:3] = True
    assert dice(empty, empty) == 1.0
    assert surface_dice(empty, empty, (1, 1, 1), 1.0) == 1.0
    assert dice(full, empty) == dice(empty, full) == 0.0
    assert surface_dice(full, empty, (1, 1, 1), 1.0) == surface_dice(empty, full, (1, 1, 1), 1.0)
    assert surface_dice(full, empty, (1, 1, 1), 1.0) == 0.0
    labels = full.astype(np.uint8)
    none = np.zeros_like(labels)
    organs, tol = {1: "x", 2: "absent"}, {1: 1.0, 2: 1.0}
    assert flare_scores(labels, none, (1, 1, 1), organs, tol) == {1: (0.0, 0.0), 2: (1.0, 1.0)}
    assert flare_scores(none, labels, (1, 1, 1), organs, tol) == {1: (0.0, 0.0), 2: (1.0, 1.0)}


def test_nsd_zero_below_dsc_gate_and_computed_at_it():
    gt, pred = np.zeros((24, 3, 3), np.uint8), np.zeros((24, 3, 3), np.uint8)
    gt[0:10, 1, 1] = 1
    pred[8:18, 1, 1] = 1  # overlap 2 of 10 + 10 voxels: DSC exactly 0.2
    (dsc, nsd) = flare_scores(pred, gt, (1, 1, 1), {1: "x"}, {1: 20.0})[1]
    assert dsc == pytest.approx(0.2) and nsd == pytest.approx(1.0)
    pred[:] = 0
    pred[9:19, 1, 1] = 1  # overlap 1: DSC 0.1, NSD would be 1 at this tolerance
    assert surface_dice(pred == 1, gt == 1, (1, 1, 1), 20.0) == pytest.approx(1.0)
    assert flare_scores(pred, gt, (1, 1, 1), {1: "x"}, {1: 20.0}) == {1: (pytest.approx(0.1), 0.0)}


def test_zrange_cut_leaves_out_top_gt_slice():
    gt = np.zeros((10, 10, 12), np.uint8)
    gt[3:7, 3:7, 2:8] = 5  # ground truth on slices 2..7
    pred = gt.copy()
    pred[:, :, 7] = 0  # misses the top ground-truth slice ...
    pred[3:7, 3:7, 9:11] = 5  # ... and has extra voxels above the ground truth
    args = ((1.0, 1.0, 2.0), {5: "aorta"}, {5: 2.0})
    assert flare_scores(pred, gt, *args, zrange_labels=(5,)) == {5: (1.0, 1.0)}
    dsc, nsd = flare_scores(pred, gt, *args)[5]
    assert dsc < 1.0 and nsd < 1.0


def test_zrange_edge_cases():
    gt, pred = np.zeros((6, 6, 6), np.uint8), np.zeros((6, 6, 6), np.uint8)
    pred[1:4, 1:4, 1:4] = 6
    args = ((1.0, 1.0, 1.0), {6: "ivc"}, {6: 2.0})
    # empty ground truth: no cut, the prediction alone scores (0, 0)
    assert flare_scores(pred, gt, *args, zrange_labels=(6,)) == {6: (0.0, 0.0)}
    gt[1:4, 1:4, 2] = 6  # a single ground-truth slice: scored on that slice, not cut away
    assert flare_scores(pred, gt, *args, zrange_labels=(6,)) == {6: (1.0, 1.0)}


def test_rejects_bad_input():
    labels = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError):
        flare_scores(labels, labels[:3], (1, 1, 1), {1: "x"}, {1: 1.0})
    with pytest.raises(TypeError):
        flare_scores(labels.astype(float), labels, (1, 1, 1), {1: "x"}, {1: 1.0})
    with pytest.raises(ValueError, match="nsd_tolerance_mm"):
        Scoring.parse({"nsd_tolerance_mm": {}}, {1: "x"})
    with pytest.raises(ValueError, match="nsd_min_dcs"):  # a typo is not silently ignored
        Scoring.parse({"nsd_tolerance_mm": {1: 1}, "nsd_min_dcs": 0.2}, {1: "x"})
    with pytest.raises(ValueError, match="unknown metric 'hd96'.*hd95"):
        Scoring.parse({"names": ["dsc", "hd96"]}, {1: "x"})


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("order", [SliceOrder(a, r) for a in range(3) for r in (False, True)])
def test_dice_case_is_score_cases_dsc(seed, order):
    """Validation's counting DSC equals the scorer's per-organ masks under every rule: the
    z-range cut along the file's slice axis in either direction, a ground truth on one
    slice, organs absent from one or both volumes, values that are not organs."""
    rng = np.random.default_rng(seed)
    shape = (14, 12, 10)
    organs = {1: "a", 2: "b", 5: "aorta", 6: "ivc", 9: "c"}
    gt, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.int64)
    for label in (1, 2, 5, 6):
        gt[blob(rng, shape)] = label
        pred[blob(rng, shape)] = label
    gt[gt == 6] = 0
    ivc = [slice(2, 6)] * 3
    ivc[order.axis] = slice(4, 5)
    gt[tuple(ivc)] = 6  # IVC on one slice of the file's slice axis
    pred[8:11, 8:11, 6:9] = 9  # predicted only
    pred[0, 0, :3] = 11  # not an organ of the protocol
    pred[1, 0, :3] = -1  # read as background
    scoring = Scoring.of(["dsc"], zrange_labels=(5, 6, 10))
    scored = score_case(pred, gt, (1, 1, 1), organs, scoring, order)
    expected = {label: v["dsc"] for label, v in scored.items()}
    got = dice_case(pred, gt, organs, (5, 6, 10), order)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[9] == 0.0 and got[2] not in (0.0, 1.0) and set(got) == set(organs)
    with pytest.raises(TypeError):
        dice_case(pred.astype(float), gt, organs)


@pytest.mark.slow
def test_phantom_case_matches_monai_for_every_organ():
    """A default-size phantom case (512², anisotropic) with a perturbed prediction."""
    from benchmark.data.phantom import PhantomSettings, generate_case

    _, gt, spacing = generate_case(PhantomSettings(), 0)
    gt = np.ascontiguousarray(gt)
    rng = np.random.default_rng(0)
    pred = np.zeros_like(gt)
    for label in range(1, 14):
        mask = gt == label
        mask = ndimage.binary_dilation(mask) if rng.random() < 0.5 else ndimage.binary_erosion(mask)
        pred[np.roll(mask, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))] = label
    organs = {i: str(i) for i in range(1, 14)}
    tol = dict(zip(range(1, 14), (5, 3, 3, 5, 2, 2, 2, 2, 2, 3, 5, 7, 3), strict=True))
    ours = flare_scores(pred, gt, spacing, organs, tol)
    for label in organs:
        p, g = pred == label, gt == label
        assert ours[label][0] == pytest.approx(monai_dice(p, g), abs=1e-6)
        expected_nsd = monai_nsd(p, g, spacing, tol[label]) if ours[label][0] >= 0.2 else 0.0
        assert ours[label][1] == pytest.approx(expected_nsd, abs=1e-6)
