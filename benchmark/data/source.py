"""Where a protocol's data comes from: the built-in phantom (generated into the cache) or a path.

A generated phantom is checked against its manifest on every use and generated again, with
one warning, when a file is missing or differs (or it predates manifests).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

from benchmark.data.cache import check_folder, full_check_due, verify_requested
from benchmark.data.digests import DigestMemo
from benchmark.data.leakage import check_leakage
from benchmark.data.reader import DatasetIndex, check_dataset_json, discover
from benchmark.errors import DatasetError
from benchmark.fingerprint import source_digest
from benchmark.progress import Progress
from benchmark.protocol import Protocol, stable_hash

log = logging.getLogger("labelbench.cache")


def cache_root() -> Path:
    """`$LABELBENCH_CACHE`, else `~/.cache/labelbench`."""
    env = os.environ.get("LABELBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "labelbench"


def phantom_dir(protocol: Protocol) -> Path:
    """The phantom's folder, keyed by every generator setting (defaults included, so a
    changed default is a new phantom) and by the generator's source."""
    from benchmark.data.phantom import PhantomSettings

    settings = asdict(PhantomSettings(**protocol.dataset.phantom))
    code = source_digest("benchmark.data.phantom")
    return cache_root() / "phantom" / stable_hash({"settings": settings, "code": code})


def _damaged(phantom: Path) -> bool:
    """Check a generated phantom against its manifest; say so when it must be made again."""
    with DigestMemo.in_cache(cache_root()) as memo:
        problem = check_folder(phantom, memo, full=full_check_due(phantom, memo))
    if problem:
        log.warning("generating the phantom again in %s: %s", phantom, problem)
    return problem is not None


def resolve_dataset(protocol: Protocol, data: Path | None, progress: Progress) -> DatasetIndex:
    """Find the protocol's data set, generating the phantom on first use; a labeled image
    copied into the unlabeled pool is a `DatasetError` (`benchmark.data.leakage`)."""
    index = _find_dataset(protocol, data, progress)
    with DigestMemo.in_cache(cache_root()) as memo:
        check_leakage(index, memo, fresh=verify_requested())
    return index


def _find_dataset(protocol: Protocol, data: Path | None, progress: Progress) -> DatasetIndex:
    if protocol.dataset.source == "phantom":
        if data is not None:
            raise DatasetError(
                f"{protocol.path}: protocol '{protocol.name}' uses the built-in phantom; "
                f"--data {data} is not used by it (choose a protocol with dataset.source = 'path')"
            )
        from benchmark.data.phantom import PhantomSettings, write_phantom
        from benchmark.processes import usable_cpus

        out = phantom_dir(protocol)
        if not out.exists() or _damaged(out):
            settings = PhantomSettings(**protocol.dataset.phantom)
            progress.console.print(
                f"generating the phantom data set into {out}", highlight=False, soft_wrap=True
            )
            write_phantom(
                out,
                settings,
                workers=min(8, usable_cpus()),  # one case per core, at most 8
                progress=progress.callback("phantom"),
                keep_sound=True,  # another process may have generated it meanwhile
            )
        index = discover(out)
        check_dataset_json(index.root, protocol.labels, len(index.labeled))
        return index
    env = protocol.dataset.path_env
    if data is None and env and os.environ.get(env):
        data = Path(os.environ[env])
    if data is None:
        hint = f" or set ${env}" if env else ""
        raise DatasetError(
            f"{protocol.path}: protocol '{protocol.name}' needs a data folder: "
            f"pass --data DIR{hint}"
        )
    index = discover(Path(data))
    check_dataset_json(index.root, protocol.labels, len(index.labeled))
    return index
