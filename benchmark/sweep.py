"""`bench sweep`: a grid of methods × budgets × seeds as one command.

The driver validates the whole grid before any work, loads the protocol's data once, skips
runs already completed in the results store, runs each distinct pretraining once before the
fine-tuning runs that need it, and runs the rest on an executor:

- `local`: in this process (`jobs=1`, each pretraining first), or `jobs` jobs at a time,
  each in its own spawned process, the pretrainings among them: a run waits only for its own
  pretraining, and one that needs none starts at once (a job whose process dies is retried
  once; then the run, or every run that needs the pretraining, is recorded as failed);
- `ray`: one Ray task per run with its CPU / GPU needs declared, the fine-tuning tasks
  depending on their pretraining task; Ray retries a task whose worker dies once.

Workers never touch the SQLite store: they return their record and metric rows, and the
driver alone writes each run in its own transaction as it finishes. A sweep killed halfway
keeps every finished run, and started again does only the missing ones.

This module holds the grid (`SweepRequest`), its plan and the driver (`run_sweep`); the
executors live in `benchmark.sweep_local` and `benchmark.sweep_ray`, and what their workers
run in `benchmark.sweep_worker`.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.config import apply_overrides
from benchmark.data.context import DataContext, load_data
from benchmark.errors import ConfigError
from benchmark.progress import Progress
from benchmark.protocol import Protocol, available_protocols, load_protocol
from benchmark.provenance import resolve_device
from benchmark.registry import get_method
from benchmark.runner import (
    MetricRow,
    Prepared,
    RunRequest,
    ensure_ceiling,
    failed_record,
    mean_scores,
    prepare,
)
from benchmark.store import FINISHED, ResultsStore, RunRecord, check_results_dir
from benchmark.sweep_local import _run_local
from benchmark.sweep_ray import NO_RAY, _run_ray

EXECUTORS = ("local", "ray")


@dataclass
class SweepRequest:
    """A grid as the user asked for it."""

    methods: list[str]
    budgets: list[str]
    seeds: list[int]
    protocol: str = "phantom"
    device: str = "auto"
    results: Path = Path("runs")
    overrides: list[str] = field(default_factory=list)
    """`key=value` for every method of the grid, `method:key=value` for one."""
    variants: list[list[str]] = field(default_factory=lambda: [[]])
    """Further `--set` lists, each one more axis point of the grid (e.g. learning-rate
    trials): every method × budget × seed runs once per variant, after `overrides`."""
    data: Path | None = None
    executor: str = "local"
    jobs: int = 1
    """Runs at a time on the local executor."""
    ray_address: str | None = None
    cpus_per_run: int = 1
    """CPUs each Ray task declares (and the torch threads it uses)."""
    force: bool = False
    stop_after: float | None = None
    """Seconds after the sweep starts from which the local executor starts no new job (for a
    machine held for a fixed time): running jobs finish, the rest are left for a later
    sweep."""


@dataclass
class Finished:
    """One run of the grid as it ended: completed, unfit (failed the sanity gate), skipped
    (already in the store), elsewhere (finished meanwhile by another sweep: that run is kept,
    this one's result discarded), failed, or left (not started before `stop_after`)."""

    method: str
    budget: str
    seed: int
    run_id: str
    status: str
    scores: dict[str, float] = field(default_factory=dict)
    """Mean of each declared metric over cases (per-case organ means), when it finished."""
    error: str | None = None


@dataclass
class SweepResult:
    runs: list[Finished]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.runs)


def method_overrides(overrides: list[str], method: str) -> list[str]:
    """The `--set` items that apply to `method` (`key=v`, or `method:key=v`)."""
    mine = []
    for item in overrides:
        head, eq, _ = item.partition("=")
        scope, colon, _ = head.rpartition(":")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected key=value or method:key=value")
        if not colon:
            mine.append(item)
        elif scope == method:
            mine.append(item[len(scope) + 1 :])
    return mine


