"""Cache folders that check themselves: manifests, when to verify them, and what a killed build
leaves behind.

A cache folder (a slice store, the generated phantom) is built under a hidden name and renamed
into place; its last file is `manifest.json`, the size and `HASH` digest of every other file,
written atomically. Opening compares every file's size with the manifest, and its digest
through the `DigestMemo` (a stat per file when nothing changed; a file written since it was
last hashed is read again). A full check re-reads every byte: with `--verify` (`verifying()`),
and on every `VERIFY_EVERY`-th open of a folder, which catches damage below the file system
that leaves a file's times alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from benchmark.data.digests import HASH, DigestMemo, file_digest

MANIFEST = "manifest.json"
LOCK = ".lock"
"""Held (flock) by the process building a folder, from its creation until it is in place."""
VERIFY_EVERY = 10
"""Every 10th open of a cache folder re-reads all of it: 0.5 s for the phantom protocol's
labeled store (514 MB, 433 MB of it ground truth; `perf/bench_cache.py --store`), so
50 ms per open on average, against 5 ms for an open that trusts the memo."""
STALE_AFTER_S = 60.0
"""A hidden build folder is removed only when no live process holds its lock and it is at least
this old, which covers the moment between creating it and taking the lock."""

_verify: ContextVar[bool] = ContextVar("labelbench_verify", default=False)


@contextlib.contextmanager
def verifying(on: bool = True) -> Iterator[None]:
    """Within this block every cache folder opened is checked in full, and every input file
    is hashed again rather than taken from the memo (`bench run --verify`)."""
    token = _verify.set(on)
    try:
        yield
    finally:
        _verify.reset(token)


VERIFY_ENV = "LABELBENCH_VERIFY"
"""Set to 1 in a sweep's worker processes when the sweep verifies (`worker_env`): a context
variable does not reach another process."""


def verify_requested() -> bool:
    return _verify.get() or os.environ.get(VERIFY_ENV) == "1"


def full_check_due(folder: Path, memo: DigestMemo) -> bool:
    """Whether this open of `folder` re-reads every byte: asked for, or its turn."""
    turn = memo.count_open(folder) % VERIFY_EVERY == 0
    return verify_requested() or turn


def write_manifest(folder: Path) -> None:
    """Record the size and digest of every file under `folder` (the lock file aside) in
    `folder/manifest.json`, written last and atomically."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, LOCK))
    entries = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "digest": file_digest(p)}
        for p in files
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"hash": HASH, "files": entries}, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)


def check_folder(folder: Path, memo: DigestMemo, full: bool = False) -> str | None:
    """What is wrong with a cache folder, or None when every file has the size and digest its
    manifest records. `full` hashes every byte again instead of trusting the memo."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = {str(k): (int(v["size"]), str(v["digest"])) for k, v in manifest["files"].items()}
        if manifest["hash"] != HASH:
            return f"its {MANIFEST} uses {manifest['hash']}, not {HASH}"
    except FileNotFoundError:
        return f"it has no {MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {MANIFEST} cannot be read"
    for name, (size, _) in files.items():  # all sizes first: they cost no reading
        try:
            actual = (folder / name).stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror})"
        if actual != size:
            return f"{name} has {actual} bytes, its manifest says {size}"
    for name, (_, digest) in files.items():
        try:
            if memo.digest(folder / name, fresh=full) != digest:
                return f"{name} does not match its {HASH} in {MANIFEST}"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror})"
    return None


@contextlib.contextmanager
def building(parent: Path, prefix: str) -> Iterator[Path]:
    """A new hidden folder `parent/.{prefix}-*` to build into, locked until the block ends;
    removed if the block raises. Move it into place (`publish`) inside the block."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=parent))
    try:
        with (tmp / LOCK).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, root: Path, memo: DigestMemo) -> None:
    """Rename the finished build `tmp` to `root`. A sound `root` that another process finished
    first is kept (and `tmp` dropped); a damaged one is moved aside and removed."""
    for _ in range(3):
        try:
            os.replace(tmp, root)
            return
        except OSError:  # `root` exists and is not empty
            pass
        if check_folder(root, memo) is None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        aside = root.parent / f".{root.name}-old-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):  # another rebuild moved it first
            os.replace(root, aside)
            shutil.rmtree(aside, ignore_errors=True)
    os.replace(tmp, root)  # raises, naming both paths, if it still cannot be done


def held_by_live_process(folder: Path) -> bool:
    """Whether a live process holds the build lock of `folder` (a missing folder counts as
    held: nothing to remove)."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except FileNotFoundError:  # no lock: a build killed before taking it, or a folder set aside
        return not folder.exists()
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the lock when we got it
    return False


def sweep_stale_builds(parent: Path, min_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove what killed builds left under `parent`: hidden folders that no live process
    holds the lock of, at least `min_age_s` old. Returns the folders removed."""
    if not parent.is_dir():
        return []
    removed = []
    now = time.time()
    for entry in parent.iterdir():
        if not entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        if age >= min_age_s and not held_by_live_process(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
