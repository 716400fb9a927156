"""`bench fidelity`: samples of a pretrained generative method against held-out real slices.

`prepare_fidelity` checks everything the user gave (method can sample, one of its samplers,
N, weights file, protocol, enough real test slices) before any sampling; `evaluate_fidelity`
then loads the (cached) pretrained model, samples, scores (FID, sFID, precision, recall, F1,
KID, and MS-SSIM diversity) and writes one row of the store's `generative` table in one
transaction.

Real slices come only from the protocol's test cases (never a training or validation
slice): N of them, drawn with the seed, resized to the samples' resolution.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.compute import configure
from benchmark.config import config_dict, identity_dict
from benchmark.data.context import DataContext, load_data
from benchmark.errors import ConfigError, PredictionError, ProtocolError
from benchmark.fingerprint import fidelity_code
from benchmark.method import SliceSet
from benchmark.metrics.generative import (
    EXTRACTORS,
    KID_MAX_SUBSET,
    PRC_NEIGHBORHOOD,
    compute_fidelity,
    mean_pairwise_ms_ssim,
    resolve_inception_weights,
)
from benchmark.progress import Progress
from benchmark.protocol import Protocol, load_protocol, stable_hash
from benchmark.provenance import build_provenance, describe_device, resolve_device
from benchmark.registry import get_generative
from benchmark.runner import pretrained_method
from benchmark.store import GenerativeRecord, ResultsStore, check_results_dir

DEFAULT_N = 1000
MS_SSIM_PAIRS = 5000
FIDELITY_PROTOCOL = "phantom-fidelity"
"""Built-in protocol: the phantom with enough held-out slices for `--n 1000`."""


@dataclass
class FidelityRequest:
    """One `bench fidelity` as the user asked for it."""

    method: str
    protocol: str = "phantom"
    n: int | None = None
    """Samples and real slices; None = all test slices, at most 1000."""
    sampler: str | None = None
    """None = the method's first sampler."""
    steps: int | None = None
    """None = the method's `default_steps` for the sampler."""
    seed: int = 0
    device: str = "auto"
    results: Path = Path("runs")
    overrides: list[str] = field(default_factory=list)
    data: Path | None = None
    inception_weights: Path | None = None
    extractor: str = "inception"


@dataclass
class PreparedFidelity:
    request: FidelityRequest
    data: DataContext
    config: Any
    sampler: str
    """The request's, or the method's default."""
    steps: int
    """The request's, or the method's default for `sampler`."""
    weights: Path | None
    n: int
    real_rows: np.ndarray
    phases: dict[str, float]


@dataclass
class FidelityOutcome:
    record: GenerativeRecord
    scores: dict[str, float]
    samples: torch.Tensor


def _larger_test_set_hint(protocol: Protocol) -> str:
    """', or --protocol phantom-fidelity (...)' where that protocol has more phantom test cases."""
    if protocol.dataset.source != "phantom":
        return ""
    try:
        larger = load_protocol(FIDELITY_PROTOCOL)
    except ProtocolError:  # not installed beside the package: no hint, the error stands
        return ""
    if larger.n_test <= protocol.n_test:
        return ""
    return f", or --protocol {FIDELITY_PROTOCOL} (the phantom with {larger.n_test} test cases)"


def real_test_rows(data: DataContext, n: int | None, seed: int) -> np.ndarray:
    """Slice-store rows of N test-case slices drawn with `seed` (sorted); ConfigError if too few."""
    rows = np.concatenate(
        [data.store.rows_of_case(c) for c in data.split.test] or [np.zeros(0, np.int64)]
    )
    available = len(rows)
    if n is None:
        n = min(DEFAULT_N, available)
    if n > available:
        raise ConfigError(
            f"--n {n}: protocol '{data.protocol.name}' has only {available} slices in its "
            f"{len(data.split.test)} test cases (real slices never come from training cases); "
            f"use --n {available} or fewer{_larger_test_set_hint(data.protocol)}"
        )
    if n < PRC_NEIGHBORHOOD + 1:
        raise ConfigError(
            f"--n {n}: need at least {PRC_NEIGHBORHOOD + 1} samples and real slices "
            f"(precision / recall use k = {PRC_NEIGHBORHOOD} neighbours)"
        )
    drawn = np.random.default_rng(seed).choice(available, size=n, replace=False)
    return np.sort(rows[drawn])


def real_images(data: DataContext, rows: np.ndarray, size: int) -> torch.Tensor:
    """(N, 1, size, size) real slices in [0, 1], resized like the DDPM's training input."""
    images = SliceSet(data.store, rows, labeled=False).images()
    if images.shape[-1] != size:
        images = F.interpolate(
            images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        ).clamp(0, 1)
    return images


