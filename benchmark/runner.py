"""The runner: (method, protocol, budget, seed) → per-case, per-organ metrics in the store.

`prepare` does everything that can fail because of the user's input (protocol, method,
budget, `--set`, data validation, preprocessing) and writes nothing to the results store; it
also fills the method's steps from the protocol's training budget (`benchmark.compute`).
`execute` then pretrains (cached), fits (validating on the protocol's validation cases),
scores the fitted model on its own labeled slices (the sanity gate, `benchmark.trust`: below
the protocol's threshold the run is `unfit`, recorded and shown but never ranked), predicts
every test case slice by slice, stacks the slices back into the volume at its original size,
scores it, and writes one transaction. The data it runs on is loaded by
`benchmark.data.context`.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmark.compute import Compute, beyond_budget, configure, settle
from benchmark.config import config_dict, identity_dict
from benchmark.data.context import DataContext, load_data, preprocessing
from benchmark.data.reader import DatasetIndex
from benchmark.data.slicestore import SliceStore, build_slice_store
from benchmark.data.source import cache_root, resolve_dataset
from benchmark.distributed import rank_zero_first
from benchmark.errors import DatasetError
from benchmark.fingerprint import code_fingerprint, scoring_code
from benchmark.method import Method, RunContext, SliceSet
from benchmark.metrics.segmentation import score_case
from benchmark.prediction import check_labels
from benchmark.progress import Progress
from benchmark.protocol import Budget, Protocol, load_protocol, stable_hash
from benchmark.provenance import (
    Provenance,
    build_provenance,
    describe_device,
    peak_memory_mb,
    resolve_device,
    timestamp,
)
from benchmark.registry import get_method
from benchmark.store import MetricRow, ResultsStore, RunRecord, wide
from benchmark.trust import Trust, check_fitted, recorded_curve
from benchmark.validation import Validator


@dataclass
class RunRequest:
    """One run as the user asked for it."""

    method: str
    budget: str
    protocol: str = "phantom"
    seed: int = 0
    device: str = "auto"
    results: Path = Path("runs")
    overrides: list[str] = field(default_factory=list)
    data: Path | None = None
    force: bool = False
    save_predictions: Path | None = None
    """Folder to write each test case's predicted label volume into, as `<case>.nii.gz` on
    its ground-truth file's voxel grid (what `bench evaluate` reads back)."""


@dataclass
class Prepared:
    request: RunRequest
    data: DataContext
    method_cls: type[Method]
    config: Any
    budget: Budget
    budget_ids: list[str]
    budget_rows: np.ndarray
    run_key: str
    phases: dict[str, float]
    compute: Compute
    code: str
    """Code fingerprint (`benchmark.fingerprint`), part of `run_key`."""


def prepare(request: RunRequest, progress: Progress, data: DataContext | None = None) -> Prepared:
    """Validate everything and preprocess; raises a `LabelbenchError` on bad input.

    The caller that writes the store checks the results folder first (`check_results_dir`),
    once, in its own process: sweep workers call this too and never open the store.

    Phases recorded: `data` (phantom generation, reading and preprocessing; 0 when the
    caller passes a loaded `data`) and `prepare` (the rest).
    """
    t0 = time.perf_counter()
    protocol = data.protocol if data else load_protocol(request.protocol)
    method_cls = get_method(request.method)
    config, compute = configure(method_cls, request.overrides, protocol.training)
    budget = protocol.budget(request.budget)
    t_data = time.perf_counter()
    data = data or load_data(protocol, request.data, progress)
    t_data = time.perf_counter() - t_data
    ids, rows = data.budget_rows(budget, request.seed)
    # A finished run is reused only by the same code: its fingerprint is part of the key.
    code = code_fingerprint(method_cls.__module__)
    # A method that pretrains is also keyed by its unlabeled pool: another pool, another run.
    pool = {"pool": data.pool_key} if method_cls.uses_pretraining else {}
    key = stable_hash(
        {
            **pool,
            "protocol": protocol.hash,
            "dataset": data.store.key,
            "split": data.split.hash,
            "method": request.method,
            "config": identity_dict(config),  # execution-only fields are not the run's identity
            "budget": budget.name,
            "seed": request.seed,
            "code": code,
        }
    )
    phases = {"data": t_data, "prepare": time.perf_counter() - t0 - t_data}
    return Prepared(
        request, data, method_cls, config, budget, ids, rows, key, phases, compute, code
    )


