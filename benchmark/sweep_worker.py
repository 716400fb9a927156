"""What a sweep's workers run, the same under either executor (`benchmark.sweep_local`,
`benchmark.sweep_ray`): one run (`run_point`) or one pretraining (`pretrain_point`) from its
request, with no store access, in the environment `worker_env` gives them; and
`pretraining_groups`, the runs that share each pretraining (one pretraining job per group).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from benchmark.data.cache import VERIFY_ENV, verify_requested
from benchmark.data.source import cache_root
from benchmark.method import RunContext
from benchmark.progress import Progress
from benchmark.protocol import stable_hash
from benchmark.provenance import resolve_device
from benchmark.runner import MetricRow, Prepared, RunRequest, perform, prepare, run_pretraining
from benchmark.store import RunRecord


def pretraining_groups(pending: list[Prepared]) -> dict[str, list[Prepared]]:
    """Runs that need a pretraining, grouped by what identifies it (shared across methods)."""
    groups: dict[str, list[Prepared]] = {}
    for prep in pending:
        if prep.method_cls.uses_pretraining:
            key = stable_hash(prep.method_cls(prep.config).pretrain_key(prep.request.seed))
            groups.setdefault(key, []).append(prep)
    return groups


def worker_env() -> dict[str, str]:
    """What a worker process needs to see the same cache, protocols and plugins as the driver."""
    env = {
        "LABELBENCH_CACHE": str(cache_root().resolve()),
        # A dependency's import-time warning, silenced in the CLI too; workers import first.
        "PYTHONWARNINGS": "ignore:`torch.jit.interface` is deprecated:FutureWarning",
    }
    if "LABELBENCH_PROTOCOLS" in os.environ:
        env["LABELBENCH_PROTOCOLS"] = os.environ["LABELBENCH_PROTOCOLS"]
    if verify_requested():  # --verify: the workers' own reads (the unlabeled pool) too
        env[VERIFY_ENV] = "1"
    prefixes = {sys.prefix, sys.base_prefix}
    extra = [p for p in sys.path if p and os.path.isdir(p) and not p.startswith(tuple(prefixes))]
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(extra))
    return env


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def run_point(
    request: RunRequest,
    env: dict[str, str],
    threads: int | None = None,
    _after: Any = None,
    expected: str = "",
) -> tuple[RunRecord, list[MetricRow]]:
    """A worker's whole run: data from the shared cache, fit, predict, score. No store access.
    `expected`: the run key the driver planned (checked before any work)."""
    os.environ.update(env)
    _set_threads(threads)
    progress = Progress(quiet=True)
    return perform(_planned(prepare(request, progress), expected), progress)


def pretrain_point(
    request: RunRequest, env: dict[str, str], threads: int | None = None, expected: str = ""
) -> str:
    """A worker's pretraining for `request`'s method and seed; returns the cache key."""
    os.environ.update(env)
    _set_threads(threads)
    progress = Progress(quiet=True)
    prep = _planned(prepare(request, progress), expected)
    return _pretrain(prep, progress)


def _planned(prep: Prepared, expected: str) -> Prepared:
    """`prep` when a worker prepared the run the driver planned. A worker on another node
    prepares it from its own cache, code and packages; a run keyed otherwise would be stored
    under a key the driver never looks up (every resume would run it again), on other data."""
    if expected and prep.run_key != expected:
        raise RuntimeError(
            f"this worker keys the run {prep.run_key[:12]}, the driver planned "
            f"{expected[:12]}: its data, code or packages differ from the driver's (share the "
            "cache folder and install the same code and packages on every node)"
        )
    return prep


def _pretrain(prep: Prepared, progress: Progress) -> str:
    data = prep.data
    ctx = RunContext(
        device=resolve_device(prep.request.device),
        seed=prep.request.seed,
        num_classes=data.protocol.num_classes,
        cache_dir=cache_root() / "pretrain",
        progress=progress,
    )
    run_pretraining(prep.method_cls(prep.config), data.protocol, data.index, ctx, progress)
    return str(ctx.info.get("pretrain_cache", ""))
