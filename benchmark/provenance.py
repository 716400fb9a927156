"""Facts recorded with every number: package versions, git commit, device, peak memory,
and the `Provenance` record that runs and generative evaluations share (`build_provenance`).

Torch is imported where a device is looked at, not with this module: the results store
imports `Provenance` and loads without torch.
"""

from __future__ import annotations

import platform
import resource
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from benchmark.data.context import DataContext

PACKAGES = (
    "labelbench",
    "torch",
    "torchvision",
    "monai",
    "segmentation-models-pytorch",
    "nnunetv2",
    "torch-fidelity",
    "numpy",
    "nibabel",
)
REPO = Path(__file__).resolve().parent.parent


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    """HEAD of the labelbench checkout, '-dirty' when tracked files changed, else 'unknown'."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} threads"


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (MB), or peak CUDA memory allocated on a GPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def timestamp() -> str:
    """Now, in UTC, as an ISO 8601 string to the second (how records keep their times)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where a recorded number comes from; the fields that a run (`RunRecord`) and a
    generative evaluation (`GenerativeRecord`) share, and the columns their tables share
    (`benchmark.store_schema.PROVENANCE_COLUMNS`).

    The data it was scored on (protocol, its hash, the slice store's key, the split's hash),
    the code and machine that made it (package versions, git commit, device), and its time
    (seconds per phase and in all, start and end).
    """

    protocol: str
    protocol_hash: str
    dataset_key: str
    split_hash: str
    versions: dict[str, str]
    git_commit: str
    device: str
    phases: dict[str, float]
    wall_s: float
    started_at: str
    finished_at: str


def build_provenance(
    data: DataContext,
    device: str,
    phases: dict[str, float],
    wall_s: float,
    started_at: str,
    finished_at: str | None = None,
) -> Provenance:
    """The provenance of a number scored on `data` by this checkout on `device` (described,
    or "" where none ran): times rounded to milliseconds; finished now unless given."""
    return Provenance(
        protocol=data.protocol.name,
        protocol_hash=data.protocol.hash,
        dataset_key=data.store.data_key,
        split_hash=data.split.hash,
        versions=versions(),
        git_commit=git_commit(),
        device=device,
        phases={k: round(v, 3) for k, v in phases.items()},
        wall_s=round(wall_s, 3),
        started_at=started_at,
        finished_at=finished_at or timestamp(),
    )
