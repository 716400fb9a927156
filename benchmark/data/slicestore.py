"""The slice store: volumes preprocessed once into memory-mapped 2D slices.

A store holds, for a list of cases, every axial slice windowed to the protocol's HU window,
scaled to [0, 1], resized to `slice_size` × `slice_size` (bilinear with antialiasing for
images, nearest for labels), as `images.npy` (N × S × S, float16) and `labels.npy`
(N × S × S, uint8), plus `index.json` (case of each slice, its z index, whether it holds
any organ, and each case's original shape and spacing). A labeled store also keeps each case's
ground truth as read from its file, `truth/<case>.npy` (X × Y × Z, uint8, original size),
which scoring reads (`SliceStore.ground_truth`): the store records no path of its input, so
it serves the same data wherever the folder lives and never scores against a file that
changed since.

It is keyed by the digest of every byte of every input file (`benchmark.data.digests`,
memoised so that a warm start reads none of them) and the settings, built in a hidden folder
and renamed into place when complete, with a `manifest.json` of its own files written last
(`benchmark.data.cache`): a damaged store is found on open and rebuilt, and what a killed
build leaves is swept by the next one. Reading uses `np.load(mmap_mode="r")`: memory stays
bounded by what is touched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.data.cache import (
    building,
    check_folder,
    full_check_due,
    publish,
    sweep_stale_builds,
    verify_requested,
    write_manifest,
)
from benchmark.data.digests import DigestMemo
from benchmark.data.reader import (
    CaseFiles,
    check_pair,
    read_header,
    read_label,
    read_volume,
    slice_order,
)
from benchmark.errors import DatasetError
from benchmark.fingerprint import source_digest
from benchmark.metrics.segmentation import SliceOrder
from benchmark.protocol import stable_hash

STORE_CODE = ("benchmark.data.slicestore", "benchmark.data.reader")
"""The modules that read, check and preprocess a store's cases: their source is part of the
store's key, so an edit to them builds the store again (no version to remember to bump)."""

STORE_VERSION = 4
"""Bump when the store's content or layout changes, so old caches are not reused. 2: the
geometry and finite-intensity checks, which stores built before them never passed. 3: keyed
by whole-file digests, ground truth and a manifest inside, no input paths. 4: each case's
slice order in its file (`SliceStore.slice_order`), which the z-range rule follows."""

log = logging.getLogger("labelbench.cache")


@dataclass(frozen=True)
class Preprocessing:
    """How volumes become slices."""

    window_hu: tuple[float, float]
    """HU window [low, high] mapped to [0, 1]; values outside are clipped."""
    slice_size: int
    """Output slices are slice_size × slice_size pixels."""
    nonfinite: str = "error"
    """NaN or ±Inf voxels in an image: "error" (a `DatasetError` naming the file) or
    "window_min" (replaced by the window's low end, `window_hu[0]`)."""


def _digest(memo: DigestMemo, path: Path, fresh: bool) -> str:
    try:
        return memo.digest(path, fresh)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def store_key(
    cases: Sequence[CaseFiles],
    prep: Preprocessing,
    known_labels: Sequence[int] = (),
    memo: DigestMemo | None = None,
    fresh: bool = False,
) -> str:
    """Hash of the settings and of every byte of the input files a store is built from, and
    of the code that builds it (`data_key` with `STORE_VERSION` and `STORE_CODE`).

    Case ids (the file names less their suffixes) are part of it, folders are not: two copies
    of one data set share a store, and a copy with one byte changed does not. `fresh` reads
    every file again instead of trusting the memo.
    """
    return _code_key(data_key(cases, prep, known_labels, memo, fresh))


def _code_key(data: str) -> str:
    """The store key of data `data` as this code builds them."""
    return stable_hash({"version": STORE_VERSION, "code": source_digest(*STORE_CODE), "data": data})


def data_key(
    cases: Sequence[CaseFiles],
    prep: Preprocessing,
    known_labels: Sequence[int] = (),
    memo: DigestMemo | None = None,
    fresh: bool = False,
) -> str:
    """What a store holds, whatever code built it: every input file's bytes, the case ids
    and the preprocessing settings. Runs record it as their `dataset_key`, so runs made on
    other data are told apart from runs whose data were read by other code (which their
    code fingerprint tells)."""
    memo = memo or DigestMemo(None)
    files = [
        [
            c.case_id,
            _digest(memo, c.image, fresh),
            _digest(memo, c.label, fresh) if c.label else None,
        ]
        for c in cases
    ]
    return stable_hash(
        {
            "window": prep.window_hu,
            "size": prep.slice_size,
            "nonfinite": prep.nonfinite,
            "labels": sorted(int(k) for k in known_labels),  # the ids the labels were checked on
            "files": files,
        }
    )


