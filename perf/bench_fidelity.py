"""Generative-quality figures (CPU by default): the time to sample N images and, separately,
the time for the metrics (FID, sFID, precision / recall / F1, KID) and for MS-SSIM diversity.

    python perf/bench_fidelity.py [--n N] [--sampler ddim] [--steps 50]
        [--inception-weights FILE] [--random-inception] [--protocol phantom] [--device cpu]

N defaults to all of the protocol's test slices, at most 1000 (458 on the phantom). The model
is the cached default diffusion pretraining when there is one; otherwise a randomly
initialised DDPM of the same architecture, which samples at the same speed (the scores then
mean nothing). Nothing is pretrained here. Features come from Inception-v3 when its weights
file is found (as for `bench fidelity`); otherwise from the stand-in extractor, or, with
`--random-inception`, from Inception-v3 with random weights (the real cost, meaningless
scores). Every such substitution is printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from benchmark.compute import configure
from benchmark.data.context import load_data
from benchmark.errors import WeightsError
from benchmark.fidelity import MS_SSIM_PAIRS, real_images, real_test_rows
from benchmark.method import RunContext
from benchmark.metrics.generative import (
    INCEPTION_FILE,
    compute_fidelity,
    mean_pairwise_ms_ssim,
    resolve_inception_weights,
)
from benchmark.progress import Progress
from benchmark.protocol import load_protocol
from benchmark.provenance import describe_device, resolve_device
from benchmark.runner import run_pretraining
from methods.diffusion.linear import DiffusionLinear
from methods.diffusion.model import build_unet, model_resolution
from methods.diffusion.pretrain import load_pretrained


def cached_or_untrained(protocol, data, device, progress) -> tuple[DiffusionLinear, RunContext]:
    """diffusion-linear with the cached default DDPM, else a random one; never pretrains."""
    method = DiffusionLinear(configure(DiffusionLinear, [], protocol.training)[0])
    ctx = RunContext(device, 0, protocol.num_classes, Path(), progress)

    def load_only(unlabeled, ctx: RunContext) -> None:
        model = load_pretrained(method.config, ctx.cache_dir)
        ctx.info["cached"] = model is not None
        if model is None:
            torch.manual_seed(0)
            model = build_unet(method.config)
        method.backbone = model.to(device).eval()
        method.resolution = model_resolution(method.config, unlabeled.slice_size)

    method.pretrain = load_only  # the runner's cache key and folder, without training
    run_pretraining(method, protocol, data.index, ctx, progress)
    return method, ctx


def random_inception_file(folder: Path) -> Path:
    """Inception-v3 (torch-fidelity's module) with random weights, saved like the real file."""
    import torch_fidelity.feature_extractor_inceptionv3 as fi

    with (
        mock.patch.object(fi, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(fi.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None),
    ):
        model = fi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = folder / INCEPTION_FILE
    torch.save(model.state_dict(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--sampler", default="ddim", choices=("ddpm", "ddim"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--protocol", default="phantom")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inception-weights", type=Path, default=None)
    parser.add_argument("--random-inception", action="store_true")
    args = parser.parse_args()

    progress = Progress(quiet=True)
    device = resolve_device(args.device)
    protocol = load_protocol(args.protocol)
    data = load_data(protocol, None, progress)
    rows = real_test_rows(data, args.n, args.seed)
    n = len(rows)
    method, ctx = cached_or_untrained(protocol, data, device, progress)
    lines = [
        f"bench_fidelity: {protocol.name}, N = {n} samples vs {n} real test slices, "
        f"{describe_device(device)}",
        "model: "
        + (
            f"cached default diffusion pretraining ({ctx.info['pretrain_cache']})"
            if ctx.info["cached"]
            else "randomly initialised DDPM of the default architecture (no cached "
            "pretraining; same sampling cost, the scores mean nothing)"
        ),
    ]

    t = time.perf_counter()
    samples = method.sample(n, args.sampler, args.steps, args.seed, ctx)
    sample_s = time.perf_counter() - t
    lines.append(
        f"sampling ({args.sampler}, {args.steps} steps, {n} images at "
        f"{samples.shape[-1]}×{samples.shape[-1]}): {sample_s:.1f}s ({n / sample_s:.2f} images/s)"
    )

    real = real_images(data, rows, int(samples.shape[-1]))
    with tempfile.TemporaryDirectory() as tmp:
        extractor, weights, meaningless = "inception", None, ""
        try:
            weights = resolve_inception_weights(args.inception_weights)
            features = "Inception-v3"
        except WeightsError as exc:
            if args.random_inception:
                weights = random_inception_file(Path(tmp))
                features = "Inception-v3 with RANDOM weights (real cost; scores meaningless)"
            else:
                extractor = "stand-in"
                features = "STAND-IN extractor, not Inception (Inception weights absent)"
            meaningless = " (meaningless: not Inception's weights)"
            lines.append(f"note: {exc}")
        t = time.perf_counter()
        scores = compute_fidelity(
            samples, real, weights, extractor=extractor, device=device, seed=args.seed
        )
        metric_s = time.perf_counter() - t
    lines.append(
        f"metrics (FID, sFID, precision/recall/F1, KID; {features}): {metric_s:.1f}s "
        f"({2 * n / metric_s:.2f} images/s through the extractor, both sets)"
    )
    t = time.perf_counter()
    ms_ssim, pairs = mean_pairwise_ms_ssim(samples, MS_SSIM_PAIRS, args.seed)
    diversity_s = time.perf_counter() - t
    lines.append(f"diversity (MS-SSIM, {pairs} pairs): {diversity_s:.1f}s")
    lines.append(f"sampling + metrics + diversity: {sample_s + metric_s + diversity_s:.1f}s")
    lines.append(
        f"scores{meaningless}: FID {scores['fid']:.2f}  sFID {scores['sfid']:.2f}  "
        f"P {scores['precision']:.3f}  R {scores['recall']:.3f}  F1 {scores['f1']:.3f}  "
        f"KID {scores['kid']:.4f}  MS-SSIM {ms_ssim:.3f}"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
