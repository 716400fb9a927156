"""Cold and warm cost of the slice stores' content keys on the phantom protocol's data.

A cold start hashes every byte of every input file (labeled images and labels, unlabeled
images); a warm start finds each digest in the memo by a stat. Reads the phantom already in
the cache (`$LABELBENCH_CACHE`, generated on first use by `bench run`) and writes nothing
there: the memo lives in a temporary folder. With `--store`, also builds the labeled slice
store in a temporary cache and times its checks on open (warm, and full as `--verify` does).

    LABELBENCH_CACHE=/work/lbcache python perf/bench_cache.py [--repeats 5] [--store]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from benchmark.data.cache import check_folder
from benchmark.data.digests import HASH, DigestMemo
from benchmark.data.reader import discover
from benchmark.data.slicestore import Preprocessing, build_slice_store, store_key
from benchmark.data.source import phantom_dir
from benchmark.protocol import load_protocol


def throughput(name: str, mib: int = 256) -> float:
    """GB/s of hashlib's `name` over `mib` MiB in memory."""
    block = bytes(range(256)) * 4096
    h = hashlib.new(name)
    t = time.perf_counter()
    for _ in range(mib):
        h.update(block)
    return mib * len(block) / (time.perf_counter() - t) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="phantom")
    parser.add_argument("--repeats", type=int, default=5, help="warm starts timed (median)")
    parser.add_argument("--store", action="store_true", help="also build and check the store")
    args = parser.parse_args()
    protocol = load_protocol(args.protocol)
    folder = phantom_dir(protocol)
    if not (folder / "dataset.json").exists():
        raise SystemExit(f"{folder}: no phantom here; run `bench run -p {args.protocol}` first")
    index = discover(folder)
    prep = Preprocessing(protocol.window_hu, protocol.slice_size, protocol.nonfinite)
    files = [p for c in (*index.labeled, *index.unlabeled) for p in (c.image, c.label) if p]
    size = sum(p.stat().st_size for p in files)
    print(
        f"{folder}: {len(index.labeled)} labeled + {len(index.unlabeled)} unlabeled cases, "
        f"{len(files)} files, {size / 1e9:.3f} GB"
    )
    for name in (HASH, "blake2b"):
        print(f"  {name}: {throughput(name):.2f} GB/s in memory")

    def keys(memo: DigestMemo) -> float:
        t = time.perf_counter()
        store_key(index.labeled, prep, list(protocol.labels), memo)
        store_key(index.unlabeled, prep, (), memo)
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        first = keys(DigestMemo(Path(tmp) / "first.sqlite"))  # may read from disk
        memo = DigestMemo(Path(tmp) / "memo.sqlite")
        cold = keys(memo)  # page cache warm now: the cost of hashing itself
        warm = statistics.median(keys(memo) for _ in range(args.repeats))
        print(f"content keys, cold (first read, maybe from disk): {first:.3f} s")
        print(
            f"content keys, cold (files in the page cache): {cold:.3f} s "
            f"({size / cold / 1e9:.2f} GB/s)"
        )
        print(f"content keys, warm (memo, median of {args.repeats}): {warm * 1e3:.1f} ms")
        print(f"warm / cold: {warm / cold:.4f} (cold is {cold / warm:.0f}x warm)")
        if args.store:
            cache = Path(tmp) / "cache"
            t = time.perf_counter()
            store = build_slice_store(index.labeled, prep, cache, list(protocol.labels))
            built = time.perf_counter() - t
            store_files = [p for p in store.root.rglob("*") if p.is_file()]
            mb = sum(p.stat().st_size for p in store_files) / 1e6
            truth = sum(p.stat().st_size for p in (store.root / "truth").iterdir()) / 1e6
            print(f"labeled store: built in {built:.1f} s, {mb:.0f} MB ({truth:.0f} MB truth)")
            store_memo = DigestMemo.in_cache(cache)
            t = time.perf_counter()
            assert check_folder(store.root, store_memo, full=True) is None
            full = time.perf_counter() - t
            time.sleep(2.5)  # files younger than 2 s are not memoised (digests.RACY_NS)
            check_folder(store.root, store_memo)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                assert check_folder(store.root, store_memo) is None
                times.append(time.perf_counter() - t)
            print(
                f"store check on open: full (--verify) {full:.3f} s, "
                f"warm {statistics.median(times) * 1e3:.1f} ms "
                "(young files are hashed on every open for their first 2 s)"
            )


if __name__ == "__main__":
    main()
