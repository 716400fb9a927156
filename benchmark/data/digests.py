"""Whole-content digests of files, memoised by what the file system says about each file.

Cache keys and cache manifests both need the digest of every byte of a file, and hashing a
data set on every start would cost seconds (about 0.5 s per GB here). `DigestMemo` keeps each
digest in a small SQLite file in the cache, keyed by the file's resolved path, size,
modification and change times (ns) and inode: any write through the file system changes
mtime and ctime (ctime cannot be set back, unlike mtime with `touch -r`), so a warm start
stats the files instead of reading them. Only damage below the file system (a failing disk)
escapes the memo; `fresh=True` (`--verify`) re-reads every byte.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

HASH = "sha256"
"""SHA-256 rather than BLAKE2b: OpenSSL's SHA-256 uses the CPU's SHA extensions, 1.35 GB/s
against BLAKE2b's 0.57 GB/s on this project's 2-core AMD EPYC (`perf/bench_cache.py`
prints both), and the pretraining checkpoints are checked with it already."""

RACY_NS = 2_000_000_000
"""A file modified less than this before it was hashed is not memoised: a second write in the
same timestamp tick (coarse on most file systems, 2 s on FAT) would keep size and mtime."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS digests (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    hash TEXT NOT NULL,
    digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS opens (folder TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""

MEMO_FILE = "digests.sqlite"


def file_digest(path: Path) -> str:
    """Hex `HASH` digest of every byte of `path`."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, HASH).hexdigest()


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class DigestMemo:
    """Digests of files by (resolved path, size, mtime, ctime, inode), and how many times each
    cache folder was opened. A memo that cannot be opened or written (a read-only cache) only
    costs time: every digest is then computed, and open counts stay at 1."""

    def __init__(self, db: Path | None):
        self.db = db
        self._conn = self._connect(db) if db is not None else None

    @classmethod
    def in_cache(cls, cache_dir: Path) -> DigestMemo:
        return cls(Path(cache_dir) / MEMO_FILE)

    @staticmethod
    def _connect(db: Path) -> sqlite3.Connection | None:
        for _ in range(2):
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(db, timeout=30, isolation_level=None)
                # A lost write only means hashing that file again; skip the fsyncs.
                conn.execute("PRAGMA synchronous = OFF")
                conn.executescript(_SCHEMA)
                return conn
            except sqlite3.OperationalError:  # read-only, locked too long: go on without
                return None
            except sqlite3.DatabaseError:  # not a database any more: start a new one
                db.unlink(missing_ok=True)
            except OSError:
                return None
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DigestMemo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, args: tuple) -> list[tuple]:
        if self._conn is None:
            return []
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error:
            self.close()  # damaged or locked mid-run: the rest of this run goes without
            return []

    def digest(self, path: Path, fresh: bool = False) -> str:
        """The `HASH` digest of `path`'s content; from the memo when the file's size, times
        and inode are those it had when last hashed, unless `fresh`."""
        return self.value(path, HASH, file_digest, fresh)

    def value(
        self, path: Path, kind: str, compute: Callable[[Path], str], fresh: bool = False
    ) -> str:
        """`compute(path)`, memoised like `digest` under `kind` (another kind than `HASH`,
        such as a digest of the decoded voxels, is kept beside the file's digest)."""
        path = Path(path).resolve()
        key = str(path) if kind == HASH else f"{path}#{kind}"
        before = path.stat()
        if not fresh:
            rows = self._execute(
                "SELECT size, mtime_ns, ctime_ns, inode, hash, digest FROM digests WHERE path = ?",
                (key,),
            )
            if rows and rows[0][:4] == _signature(before) and rows[0][4] == kind:
                return rows[0][5]
        started = time.time_ns()
        value = compute(path)
        after = path.stat()
        if _signature(after) == _signature(before) and started - after.st_mtime_ns > RACY_NS:
            self._execute(
                "INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, *_signature(after), kind, value),
            )
        return value

    def count_open(self, folder: Path) -> int:
        """Record one more open of `folder` and return how many there have been (1 when the
        memo is unavailable)."""
        rows = self._execute(
            "INSERT INTO opens VALUES (?, 1) ON CONFLICT (folder) "
            "DO UPDATE SET count = count + 1 RETURNING count",
            (str(Path(folder).resolve()),),
        )
        return int(rows[0][0]) if rows else 1
