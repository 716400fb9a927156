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
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import apply_overrides
from benchmark.data.cache import VERIFY_ENV, verify_requested
from benchmark.data.context import DataContext, load_data
from benchmark.data.source import cache_root
from benchmark.errors import ConfigError
from benchmark.method import RunContext
from benchmark.processes import die_with_parent, scratch_folder, usable_cpus
from benchmark.progress import Progress
from benchmark.protocol import Protocol, available_protocols, load_protocol, stable_hash
from benchmark.provenance import resolve_device
from benchmark.registry import get_method
from benchmark.runner import (
    MetricRow,
    Prepared,
    RunRequest,
    ensure_ceiling,
    failed_record,
    mean_scores,
    perform,
    prepare,
    run_pretraining,
)
from benchmark.store import FINISHED, ResultsStore, RunRecord, check_results_dir

EXECUTORS = ("local", "ray")
NO_RAY = "--executor ray needs Ray: pip install 'ray>=2.9'"


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


# --------------------------------------------------------------------------- local


def _run_local(
    req: SweepRequest,
    pending: list[Prepared],
    record: Callable[[Prepared, RunRecord, list[MetricRow]], None],
    progress: Progress,
    stop: float | None = None,
) -> list[Prepared]:
    """Run `pending`; returns the runs left unstarted because `stop` (a `time.monotonic()`
    instant after which no job starts) had passed."""

    def stopped() -> bool:
        return stop is not None and time.monotonic() >= stop

    groups = pretraining_groups(pending)
    if req.jobs > 1:
        return _run_processes(req, pending, groups, record, stopped)
    todo = list(pending)
    for group in groups.values():
        if stopped():
            return todo
        try:
            _pretrain(group[0], progress)
        except Exception as exc:  # every run that needs it fails with the reason, once
            for prep in group:
                record(prep, failed_record(prep, _pretrain_error(exc)), [])
                todo.remove(prep)
    while todo and not stopped():
        prep = todo.pop(0)
        record(prep, *perform(prep, progress))
    return todo


def _pretrain_error(exc: BaseException) -> str:
    return f"pretraining failed: {type(exc).__name__}: {exc}"


def _child(request: RunRequest, env: dict[str, str], threads: int, out: str, key: str) -> None:
    _own_group()
    try:
        result: Any = run_point(request, env, threads, expected=key)
    except Exception as exc:  # raised outside the run's own try (its data, its device):
        result = {"error": f"{type(exc).__name__}: {exc}"}  # recorded, not retried
    _dump(result, out)


def _pretrain_child(
    request: RunRequest, env: dict[str, str], threads: int, out: str, key: str
) -> None:
    _own_group()
    try:
        result: dict[str, str] = {"key": pretrain_point(request, env, threads, key)}
    except Exception as exc:  # the driver fails every run that needs it, with the reason
        result = {"error": _pretrain_error(exc)}
    _dump(result, out)


def _own_group() -> None:
    """A worker's first step: a process group of its own, which `_stop` ends with every
    process the worker starts, and death with the driver, even a SIGKILLed one that stops
    nothing (the driver's loop thread started it and lives as long as it runs)."""
    import multiprocessing as mp

    os.setpgrp()
    driver = mp.parent_process()
    if driver is not None and driver.pid is not None:  # always, in a spawned worker
        die_with_parent(driver.pid)


def _stop(proc: Any, grace: float = 10.0) -> None:
    """End a worker and the processes it started (its process group, `_child`'s): SIGTERM,
    then SIGKILL to what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone, or the worker has not made it yet
            if proc.is_alive():
                proc.kill() if sig == signal.SIGKILL else proc.terminate()
        proc.join(grace if sig == signal.SIGTERM else None)


@contextmanager
def _terminate_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP (a batch job's time limit, a closed terminal) end the driver as
    Ctrl-C does: by an interrupt, so that it stops its workers on the way out instead of
    leaving them running. Only in the main thread, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    before = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _dump(result: Any, out: str) -> None:
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, out)


@dataclass
class _Task:
    """A job of the local process pool: one pretraining (`group` set) or one run."""

    prep: Prepared
    group: str | None = None
    """The pretraining's key, when this task is one."""
    needs: str | None = None
    """The key of the pretraining this run waits for, if any."""
    attempt: int = 0