def resize_slices(volume: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """(X, Y, Z) volume → (Z, size, size) slices."""
    t = torch.from_numpy(np.ascontiguousarray(volume.transpose(2, 0, 1)))[:, None]
    if nearest:
        out = F.interpolate(t.float(), size=(size, size), mode="nearest-exact")
    else:
        out = F.interpolate(
            t.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return out[:, 0].numpy()


def upsample_labels(slices: np.ndarray, shape_xy: tuple[int, int]) -> np.ndarray:
    """(Z, S, S) label slices → (X, Y, Z) label volume of the original in-plane size."""
    t = torch.from_numpy(np.ascontiguousarray(slices))[:, None].float()
    out = F.interpolate(t, size=shape_xy, mode="nearest-exact")[:, 0]
    return out.to(torch.uint8).numpy().transpose(1, 2, 0)


def source_pixels(size_hw: tuple[int, int], shape_hw: tuple[int, int]) -> np.ndarray:
    """(H', W') flat indices into an (H, W) = ``size_hw`` slice: the pixel each pixel of the
    ``shape_hw`` slice takes its label from in `upsample_labels` (the same interpolation, in
    float32 as there: exact for indices below 2**24)."""
    n = size_hw[0] * size_hw[1]
    if n > 2**24:
        raise ValueError(f"slices of {size_hw} pixels are too large to index in float32")
    index = torch.arange(n, dtype=torch.float32).reshape(1, 1, *size_hw)
    out = F.interpolate(index, size=shape_hw, mode="nearest-exact")
    return out[0, 0].numpy().astype(np.int64)


def window(volume: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """HU → [0, 1] inside the window, clipped outside."""
    lo, hi = window_hu
    return np.clip((volume - lo) / (hi - lo), 0.0, 1.0, dtype=np.float32)


def finite(volume: np.ndarray, path: Path, prep: Preprocessing) -> np.ndarray:
    """The image volume with no NaN or ±Inf voxels, as `prep.nonfinite` says; and in
    Hounsfield units as far as can be told: a CT in HU has voxels below 0 (air is -1000,
    fat about -100), raw scanner values read without their rescale intercept have none, and
    would window to a white image that is still trained on and scored."""
    bad = ~np.isfinite(volume)
    count = int(bad.sum())
    if not count:
        _check_hu(volume, path)
        return volume
    if prep.nonfinite == "window_min":
        _check_hu(volume[~bad], path)  # on the voxels the file holds, not the replacements
        return np.where(bad, np.float32(prep.window_hu[0]), volume)
    n_nan = int(np.isnan(volume).sum())
    raise DatasetError(
        f"{path}: {count} voxels are not finite ({n_nan} NaN, {count - n_nan} ±Inf); fix the "
        f'file, or set nonfinite = "window_min" under [preprocess] in the protocol'
    )


def _check_hu(volume: np.ndarray, path: Path) -> None:
    low = float(volume.min()) if volume.size else 0.0
    if low >= 0:
        raise DatasetError(
            f"{path}: no voxel below 0 (lowest {low:g}), so not a CT in Hounsfield units (air "
            f"is -1000 HU); store HU, or set the header's scl_slope / scl_inter"
        )


class SliceStore:
    """A built store, opened read-only with memory maps."""

    def __init__(self, root: Path):
        self.root = Path(root)
        meta = json.loads((self.root / "index.json").read_text())
        self.key: str = meta["key"]
        self.data_key: str = meta.get("data_key", self.key)
        """What the store holds, whatever code built it (`data_key`)."""
        self.slice_size: int = meta["slice_size"]
        self.case_ids: list[str] = meta["case_ids"]
        self.cases: dict[str, dict] = meta["cases"]
        self.slice_case: np.ndarray = np.asarray(meta["slice_case"], dtype=np.int32)
        self.slice_z: np.ndarray = np.asarray(meta["slice_z"], dtype=np.int32)
        self.foreground: np.ndarray = np.asarray(meta["foreground"], dtype=bool)
        self.images: np.ndarray = np.load(self.root / "images.npy", mmap_mode="r")
        labels = self.root / "labels.npy"
        self.labels: np.ndarray | None = np.load(labels, mmap_mode="r") if labels.exists() else None
        shape = (len(self.slice_case), self.slice_size, self.slice_size)
        for array in (self.images, self.labels):
            if array is not None and array.shape != shape:
                raise ValueError(f"slices of shape {array.shape}, index.json says {shape}")

    def __len__(self) -> int:
        return len(self.slice_case)

    def slice_id(self, row: int) -> str:
        return f"{self.case_ids[self.slice_case[row]]}:{int(self.slice_z[row]):04d}"

    def to_volume(self, case_id: str, slices: np.ndarray) -> np.ndarray:
        """(Z, S, S) label slices of a case → its (X, Y, Z) volume at the original in-plane
        size, as every prediction (and the protocol's ceiling) is scored."""
        shape = self.cases[case_id]["shape"]
        return upsample_labels(slices, (shape[0], shape[1]))

    def rows_of_case(self, case_id: str) -> np.ndarray:
        """Rows of one case, in z order."""
        return np.flatnonzero(self.slice_case == self.case_ids.index(case_id))

    def ground_truth(self, case_id: str) -> tuple[np.ndarray, tuple[float, float, float]]:
        """A labeled case's label volume (X, Y, Z), uint8, at its original size in canonical
        orientation, exactly as read from its file when the store was built, and the label
        file's spacing (mm): what its predictions are scored against."""
        spacing = self.cases[case_id].get("truth_spacing")
        if spacing is None:
            raise KeyError(f"case {case_id} of slice store {self.root} has no label")
        truth = np.load(self.root / "truth" / f"{case_id}.npy")
        return truth, (float(spacing[0]), float(spacing[1]), float(spacing[2]))

    def slice_order(self, case_id: str) -> SliceOrder:
        """The case's slice axis and direction in its file, relative to the canonical volume."""
        axis, reversed_ = self.cases[case_id]["slice_order"]
        return SliceOrder(int(axis), bool(reversed_))


def build_slice_store(
    cases: Sequence[CaseFiles],
    prep: Preprocessing,
    cache_dir: Path,
    known_labels: Sequence[int] = (),
    progress: Callable[[int, int], None] | None = None,
) -> SliceStore:
    """Open the store for these cases and settings, building it first when the cache lacks it
    or holds a damaged one (rebuilt with one warning).

    Labeled cases (with `label`) are validated against `known_labels`; image and label must
    lie on one voxel grid (shape, spacing, origin, direction), and images hold only finite
    values unless `prep.nonfinite` replaces them. Raises `DatasetError` naming the file on any
    bad input. Within `benchmark.data.cache.verifying()` every input file is hashed again and
    the store checked byte by byte.
    """
    if not cases:
        raise DatasetError("no cases to preprocess")
    slices = Path(cache_dir) / "slices"
    sweep_stale_builds(slices)
    with DigestMemo.in_cache(cache_dir) as memo:
        data = data_key(cases, prep, known_labels, memo, fresh=verify_requested())
        key = _code_key(data)
        root = slices / key
        if root.exists():
            problem = check_folder(root, memo, full=full_check_due(root, memo))
            if problem is None:
                try:
                    return SliceStore(root)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    problem = f"it cannot be opened ({exc})"
            log.warning("rebuilding the slice store %s: %s", root, problem)
        with building(slices, key) as tmp:
            _write_store(tmp, key, data, cases, prep, known_labels, progress)
            write_manifest(tmp)
            publish(tmp, root, memo)
    return SliceStore(root)


def _write_store(
    out: Path,
    key: str,
    data: str,
    cases: Sequence[CaseFiles],
    prep: Preprocessing,
    known_labels: Sequence[int],
    progress: Callable[[int, int], None] | None,
) -> None:
    """Read, check and preprocess every case into the empty folder `out`."""
    labeled = cases[0].label is not None
    headers = []
    for case in cases:
        header = read_header(case.image)
        if labeled:
            assert case.label is not None
            check_pair(case, header, read_header(case.label))
        headers.append(header)
    total = sum(h.shape[2] for h in headers)
    size = prep.slice_size
    images = np.lib.format.open_memmap(out / "images.npy", "w+", np.float16, (total, size, size))
    labels = None
    if labeled:
        labels = np.lib.format.open_memmap(out / "labels.npy", "w+", np.uint8, (total, size, size))
        (out / "truth").mkdir()
    slice_case, slice_z, foreground = [], [], []
    meta_cases = {}
    row = 0
    for i, (case, header) in enumerate(zip(cases, headers, strict=True)):
        volume, spacing = read_volume(case.image)
        volume = finite(volume, case.image, prep)
        if volume.shape != header.shape:
            raise DatasetError(f"{case.image}: data shape {volume.shape} differs from header")
        depth = volume.shape[2]
        images[row : row + depth] = resize_slices(window(volume, prep.window_hu), size, False)
        del volume
        meta_cases[case.case_id] = {
            "shape": list(header.shape),
            "spacing": list(spacing),
            "slice_order": list(slice_order(header.affine)),
        }
        if labels is not None:
            assert case.label is not None
            label, label_spacing = read_label(case.label, known_labels)
            np.save(out / "truth" / f"{case.case_id}.npy", label)
            meta_cases[case.case_id]["truth_spacing"] = list(label_spacing)
            small = resize_slices(label, size, nearest=True).astype(np.uint8)
            labels[row : row + depth] = small
            # At the slice size the methods see: an organ that only the full-resolution slice
            # shows (its few pixels lost in the resize) makes no labeled slice of it.
            foreground.extend(bool(v) for v in small.reshape(depth, -1).any(axis=1))
        else:
            foreground.extend([False] * depth)
        slice_case.extend([i] * depth)
        slice_z.extend(range(depth))
        row += depth
        if progress:
            progress(i + 1, len(cases))
    images.flush()
    del images
    if labels is not None:
        labels.flush()
        del labels
    meta = {
        "key": key,
        "data_key": data,
        "version": STORE_VERSION,
        "slice_size": size,
        "window_hu": list(prep.window_hu),
        "case_ids": [c.case_id for c in cases],
        "cases": meta_cases,
        "slice_case": slice_case,
        "slice_z": slice_z,
        "foreground": foreground,
    }
    (out / "index.json").write_text(json.dumps(meta))