def plan(
    req: SweepRequest, progress: Progress
) -> tuple[DataContext, list[Prepared], list[Finished]]:
    """Validate the grid, load the data once; the runs still to do and those already done."""
    if req.executor not in EXECUTORS:
        raise ConfigError(f"--executor {req.executor!r}: choose one of {', '.join(EXECUTORS)}")
    if req.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(NO_RAY)  # before the data, the store and its ceiling
    if req.jobs < 1 or req.cpus_per_run < 1:
        raise ConfigError("--jobs and --cpus-per-run must be at least 1")
    if not (req.methods and req.budgets and req.seeds):
        raise ConfigError("a sweep needs at least one method, one budget and one seed")
    if req.stop_after is not None and (req.stop_after <= 0 or req.executor != "local"):
        raise ConfigError("--stop-after takes positive seconds, with the local executor")
    resolve_device(req.device)
    protocol = load_protocol(req.protocol)
    items = req.overrides + [item for variant in req.variants for item in variant]
    scopes = {item.partition("=")[0].rpartition(":")[0] for item in items} - {""}
    for scope in sorted(scopes - set(req.methods)):
        raise ConfigError(f"--set {scope}:…: method '{scope}' is not in --methods")
    settings = [req.overrides + variant for variant in req.variants]
    for method in req.methods:  # every name, budget and --set checked before any work
        for overrides in settings:
            apply_overrides(get_method(method).Config, method_overrides(overrides, method))
    for budget in req.budgets:
        protocol.budget(budget)
    check_results_dir(req.results)
    data = load_data(protocol, req.data, progress)
    store = ResultsStore(req.results)
    pending, done = [], []
    planned: set[str] = set()
    for overrides in settings:
        for method in req.methods:
            for budget in req.budgets:
                for seed in req.seeds:
                    run = RunRequest(
                        method=method,
                        budget=budget,
                        protocol=_locator(protocol),
                        seed=seed,
                        device=req.device,
                        results=req.results,
                        overrides=method_overrides(overrides, method),
                        data=req.data,
                        force=req.force,
                    )
                    prep = prepare(run, progress, data)
                    if prep.run_key in planned:  # variants apart only in execution-only fields
                        continue
                    planned.add(prep.run_key)
                    if not req.force and (run_id := store.completed_run(prep.run_key)):
                        done.append(Finished(method, budget, seed, run_id, "skipped"))
                    else:
                        pending.append(prep)
    return data, pending, done


def _locator(protocol: Protocol) -> str:
    """How a worker finds the protocol: by name where the name finds this same file (a Ray
    worker on another machine has the installed protocols, not this machine's paths), else
    by the file's absolute path (a protocol given as a path, or named in a folder of its own)."""
    known = available_protocols().get(protocol.name)
    if known is not None and known.resolve() == protocol.path.resolve():
        return protocol.name
    return str(protocol.path.resolve())


Report = Callable[[Finished], None]


def run_sweep(req: SweepRequest, progress: Progress, report: Report | None = None) -> SweepResult:
    """Run the grid; `report` is called once per run as it finishes (skipped ones first)."""
    report = report or (lambda f: None)
    started = time.monotonic()
    data, pending, done = plan(req, progress)
    ensure_ceiling(req.results, data, progress)
    for f in done:
        report(f)
    store = ResultsStore(req.results)
    finished = list(done)
    task = progress.task(f"sweep ({len(pending)} to run, {len(done)} done)", len(pending))

    def record(prep: Prepared, rec: RunRecord, rows: list[MetricRow]) -> None:
        # The driver alone writes, one transaction per run, and only under the planned key.
        if rec.run_key != prep.run_key:
            error = f"the worker's run key {rec.run_key[:12]} is not the planned one"
            rec, rows = failed_record(prep, error), []
        kept = store.write_run(rec, rows, replace=req.force)
        where = (prep.request.method, prep.budget.name, prep.request.seed)
        if kept:
            f = Finished(*where, kept, "elsewhere")
        else:
            scores = mean_scores(rows) if rec.status in FINISHED else {}
            f = Finished(*where, rec.run_id, rec.status, scores, rec.error)
        finished.append(f)
        report(f)
        task.advance()

    if req.executor == "ray":
        _run_ray(req, pending, record)
    else:
        stop = None if req.stop_after is None else started + req.stop_after
        left = _run_local(req, pending, record, progress, stop)
        for prep in left:
            f = Finished(prep.request.method, prep.budget.name, prep.request.seed, "", "left")
            finished.append(f)
            report(f)
    task.close()
    return SweepResult(finished)