@dataclass
class RunOutcome:
    run_id: str
    status: str  # completed | unfit | skipped | elsewhere (finished meanwhile, kept) | failed
    per_organ: pd.DataFrame | None = None
    error: str | None = None
    record: RunRecord | None = None


def run_pretraining(
    method: Method, protocol: Protocol, index: DatasetIndex, ctx: RunContext, progress: Progress
) -> None:
    """Preprocess the unlabeled pool and call `method.pretrain` with its cache folder.

    The folder is keyed by `method.pretrain_key(seed)`, the pool's content hash and the code
    fingerprint of the pretraining's code (`Method.pretrain_code`), so every run (and every
    method) with the same key and code shares one pretraining, and none reuses one made by
    other code or package versions.
    """
    if not index.unlabeled:
        raise DatasetError(
            f"{index.root}: method '{method.name}' pretrains on unlabeled slices but the data set "
            f"has no unlabeled folder (imagesUnlabeled/)"
        )

    def build() -> SliceStore:
        return build_slice_store(
            index.unlabeled,
            preprocessing(protocol),
            cache_root(),
            progress=progress.callback("preprocess unlabeled"),
        )

    store = rank_zero_first(build)
    unlabeled = SliceSet(store, np.arange(len(store)), labeled=False)
    code = code_fingerprint(method.pretrain_code or type(method).__module__)
    key = stable_hash({"pretrain": method.pretrain_key(ctx.seed), "pool": store.key, "code": code})
    ctx.cache_dir = cache_root() / "pretrain" / key
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    ctx.info["pretrain_cache"] = key
    ctx.info["pretrain_code"] = code
    ctx.info["pool"] = store.key
    method.pretrain(unlabeled, ctx)


def pretrained_method(
    protocol_name: str,
    method_name: str,
    overrides: list[str],
    device: str,
    data: Path | None,
    seed: int,
    progress: Progress,
    check: Callable[[type[Method], Any], None] | None = None,
) -> tuple[Method, RunContext]:
    """A method after (cached) pretraining, for `bench pretrain` and `bench sample`.
    `check(method class, config)` runs on the configured method before any data is read or
    pretrained (`bench sample` checks its steps there)."""
    from benchmark.errors import UnknownMethodError

    protocol = load_protocol(protocol_name)
    method_cls = get_method(method_name)
    if not method_cls.uses_pretraining:
        raise UnknownMethodError(f"method '{method_name}' has no pretraining")
    config, _ = configure(method_cls, overrides, protocol.training)
    if check is not None:
        check(method_cls, config)
    index = rank_zero_first(lambda: resolve_dataset(protocol, data, progress))
    ctx = RunContext(
        device=resolve_device(device),
        seed=seed,
        num_classes=protocol.num_classes,
        cache_dir=cache_root() / "pretrain",
        progress=progress,
    )
    method = method_cls(config)
    run_pretraining(method, protocol, index, ctx, progress)
    return method, ctx


def predict_case(method: Method, store: SliceStore, case_id: str, num_classes: int) -> np.ndarray:
    """Predict every slice of a case and stack them into an (X, Y, Z) label volume; the
    prediction must be label maps of the protocol's ids (`benchmark.prediction`)."""
    rows = store.rows_of_case(case_id)
    images = SliceSet(store, rows, labeled=False).images()
    pred = check_labels(method.predict(images), images, num_classes)
    return store.to_volume(case_id, pred.cpu().numpy())


def score_prediction(data: DataContext, case_id: str, pred: np.ndarray) -> list[MetricRow]:
    """Score an (X, Y, Z) predicted label volume of a case (canonical orientation, original
    size) against its ground truth with every metric the protocol declares."""
    protocol = data.protocol
    gt, spacing = data.store.ground_truth(case_id)
    order = data.store.slice_order(case_id)
    scores = score_case(pred, gt, spacing, protocol.labels, protocol.scoring, order)
    return [
        (case_id, label, protocol.labels[label], name, value)
        for label, values in scores.items()
        for name, value in values.items()
    ]


