"""Tests of the synthetic abdominal CT phantom (tiny matrices so they run in seconds)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from benchmark.data.phantom import (
    ORGANS,
    PhantomSettings,
    generate_case,
    render_examples,
    write_phantom,
    writer,
)

TINY = PhantomSettings(cases=2, unlabeled=1, seed=3, size=64)


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    return generate_case(TINY, 0)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int]]]:
    """TINY written serially into a fresh folder, with the progress calls it made."""
    calls: list[tuple[int, int]] = []
    out = write_phantom(
        tmp_path_factory.mktemp("written") / "ds",
        TINY,
        workers=1,
        progress=lambda d, t: calls.append((d, t)),
    )
    return out, calls


def _z_slices(label: np.ndarray, organ: int) -> int:
    return int(np.any(label == organ, axis=(0, 1)).sum())


def test_organ_table_is_flare22() -> None:
    assert list(ORGANS) == list(range(1, 14))
    assert ORGANS[1] == "liver" and ORGANS[6] == "ivc" and ORGANS[13] == "left_kidney"


def test_same_seed_same_case_other_seed_other_case(case) -> None:
    image, label, spacing = case
    image2, label2, spacing2 = generate_case(TINY, 0)
    assert np.array_equal(image, image2) and np.array_equal(label, label2)
    assert spacing == spacing2
    other = generate_case(replace(TINY, seed=4), 0)
    assert other[0].shape != image.shape or not np.array_equal(other[0], image)
    # Case i depends only on (seed, i, kind): not on how many cases are made.
    more = generate_case(replace(TINY, cases=50, unlabeled=20), 0)
    assert np.array_equal(more[0], image) and np.array_equal(more[1], label)
    unlabeled = generate_case(TINY, 0, labeled=False)
    assert unlabeled[0].shape != image.shape or not np.array_equal(unlabeled[0], image)


def test_types_shapes_and_spacing_ranges() -> None:
    s = TINY
    for i in range(3):
        image, label, (sx, sy, sz) = generate_case(s, i)
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert image.shape == label.shape and image.shape[:2] == (s.size, s.size)
        assert sx == sy
        assert s.fov_mm[0] - 1e-6 <= sx * s.size <= s.fov_mm[1] + 1e-6
        assert s.thickness_mm[0] <= sz <= s.thickness_mm[1]
        assert s.extent_mm[0] - 1e-6 <= image.shape[2] * sz <= s.extent_mm[1] + 1e-6
        # Air around the body is about -1000 HU.
        assert abs(float(np.median(image[:3, :3, :])) + 1000) < 40


def test_default_spacing_is_sub_millimetre_in_plane() -> None:
    s = PhantomSettings()
    lo, hi = s.fov_mm[0] / s.size, s.fov_mm[1] / s.size
    assert 0.6 <= lo <= hi <= 0.9


def test_all_organs_present_and_plausible(case) -> None:
    image, label, _ = case
    assert set(np.unique(label)) == set(range(14))
    liver = np.median(image[label == 1])
    aorta = np.median(image[label == 5])
    gallbladder = np.median(image[label == 9])
    assert 30 < liver < 90
    assert aorta > 120
    assert gallbladder < liver


def test_anatomical_sides(case) -> None:
    _, label, _ = case

    def centre(organ: int) -> np.ndarray:
        return np.argwhere(label == organ).mean(axis=0)

    # RAS+: x index grows toward the patient's right, z toward the head.
    assert centre(1)[0] > label.shape[0] / 2 > centre(3)[0]  # liver right, spleen left
    assert centre(2)[0] > centre(13)[0]  # right kidney right of left kidney
    assert centre(6)[0] > centre(5)[0]  # IVC right of the aorta
    assert centre(1)[2] > centre(2)[2]  # liver above the right kidney


def test_z_extents_differ() -> None:
    for i in range(3):
        _, label, _ = generate_case(TINY, i)
        liver = _z_slices(label, 1)
        for small in (7, 8, 9):
            assert 0 < _z_slices(label, small) < liver
        assert liver > label.shape[2] // 3


def test_great_vessels_are_continuous() -> None:
    for i in range(3):
        _, label, _ = generate_case(TINY, i)
        aorta = np.nonzero(np.any(label == 5, axis=(0, 1)))[0]
        ivc = np.nonzero(np.any(label == 6, axis=(0, 1)))[0]
        assert len(aorta) == label.shape[2]  # the aorta runs through every slice
        assert ivc[0] == 0 and np.all(np.diff(ivc) == 1)  # the IVC from the bottom, no gaps


def test_organs_inside_body(case) -> None:
    image, label, _ = case
    body = np.zeros(image.shape, bool)
    for k in range(image.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(image[:, :, k] > -500)
    assert body[label > 0].all()
    # The body does not touch the image border, so it is fully in the field of view.
    assert not body[[0, -1], :, :].any() and not body[:, [0, -1], :].any()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        PhantomSettings(size=4)
    with pytest.raises(ValueError):
        PhantomSettings(thickness_mm=(5.0, 2.5))


def test_write_phantom_layout(written: tuple[Path, list[tuple[int, int]]]) -> None:
    out, calls = written
    assert out.name == "ds"
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["ds"]  # no temporary left behind
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "phantom_0001_0000.nii.gz",
        "phantom_0002_0000.nii.gz",
    ]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [
        "phantom_0001.nii.gz",
        "phantom_0002.nii.gz",
    ]
    assert [p.name for p in (out / "imagesUnlabeled").iterdir()] == ["phantom_u0001_0000.nii.gz"]

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, **{n: i for i, n in ORGANS.items()}}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["name"] and meta["description"]
    assert meta["phantom_settings"] == json.loads(json.dumps(asdict(TINY)))

    image, label, spacing = generate_case(TINY, 1)
    img = nib.load(out / "imagesTr" / "phantom_0002_0000.nii.gz")
    lab = nib.load(out / "labelsTr" / "phantom_0002.nii.gz")
    assert np.array_equal(np.asarray(img.dataobj), image)
    assert np.array_equal(np.asarray(lab.dataobj), label)
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert np.allclose(img.header.get_zooms(), spacing)
    assert np.allclose(np.diag(img.affine)[:3], spacing)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    canonical = nib.as_closest_canonical(img)
    assert np.array_equal(canonical.affine, img.affine)
    assert np.array_equal(np.asarray(canonical.dataobj), image)
    unl = nib.load(out / "imagesUnlabeled" / "phantom_u0001_0000.nii.gz")
    assert np.array_equal(np.asarray(unl.dataobj), generate_case(TINY, 0, labeled=False)[0])


def test_write_phantom_replaces_and_workers_agree(tmp_path: Path) -> None:
    settings = replace(TINY, cases=2, unlabeled=0, size=32)
    # Leftover of a killed run (no such process): cleared by the next write.
    (tmp_path / ".ds.tmp-999999999-deadbeef" / "imagesTr").mkdir(parents=True)
    first = write_phantom(tmp_path / "ds", settings, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    serial = np.asarray(nib.load(first / "imagesTr" / "phantom_0002_0000.nii.gz").dataobj)
    (first / "stale.txt").write_text("old")
    write_phantom(tmp_path / "ds", settings, workers=2)
    assert not (first / "stale.txt").exists()
    assert not (first / "imagesUnlabeled").exists()
    parallel = np.asarray(nib.load(first / "imagesTr" / "phantom_0002_0000.nii.gz").dataobj)
    assert np.array_equal(serial, parallel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = writer._write_one

    def flaky(root: str, settings: PhantomSettings, index: int, labeled: bool) -> float:
        if index == 1:
            raise RuntimeError("boom")
        return real(root, settings, index, labeled)

    monkeypatch.setattr(writer, "_write_one", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        write_phantom(tmp_path / "ds", TINY, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_render_examples(written: tuple[Path, list[tuple[int, int]]], tmp_path: Path) -> None:
    png = render_examples(written[0], tmp_path / "png" / "examples.png", n=3)
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()[:16]


def _array_bytes(a: np.ndarray) -> bytes:
    return f"{a.dtype.str}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()


# Recorded when the generator moved to float64: any change to the phantom's voxels, spacing,
# headers or dataset.json for a seed changes these digests.
PHANTOM_DIGESTS = {
    "labeled 0": "e6cf8d83816eea55",
    "labeled 1": "3b040d6f0efbdd38",
    "unlabeled 0": "c3b36294c2569fca",
    "written": "5860acb59864404f",
}


def test_phantom_bytes_are_pinned(written: tuple[Path, list[tuple[int, int]]]) -> None:
    got = {}
    cases = (("labeled 0", 0, True), ("labeled 1", 1, True), ("unlabeled 0", 0, False))
    for name, index, labeled in cases:
        image, label, spacing = generate_case(TINY, index, labeled=labeled)
        got[name] = _digest(_array_bytes(image), _array_bytes(label), repr(spacing).encode())
    out = written[0]
    parts = [(out / "dataset.json").read_bytes()]
    for path in sorted(out.rglob("*.nii.gz")):
        img = nib.load(path)
        parts += [
            path.relative_to(out).as_posix().encode(),
            img.header.binaryblock,
            _array_bytes(np.asarray(img.dataobj)),
        ]
    got["written"] = _digest(*parts)
    assert got == PHANTOM_DIGESTS


def test_a_live_build_is_never_swept_and_an_old_unlocked_one_is(tmp_path: Path) -> None:
    """A build whose lock is held (another process, here or on another host sharing the
    cache, so its pid means nothing here) stays; an unlocked one with a live pid (a reused
    pid) goes once it is old."""
    import fcntl
    import os
    import time

    settings = replace(TINY, cases=1, unlabeled=0, size=32)
    live = tmp_path / ".ds.tmp-999999999-0000live"
    live.mkdir()
    with (live / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        reused = tmp_path / f".ds.tmp-{os.getpid()}-00reused"
        reused.mkdir()
        old = time.time() - 600
        os.utime(reused, (old, old))
        write_phantom(tmp_path / "ds", settings, workers=1)
        assert live.exists() and not reused.exists()
    assert not (tmp_path / "ds" / ".lock").exists()


def test_the_cache_keeps_a_sound_phantom_another_process_finished_first(tmp_path: Path) -> None:
    settings = replace(TINY, cases=1, unlabeled=0, size=32)
    out = write_phantom(tmp_path / "ds", settings, workers=1)
    (out / "theirs.txt").write_text("made by the process that finished first")
    write_phantom(out, settings, workers=1, keep_sound=True)
    assert (out / "theirs.txt").exists()
    (out / "labelsTr" / "phantom_0001.nii.gz").unlink()  # damaged: replaced
    write_phantom(out, settings, workers=1, keep_sound=True)
    assert (out / "labelsTr" / "phantom_0001.nii.gz").exists() and not (out / "theirs.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


_CASE_DIGEST = """
import hashlib, sys
from benchmark.data.phantom import PhantomSettings, generate_case
index, labeled = int(sys.argv[1]), sys.argv[2] == "1"
image, label, spacing = generate_case(PhantomSettings(), index, labeled=labeled)
print(hashlib.sha256(image.tobytes() + label.tobytes() + repr(spacing).encode()).hexdigest())
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 SIMD levels")
@pytest.mark.parametrize(("index", "labeled"), [(0, True), (0, False)])
def test_a_case_has_the_same_voxels_whatever_simd_and_blas_kernels_compute_it(index, labeled):
    """At full size, with numpy's AVX2/FMA kernels switched off and with another OpenBLAS
    kernel: the same bytes. (In float32 these two cases differed in 35 and 29 voxels, by up
    to 171 HU, so a grid run on two machines was scored on two phantoms.)"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("NPY_DISABLE_CPU_FEATURES", None)
    env.pop("OPENBLAS_CORETYPE", None)
    args = [sys.executable, "-c", _CASE_DIGEST, str(index), str(int(labeled))]

    def digest(**extra: str) -> str:
        return subprocess.run(
            args, env={**env, **extra}, capture_output=True, text=True, check=True
        ).stdout.strip()

    base = digest()
    assert len(base) == 64
    assert digest(NPY_DISABLE_CPU_FEATURES="X86_V3") == base
    assert digest(OPENBLAS_CORETYPE="Prescott") == base
