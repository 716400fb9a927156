"""Hash-checked checkpoint files for cached pretraining.

Each `<name>.pt` has a `<name>.json` beside it with its SHA-256 and the config that made it.
A file whose hash or config does not match is deleted and rebuilt, never loaded blindly,
and loading uses `torch.load(..., weights_only=True)`. Saving and loading a name remove the
temporary files that killed saves of it left. Writing a pair and checking it hold an
exclusive lock on `<name>.lock`, so a process reading while another writes never sees a new
file beside an old sidecar (and deletes a good file for it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from benchmark.data.cache import STALE_AFTER_S
from benchmark.processes import pid_alive

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


def _temporary(path: Path, suffix: str = ".tmp") -> Path:
    """Where this process writes `path` before moving it in place: `<stem>.<host>-<pid>.tmp`
    (`.json.tmp` for its sidecar), so that what a killed save leaves names its process."""
    return path.with_name(f"{path.stem}.{socket.gethostname()}-{os.getpid()}{suffix}")


def _remove_dead_temporaries(path: Path) -> None:
    """Remove what saves of `path` killed before moving it in place left: the temporaries of
    this host whose process is gone (another host's pid means nothing here), and those named
    `<stem>.<pid>.tmp` by earlier versions once their pid is gone here, each once it is
    `STALE_AFTER_S` old: containers that share a host name need not share pids, so a live
    save of another one (its file written moments ago) is left alone."""
    host = socket.gethostname()
    named = re.compile(rf"{re.escape(path.stem)}\.(?:(.+)-)?(\d+)(?:\.json)?\.tmp")
    for tmp in path.parent.glob(f"{path.stem}.*.tmp"):
        match = named.fullmatch(tmp.name)
        if match is None or match[1] not in (host, None) or pid_alive(int(match[2])):
            continue
        with contextlib.suppress(FileNotFoundError):
            if time.time() - tmp.stat().st_mtime < STALE_AFTER_S:
                continue
            tmp.unlink()
            log.info("removed %s, left by a save that was killed", tmp)


def save_verified(obj: dict[str, Any], path: Path, meta: dict[str, Any]) -> None:
    """Write `obj` with torch.save and `<path>.json` with its hash, both atomically."""
    _remove_dead_temporaries(path)
    tmp = _temporary(path)
    torch.save(obj, tmp)
    digest = sha256_file(tmp)
    side = path.with_suffix(".json")
    side_tmp = _temporary(path, ".json.tmp")
    side_tmp.write_text(json.dumps({**meta, "sha256": digest}, indent=1))
    with _locked(path):
        os.replace(tmp, path)
        os.replace(side_tmp, side)


def load_verified(
    path: Path, expect: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Load `path` if its hash and the recorded config match; otherwise delete it and say why."""
    side = path.with_suffix(".json")
    _remove_dead_temporaries(path)
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