def _run_processes(
    req: SweepRequest,
    pending: list[Prepared],
    groups: dict[str, list[Prepared]],
    record: Callable[[Prepared, RunRecord, list[MetricRow]], None],
    stopped: Callable[[], bool] = lambda: False,
) -> list[Prepared]:
    """`req.jobs` jobs at a time, each in a spawned process; a dead one is retried once.
    Once `stopped()`, no job starts; returns the runs left unstarted.

    The pretrainings are jobs too, queued first: a run waits only for its own pretraining,
    and runs that need none start at once, so no slot idles while pretraining goes on. A
    pretraining that fails fails every run that needs it, with its reason.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    env = worker_env()
    threads = max(1, usable_cpus() // req.jobs)
    owner = {id(p): key for key, group in groups.items() for p in group}
    queue = [_Task(group[0], group=key) for key, group in groups.items()]
    queue += [_Task(prep, needs=owner.get(id(prep))) for prep in pending]
    done: set[str] = set()
    running: dict[Any, tuple[_Task, Path]] = {}

    def fail_group(key: str, error: str) -> None:
        for task in [t for t in queue if t.needs == key]:
            queue.remove(task)
            record(task.prep, failed_record(task.prep, error), [])

    def finish(proc: Any) -> None:
        """Record what a worker that has ended left, or queue its one retry."""
        task, out = running.pop(proc)
        proc.join()
        result = None
        if out.exists():
            with out.open("rb") as f:
                result = pickle.load(f)
        if result is None and task.attempt == 0:
            queue.insert(0, _Task(task.prep, task.group, task.needs, attempt=1))
        elif task.group is not None:
            if result is not None and "key" in result:
                done.add(task.group)
            else:
                error = (
                    result["error"]
                    if result is not None
                    else "pretraining failed: its worker process died twice "
                    f"(exit code {proc.exitcode})"
                )
                fail_group(task.group, error)
        elif isinstance(result, dict):
            record(task.prep, failed_record(task.prep, result["error"]), [])
        elif result is not None:
            record(task.prep, *result)
        else:
            error = f"worker process died twice (exit code {proc.exitcode})"
            record(task.prep, failed_record(task.prep, error, info={"attempts": 2}), [])

    with scratch_folder("labelbench-sweep-") as tmp, _terminate_interrupts():
        try:
            while (queue and not stopped()) or running:
                for task in [t for t in queue if t.needs is None or t.needs in done]:
                    if len(running) >= req.jobs or stopped():
                        break
                    queue.remove(task)
                    kind = "pretrain" if task.group else "run"
                    out = tmp / f"{kind}-{task.prep.run_key}-{task.attempt}.pkl"
                    target = _pretrain_child if task.group else _child
                    # Not a daemon: a method may start processes of its own (nnU-Net does).
                    proc = ctx.Process(
                        target=target,
                        args=(task.prep.request, env, threads, str(out), task.prep.run_key),
                    )
                    proc.start()
                    running[proc] = (task, out)
                for proc in [p for p in running if not p.is_alive()]:
                    finish(proc)
                time.sleep(0.05)
        finally:  # the driver leaving early (an interrupt) takes its workers with it
            for proc in running:
                _stop(proc)
    return [t.prep for t in queue if t.group is None]


# --------------------------------------------------------------------------- ray


def _run_ray(
    req: SweepRequest,
    pending: list[Prepared],
    record: Callable[[Prepared, RunRecord, list[MetricRow]], None],
) -> None:
    try:
        import ray
    except ImportError:  # found by `plan`, yet broken
        raise ConfigError(NO_RAY) from None
    env = worker_env()
    started_here = not ray.is_initialized()
    if started_here:
        if req.ray_address:
            ray.init(address=req.ray_address, runtime_env={"env_vars": env}, log_to_driver=False)
        else:
            ray.init(
                num_cpus=usable_cpus(),
                include_dashboard=False,
                runtime_env={"env_vars": env},
                log_to_driver=False,
            )
    try:
        _submit_and_collect(ray, req, pending, record, env)
    finally:
        if started_here:
            ray.shutdown()


def _submit_and_collect(ray: Any, req: SweepRequest, pending, record, env) -> None:
    # `auto` is resolved by each worker on its node, so it is resolved against the cluster
    # here: a run that would find a GPU there must ask Ray for one, or it shares it unseen.
    cluster_gpus = req.device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1
    gpus = 1 if req.device.startswith("cuda") or cluster_gpus else 0
    opts = {"num_cpus": req.cpus_per_run, "num_gpus": gpus, "max_retries": 1}
    pretrain_task = ray.remote(pretrain_point).options(**opts)
    run_task = ray.remote(run_point).options(**opts)
    after: dict[str, Any] = {}
    for key, group in pretraining_groups(pending).items():
        after[key] = pretrain_task.remote(group[0].request, env, req.cpus_per_run, group[0].run_key)
    owner = {
        id(p): k for k, group in pretraining_groups(pending).items() for p in group
    }  # which pretraining each run waits for
    refs = {}
    for prep in pending:
        dep = after.get(owner.get(id(prep), ""))
        refs[run_task.remote(prep.request, env, req.cpus_per_run, dep, prep.run_key)] = prep
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        prep = refs.pop(ready[0])
        try:
            rec, rows = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            reason = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {reason[-1] if reason else ''}".strip()
            rec, rows = failed_record(prep, error, info={"executor": "ray"}), []
        record(prep, rec, rows)
