"""Processes this package starts: tying a worker's life to its parent's, telling whether the
process a leftover names is still alive, and scratch folders that outlive no process."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from benchmark.data.cache import LOCK, held_by_live_process

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """End this worker when process `parent` dies, even by SIGKILL, which runs no cleanup.

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); it is
    tied to the thread that started the worker, so start workers from a thread that lives as
    long as they should. Elsewhere a daemon thread polls the parent id. Processes the worker
    starts itself are not covered: the request is not inherited.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died before the request took effect
                    os._exit(1)
                return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A new folder `<temporary folder>/<prefix><pid>-<random>` for this process's scratch
    files, removed on the way out. It is locked while this process lives, and the next call
    with the same prefix removes the folders of processes killed before they could remove
    their own (SIGKILL runs no cleanup)."""
    root = Path(tempfile.gettempdir())
    remove_dead_scratch(root, prefix)
    with (
        tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-", dir=root) as tmp,
        (Path(tmp) / LOCK).open("w") as lock,
    ):
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield Path(tmp)


def remove_dead_scratch(root: Path, prefix: str, min_age_s: float | None = None) -> None:
    """Remove the folders `<prefix><pid>-<id>` under `root` (a `scratch_folder`, a phantom
    build) whose process is dead: no live process holds the lock (the name alone could be
    another host's, or another pid namespace's, in a shared folder), and the pid in the name
    is gone from this host or, with `min_age_s`, the folder is that old (a reused pid, or
    another host's dead build)."""
    now = time.time()
    for folder in root.glob(f"{prefix}*"):
        named = re.fullmatch(rf"{re.escape(prefix)}(\d+)-\w+", folder.name)
        if named is None or not folder.is_dir():
            continue
        try:
            old = min_age_s is not None and now - folder.stat().st_mtime >= min_age_s
        except OSError:
            continue
        if (old or not pid_alive(int(named[1]))) and not held_by_live_process(folder):
            shutil.rmtree(folder, ignore_errors=True)


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask (taskset, a batch scheduler's
    binding) and a cgroup v2 quota (a container's `--cpus`), not the machine's count, so
    workers × threads never oversubscribe what the job was given."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
