"""End-to-end time of `bench run --method unet-scratch --budget 1pct` from a fresh start.

Uses an empty cache and results folder, so phantom generation and preprocessing are
included, exactly as a new user's first run. Prints the wall time and the per-phase times
recorded in the store. Target: under 5 minutes on 2 CPU cores.

    python perf/bench_run.py [--method unet-scratch] [--budget 1pct] [-- extra bench args]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from bench_common import bench_run_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="unet-scratch")
    parser.add_argument("--budget", default="1pct")
    parser.add_argument(
        "--cache", type=Path, help="cache folder to fill (must be empty; default: a temporary one)"
    )
    parser.add_argument("extra", nargs="*", help="more `bench run` arguments")
    args = parser.parse_args()
    if args.cache and args.cache.exists() and any(args.cache.iterdir()):
        parser.error(f"{args.cache} is not empty: the measurement needs a fresh cache")
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "cache"
        env = dict(os.environ, LABELBENCH_CACHE=str(cache))
        cmd = bench_run_command(args.method, args.budget, Path(tmp) / "runs", args.extra)
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - t
        with sqlite3.connect(Path(tmp) / "runs" / "labelbench.sqlite") as conn:
            phases, peak, device = conn.execute(
                "SELECT phases, peak_mem_mb, device FROM runs"
            ).fetchone()
    print(f"command: bench run --method {args.method} --budget {args.budget} (fresh cache)")
    print(f"wall time: {wall:.1f}s (target < 300s) on {device}")
    print("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in json.loads(phases).items()))
    print(f"peak memory: {peak:.0f} MB")


if __name__ == "__main__":
    main()