def save_prediction(data: DataContext, case_id: str, pred: np.ndarray, folder: Path) -> Path:
    """Write a predicted (X, Y, Z) volume as `<folder>/<case>.nii.gz` on the voxel grid of
    the case's ground-truth file."""
    from benchmark.data.writer import save_like

    label = next(c.label for c in data.index.labeled if c.case_id == case_id)
    assert label is not None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return save_like(pred, label, Path(folder) / f"{case_id}.nii.gz")


def mean_scores(rows: list[MetricRow]) -> dict[str, float]:
    """Metric name → mean over cases of the per-case organ mean (how reports score a run)."""
    sums: dict[str, dict[str, list[float]]] = {}
    for case_id, _, _, name, value in rows:
        sums.setdefault(name, {}).setdefault(case_id, []).append(value)
    return {
        name: float(np.mean([np.mean(v) for v in per_case.values()]))
        for name, per_case in sums.items()
    }


def ensure_ceiling(results: Path, data: DataContext, progress: Progress) -> None:
    """Score the protocol's ceiling into the store once: each test case's ground truth
    resized to the slice size and back, exactly as a prediction is, then scored."""
    store = ResultsStore(results)
    keys = (data.protocol.hash, data.store.data_key, data.split.hash, scoring_code())
    if store.has_ceiling(*keys):
        return
    assert data.store.labels is not None
    rows: list[MetricRow] = []
    for case_id in progress.track(data.split.test, "ceiling"):
        small = np.asarray(data.store.labels[data.store.rows_of_case(case_id)])
        rows.extend(score_prediction(data, case_id, data.store.to_volume(case_id, small)))
    store.write_ceiling(*keys, rows)


def execute(prep: Prepared, progress: Progress) -> RunOutcome:
    """Run a prepared run and record it; a run that raises is recorded as failed."""
    store = ResultsStore(prep.request.results)
    if not prep.request.force and (done := store.completed_run(prep.run_key)):
        # A run killed between its row and its ceiling left the ceiling out: write it now.
        ensure_ceiling(prep.request.results, prep.data, progress)
        return RunOutcome(done, "skipped")
    record, rows = perform(prep, progress)
    kept = store.write_run(record, rows, replace=prep.request.force)
    ensure_ceiling(prep.request.results, prep.data, progress)
    return RunOutcome(kept, "elsewhere") if kept else outcome(record, rows)


def outcome(record: RunRecord, rows: list[MetricRow]) -> RunOutcome:
    """What `bench run` prints of a recorded run."""
    if record.status == "failed":
        return RunOutcome(record.run_id, "failed", error=record.error, record=record)
    table = wide(
        pd.DataFrame(rows, columns=["case_id", "organ_id", "organ", "metric", "value"]),
        ["case_id", "organ_id", "organ"],
    )
    names = [c for c in table.columns if c not in ("case_id", "organ_id", "organ")]
    per_organ = table.groupby(["organ_id", "organ"], as_index=False, sort=True)[names].mean()
    return RunOutcome(
        record.run_id, record.status, per_organ=per_organ, error=record.error, record=record
    )


def failed_record(
    prep: Prepared, error: str, device: str = "", info: dict | None = None
) -> RunRecord:
    """The record of a run that never ran to its end (its worker died, its pretraining failed)."""
    now = timestamp()
    provenance = build_provenance(prep.data, device, {}, 0.0, now, now)
    run_id = f"{prep.run_key[:12]}-{uuid.uuid4().hex[:8]}"
    return _record(prep, run_id, error, provenance, 0.0, info or {}, Trust())


