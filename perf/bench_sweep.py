"""Wall time of one small grid with `bench sweep --executor local` and `--executor ray`.

    python perf/bench_sweep.py [--methods unet-scratch] [--budgets 4slices,1pct]
        [--seeds 0,1] [--set iterations=20] [--jobs 2]

Both sweeps run the same grid of tiny runs on the phantom (short training through `--set`,
so the executors' overhead is what is measured), each into a fresh results folder, with the
data and pretraining caches warmed first so neither pays for them. The local executor runs
`--jobs` runs at a time in processes, Ray as many tasks as the machine has CPUs (one CPU
each). Prints both wall times and Ray's overhead (target: under 20 %).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep(results: Path, grid: list[str], *extra: str) -> float:
    cmd = [sys.executable, "-m", "benchmark.cli", "sweep", *grid, "--results", str(results)]
    cmd += ["--device", "cpu", "--quiet", *extra]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="unet-scratch")
    parser.add_argument("--budgets", default="4slices,1pct")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--protocol", default="phantom")
    parser.add_argument("--set", dest="sets", action="append", default=None)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    sets = args.sets or ["iterations=20"]
    grid = ["--methods", args.methods, "--budgets", args.budgets, "--seeds", args.seeds]
    grid += ["--protocol", args.protocol, "--cpus-per-run", "1"]
    grid += [a for s in sets for a in ("--set", s)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first = args.methods.split(",")[0]
        warm = ["--methods", first, "--budgets", args.budgets.split(",")[0], "--seeds", "0"]
        warm += ["--protocol", args.protocol] + [a for s in sets for a in ("--set", s)]
        sweep(tmp / "warm", warm)  # phantom, slice store and any pretraining now cached
        local = sweep(tmp / "local", grid, "--executor", "local", "--jobs", str(args.jobs))
        ray = sweep(tmp / "ray", grid, "--executor", "ray")
    n = len(args.methods.split(",")) * len(args.budgets.split(",")) * len(args.seeds.split(","))
    print(f"grid: {n} runs ({args.methods} × {args.budgets} × seeds {args.seeds}; {sets})")
    print(f"--executor local --jobs {args.jobs}: {local:.1f}s")
    print(f"--executor ray ({os.cpu_count()} CPUs, 1 per task): {ray:.1f}s")
    overhead = 100 * (ray / local - 1)
    print(f"ray / local = {ray / local:.2f} (overhead {overhead:+.0f} %, target < 20 %)")


if __name__ == "__main__":
    main()
