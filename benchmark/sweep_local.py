"""The local executor of `bench sweep`: the runs in this process (`jobs=1`, each pretraining
first), or `jobs` jobs at a time, each in its own spawned process, the pretrainings among
them; a job whose process dies is retried once. Workers return their results through a
scratch file and die with the driver; an interrupted driver stops them and what they started.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.processes import die_with_parent, scratch_folder, usable_cpus
from benchmark.progress import Progress
from benchmark.runner import MetricRow, Prepared, RunRequest, failed_record, perform
from benchmark.store import RunRecord
from benchmark.sweep_worker import (
    _pretrain,
    pretrain_point,
    pretraining_groups,
    run_point,
    worker_env,
)

if TYPE_CHECKING:
    from benchmark.sweep import SweepRequest


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