def _record(
    prep: Prepared,
    run_id: str,
    error: str | None,
    provenance: Provenance,
    peak_mem_mb: float,
    info: dict[str, Any],
    trust: Trust,
) -> RunRecord:
    status = "failed" if error else "unfit" if trust.unfit else "completed"
    return RunRecord(
        **vars(provenance),
        run_id=run_id,
        run_key=prep.run_key,
        status=status,
        error=error or trust.unfit,
        method=prep.request.method,
        config=config_dict(prep.config),
        budget=prep.budget.name,
        n_labeled=len(prep.budget_ids),
        budget_ids=prep.budget_ids,
        seed=prep.request.seed,
        peak_mem_mb=round(peak_mem_mb, 1),
        info=info,
        off_protocol="; ".join(
            r
            for r in (
                prep.compute.off_protocol,
                trust.unselected,
                beyond_budget(prep.compute, [point[0] for point in trust.curve]),
            )
            if r
        )
        or None,
        finetune_samples=prep.compute.finetune_samples,
        pretrain_samples=prep.compute.pretrain_samples,
        val_dsc=trust.val_dsc,
        train_dsc=trust.train_dsc,
        curve=trust.curve,
        code=prep.code,
    )


def perform(prep: Prepared, progress: Progress) -> tuple[RunRecord, list[MetricRow]]:
    """Pretrain (cached), fit, predict and score one run; touches no results store.

    A run that raises comes back as a failed record with the error, and no metric rows.
    """
    req, data, protocol = prep.request, prep.data, prep.data.protocol
    device = resolve_device(req.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run_id = f"{prep.run_key[:12]}-{uuid.uuid4().hex[:8]}"
    started = timestamp()
    phases = dict(prep.phases)
    ctx = RunContext(
        device=device,
        seed=req.seed,
        num_classes=protocol.num_classes,
        cache_dir=cache_root() / "pretrain",
        progress=progress,
        training=protocol.training,
        validator=Validator(data.store, data.split.val, protocol) if data.split.val else None,
    )
    rows: list[MetricRow] = []
    error = None
    trust = Trust()
    t_run = time.perf_counter()
    try:
        torch.manual_seed(req.seed)
        np.random.seed(req.seed % 2**32)
        method = prep.method_cls(prep.config)
        if prep.method_cls.uses_pretraining:
            t = time.perf_counter()
            run_pretraining(method, protocol, data.index, ctx, progress)
            phases["pretrain"] = time.perf_counter() - t
        t = time.perf_counter()
        labeled = SliceSet(data.store, prep.budget_rows, labeled=True)
        method.fit(labeled, ctx)
        phases["fit"] = time.perf_counter() - t
        prep = replace(prep, compute=settle(prep.compute, ctx.finetune_steps, protocol.training))
        t = time.perf_counter()
        trust = check_fitted(method, labeled, ctx, protocol)
        phases["check"] = time.perf_counter() - t
        t_pred = t_score = 0.0
        for case_id in progress.track(data.split.test, "predict + score"):
            t = time.perf_counter()
            pred = predict_case(method, data.store, case_id, protocol.num_classes)
            if req.save_predictions is not None:
                save_prediction(data, case_id, pred, req.save_predictions)
            t_pred += time.perf_counter() - t
            t = time.perf_counter()
            rows.extend(score_prediction(data, case_id, pred))
            t_score += time.perf_counter() - t
        phases["predict"], phases["score"] = t_pred, t_score
    except Exception as exc:  # recorded, not raised: a sweep goes on after a failed run
        error = f"{type(exc).__name__}: {exc}"
        ctx.log.debug(traceback.format_exc())
        # No scores; the learning curve so far stays with the run, to see where it failed,
        # and so do the checks made before it failed.
        rows = []
        trust = Trust(val_dsc=trust.val_dsc, train_dsc=trust.train_dsc, curve=recorded_curve(ctx))
        if "fit" not in phases:  # fine-tuning did not finish: its samples are not known
            prep = replace(prep, compute=replace(prep.compute, finetune_samples=None))
    wall_s = sum(prep.phases.values()) + time.perf_counter() - t_run
    provenance = build_provenance(data, describe_device(device), phases, wall_s, started)
    record = _record(prep, run_id, error, provenance, peak_memory_mb(device), ctx.info, trust)
    return record, rows
