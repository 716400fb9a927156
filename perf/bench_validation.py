"""Seconds per validation (scoring only, predictions given) on a protocol's validation cases,
three ways, on one core, in one run (read the ratios: the machine is shared):

- ``grouped``: `Validator.score_slices`, what training calls: the ground truth grouped once
  per run into (predicted pixel, true label, voxel count) triples, then one weighted count;
- ``volume``: each case's predicted volume built at its original size (`SliceStore.to_volume`)
  and scored with `dice_case` (one confusion count over the volume);
- ``masks``: the same volume scored by `score_case` with DSC only (a mask per organ, what
  `dice_case` did before counting).

The predictions are the validation slices' own resized ground truth with a fraction of
pixels set to random labels (``--noise``): speckle like an early model's, which widens every
organ's bounding box as real predictions do. Prints the one-off grouping time, the seconds per
validation, the speedups and the largest difference in mean DSC (must be 0).

    LABELBENCH_CACHE=... python perf/bench_validation.py [--protocol phantom] [--noise 0.02]
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import time

import numpy as np
import torch

from benchmark.data.context import load_data
from benchmark.metrics.registry import Scoring
from benchmark.metrics.segmentation import dice_case, score_case
from benchmark.progress import Progress
from benchmark.protocol import load_protocol
from benchmark.validation import Validator

torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="phantom")
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    protocol = load_protocol(args.protocol)
    data = load_data(protocol, None, Progress(quiet=True))
    store = data.store
    val = Validator(store, data.split.val, protocol)
    rng = np.random.default_rng(args.seed)
    truth = np.asarray(store.labels[val.slices.rows], dtype=np.int64)
    noisy = rng.random(truth.shape) < args.noise
    pred = np.where(noisy, rng.integers(0, protocol.num_classes, truth.shape), truth)
    labels, zrange = protocol.labels, protocol.scoring.zrange_labels
    dsc_only = Scoring.of(["dsc"], zrange_labels=zrange)
    truths = [store.ground_truth(c) for c in val.case_ids]  # read once, as the validator does

    def volume_path(per_case) -> float:
        scores = []
        for i, (case, (gt, spacing)) in enumerate(zip(val.case_ids, truths, strict=True)):
            volume = store.to_volume(case, pred[val._bounds[i] : val._bounds[i + 1]])
            scores.extend(per_case(volume, gt, spacing, store.slice_order(case)))
        return float(np.mean(scores))

    def volume() -> float:
        return volume_path(lambda v, gt, sp, o: dice_case(v, gt, labels, zrange, o).values())

    def masks() -> float:
        return volume_path(
            lambda v, gt, sp, o: (
                s["dsc"] for s in score_case(v, gt, sp, labels, dsc_only, o).values()
            )
        )

    t = time.perf_counter()
    val._ground_truth()
    grouping = time.perf_counter() - t
    ways = {"grouped": lambda: val.score_slices(pred), "volume": volume, "masks": masks}
    seconds, means = {}, {}
    for name, fn in ways.items():
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            means[name] = fn()
            times.append(time.perf_counter() - t)
        seconds[name] = min(times)

    slices = len(val.slices)
    shapes = {tuple(gt.shape) for gt, _ in truths}
    print(
        f"{args.protocol}: {len(val)} validation cases, {slices} slices, volumes {sorted(shapes)}"
    )
    print(
        f"predictions: resized truth, {args.noise:.0%} random labels "
        f"(mean DSC {means['grouped']:.4f})"
    )
    print(f"grouping the ground truth (once per run): {grouping:.3f} s")
    for name, s in seconds.items():
        print(f"{name:>8}: {s:.3f} s per validation")
    print(f"speedup grouped vs volume: {seconds['volume'] / seconds['grouped']:.1f}x")
    print(f"speedup grouped vs masks:  {seconds['masks'] / seconds['grouped']:.1f}x")
    print(f"speedup volume vs masks:   {seconds['masks'] / seconds['volume']:.1f}x")
    diff = max(abs(means[n] - means["masks"]) for n in means)
    print(f"largest difference in mean DSC: {diff:.2e}")


if __name__ == "__main__":
    main()