def prepare_fidelity(
    request: FidelityRequest, progress: Progress, data: DataContext | None = None
) -> PreparedFidelity:
    """Validate the request and load the protocol's data; raises a `LabelbenchError`."""
    t0 = time.perf_counter()
    method_cls = get_generative(request.method)
    sampler = method_cls.check_sampler(request.sampler)
    if request.extractor not in EXTRACTORS:
        raise ConfigError(
            f"feature extractor {request.extractor}: expected one of {', '.join(EXTRACTORS)}"
        )
    protocol = data.protocol if data else load_protocol(request.protocol)
    config, _ = configure(method_cls, request.overrides, protocol.training)
    steps = method_cls.check_steps(config, sampler, request.steps)
    check_results_dir(request.results)
    weights = None
    if EXTRACTORS[request.extractor][1].needs_weights:
        weights = resolve_inception_weights(request.inception_weights)
    t_data = time.perf_counter()
    data = data or load_data(protocol, request.data, progress)
    t_data = time.perf_counter() - t_data
    rows = real_test_rows(data, request.n, request.seed)
    phases = {"data": t_data, "prepare": time.perf_counter() - t0 - t_data}
    return PreparedFidelity(request, data, config, sampler, steps, weights, len(rows), rows, phases)


def _file_digest(path: Path | None) -> str:
    from benchmark.checkpoint import sha256_file

    return f"{path.name} sha256:{sha256_file(path)[:16]}" if path else "none"


def check_samples(samples: torch.Tensor, method: str, n: int) -> None:
    """`PredictionError` when samples hold NaN or infinity: clipped to uint8 they would be
    scored as black or white images, and a diverged model would get a plausible FID."""
    if samples.shape[0] != n:
        raise PredictionError(f"{method}: sample() returned {samples.shape[0]} images, not {n}")
    bad = int((~torch.isfinite(samples)).flatten(1).any(1).sum())
    if bad:
        raise PredictionError(
            f"{method}: {bad} of {n} samples hold NaN or infinite values (a diverged model?); "
            f"nothing is scored or stored"
        )


def evaluate_fidelity(prep: PreparedFidelity, progress: Progress) -> FidelityOutcome:
    """Sample, score and store. Phases: data, prepare, pretrain, sample, metrics, diversity."""
    req, data = prep.request, prep.data
    phases = dict(prep.phases)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t_run = time.perf_counter()
    device = resolve_device(req.device)
    sampler, steps = prep.sampler, prep.steps

    t = time.perf_counter()
    # Seed 0 as in `bench sample`: a generative method's pretraining has its own seed.
    model, ctx = pretrained_method(
        req.protocol, req.method, req.overrides, req.device, req.data, 0, progress
    )
    phases["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    samples = model.sample(prep.n, sampler, steps, req.seed, ctx).cpu()
    phases["sample"] = time.perf_counter() - t
    check_samples(samples, req.method, prep.n)

    t = time.perf_counter()
    real = real_images(data, prep.real_rows, int(samples.shape[-1]))
    task = progress.task(f"features ({req.extractor})", 2 * prep.n)
    try:
        scores = compute_fidelity(
            samples,
            real,
            prep.weights,
            extractor=req.extractor,
            device=device,
            seed=req.seed,
            on_batch=task.advance,
        )
    finally:
        task.close()
    phases["metrics"] = time.perf_counter() - t

    t = time.perf_counter()
    ms_ssim, pairs = mean_pairwise_ms_ssim(samples, MS_SSIM_PAIRS, req.seed)
    phases["diversity"] = time.perf_counter() - t

    protocol = data.protocol
    weights = _file_digest(prep.weights)
    # What the evaluation is of and how it was made: the record's fields and its key's.
    made = {
        "method": req.method,
        "config": config_dict(prep.config),
        "pretrain_cache": ctx.info.get("pretrain_cache", ""),
        "sampler": sampler,
        "steps": steps,
        "n": prep.n,
        "seed": req.seed,
        "extractor": req.extractor,
    }
    data_keys = {"dataset": data.store.key, "split": data.split.hash}
    identity = {**made, "config": identity_dict(prep.config)}  # execution-only fields left out
    key = stable_hash({"protocol": protocol.hash, **data_keys, **identity, "weights": weights})
    wall_s = sum(prep.phases.values()) + time.perf_counter() - t_run
    record = GenerativeRecord(
        **vars(build_provenance(data, describe_device(device), phases, wall_s, started)),
        gen_id=f"{key[:12]}-{uuid.uuid4().hex[:8]}",
        gen_key=key,
        **made,
        extractor_weights=weights,
        real_ids=[data.store.slice_id(r) for r in prep.real_rows],
        fid=scores["fid"],
        sfid=scores["sfid"],
        precision=scores["precision"],
        recall=scores["recall"],
        f1=scores["f1"],
        kid=scores["kid"],
        kid_std=scores["kid_std"],
        ms_ssim=ms_ssim,
        info={
            "prc_neighborhood": PRC_NEIGHBORHOOD,
            "kid_subset_size": min(KID_MAX_SUBSET, prep.n),
            "ms_ssim_pairs": pairs,
            "resolution": int(samples.shape[-1]),
            "pretrain": ctx.info.get("pretrain", {}),
        },
        code=fidelity_code(get_generative(req.method).__module__),
    )
    ResultsStore(req.results).write_generative(record)
    return FidelityOutcome(record, scores, samples)
