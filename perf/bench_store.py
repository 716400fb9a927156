"""Slices per second for training: the memory-mapped slice store vs reading NIfTI each time.

Generates a few default-size phantom cases (512 × 512 in-plane) into a temporary folder,
builds the store at the default protocol's slice size, then reads the same random slice
indices (a) from the store and (b) from the NIfTI files, windowed and resized exactly as
the store does (nibabel proxy slicing, so only up to the slice is decompressed).

    python perf/bench_store.py [--cases 4] [--reads 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmark.data.phantom import PhantomSettings, write_phantom
from benchmark.data.reader import discover
from benchmark.data.slicestore import Preprocessing, build_slice_store, resize_slices, window
from benchmark.method import SliceSet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    prep = Preprocessing((-160.0, 240.0), 128)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_phantom(Path(tmp) / "ph", PhantomSettings(cases=args.cases, unlabeled=0))
        index = discover(root)
        t = time.perf_counter()
        store = build_slice_store(
            index.labeled, prep, Path(tmp) / "cache", known_labels=range(1, 14)
        )
        build_s = time.perf_counter() - t
        rng = np.random.default_rng(0)
        rows = rng.integers(0, len(store), args.reads)
        full = SliceSet(store, np.arange(len(store)), labeled=True)

        t = time.perf_counter()
        for i in range(0, args.reads, args.batch):
            idx = rows[i : i + args.batch]
            full.images(idx), full.labels(idx)
        store_rate = args.reads / (time.perf_counter() - t)

        files = {c.case_id: c for c in index.labeled}
        t = time.perf_counter()
        for r in rows:
            case = files[store.case_ids[store.slice_case[r]]]
            z = int(store.slice_z[r])
            img = nib.as_closest_canonical(nib.load(case.image))
            lab = nib.as_closest_canonical(nib.load(case.label))
            x = np.asarray(img.dataobj[:, :, z : z + 1], dtype=np.float32)
            y = np.asarray(lab.dataobj[:, :, z : z + 1])
            resize_slices(window(x, prep.window_hu), prep.slice_size, nearest=False)
            resize_slices(y, prep.slice_size, nearest=True)
        nifti_rate = args.reads / (time.perf_counter() - t)

    print(f"store build: {len(store)} slices from {args.cases} cases in {build_s:.1f}s")
    print(f"slice store: {store_rate:,.0f} slices/s (image + label, batches of {args.batch})")
    print(f"NIfTI each time: {nifti_rate:,.1f} slices/s")
    print(f"ratio store / NIfTI: {store_rate / nifti_rate:,.0f}x (target >= 10x)")


if __name__ == "__main__":
    main()
