"""Data-parallel runs under torchrun: relaunching `bench` with it, joining its process group,
and letting rank 0 fill a shared cache before the other ranks read it.

Outside torchrun (no `WORLD_SIZE` in the environment) every function here is a no-op or
answers for a single process, so callers need no branch of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def world_size() -> int:
    """Processes in this torchrun job; 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank in the torchrun job; 0 outside torchrun."""
    return int(os.environ.get("RANK", "0"))


def relaunch(nproc: int, args: list[str]) -> int:
    """Run `bench ARGS` under torch.distributed.run with `nproc` local processes; its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "-m", "benchmark.cli", *args]
    return subprocess.run(cmd, check=False).returncode


def init(device: str) -> str:
    """Join the process group torchrun describes in the environment; returns this rank's
    device: `cuda:LOCAL_RANK` with nccl when CUDA is asked for (or `auto` finds it), else gloo."""
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return f"cuda:{local}" if cuda else "cpu"


def shutdown() -> None:
    """Leave the process group joined by :func:`init`."""
    import torch.distributed as dist

    dist.destroy_process_group()


@contextmanager
def process_group(device: str) -> Iterator[str]:
    """Inside torchrun, join its process group for the `with` block (see :func:`init`) and
    leave it after; yields this rank's device, or `device` itself outside torchrun."""
    if world_size() == 1:
        yield device
        return
    device = init(device)
    try:
        yield device
    finally:
        shutdown()


def rank_zero_first(fn: Callable[[], T]) -> T:
    """Call `fn` on rank 0 of a torch.distributed group first (it fills a cache the other
    ranks then read); outside a distributed run just call it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return fn()
    if dist.get_rank() == 0:
        result = fn()
        dist.barrier()
        return result
    dist.barrier()
    return fn()
