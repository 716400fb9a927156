"""Hash-checked checkpoint files for cached pretraining.

Each `<name>.pt` has a `<name>.json` beside it with its SHA-256 and the config that made it.
A file whose hash or config does not match is deleted and rebuilt, never loaded blindly,
and loading uses `torch.load(..., weights_only=True)`. Writing a pair and checking it hold an
exclusive lock on `<name>.lock`, so a process reading while another writes never sees a new
file beside an old sidecar (and deletes a good file for it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("labelbench.checkpoint")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save_verified(obj: dict[str, Any], path: Path, meta: dict[str, Any]) -> None:
    """Write `obj` with torch.save and `<path>.json` with its hash, both atomically."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    digest = sha256_file(tmp)
    side = path.with_suffix(".json")
    side_tmp = side.with_suffix(f".{os.getpid()}.json.tmp")
    side_tmp.write_text(json.dumps({**meta, "sha256": digest}, indent=1))
    with _locked(path):
        os.replace(tmp, path)
        os.replace(side_tmp, side)


def load_verified(
    path: Path, expect: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Load `path` if its hash and the recorded config match; otherwise delete it and say why."""
    side = path.with_suffix(".json")
    if not path.exists():
        return None
    with _locked(path):
        return _check_and_load(path, side, expect)


def _check_and_load(
    path: Path, side: Path, expect: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    reason = None
    try:
        meta = json.loads(side.read_text())
        if meta.get("sha256") != sha256_file(path):
            reason = "its SHA-256 does not match"
        elif meta.get("config") != expect:
            reason = "it was made with another config"
        else:
            return torch.load(path, map_location="cpu", weights_only=True), meta
    except (OSError, ValueError, RuntimeError) as exc:
        reason = f"it cannot be read ({exc})"
    log.warning("rebuilding %s: %s", path, reason)
    path.unlink(missing_ok=True)
    side.unlink(missing_ok=True)
    return None
