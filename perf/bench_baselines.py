"""Time `bench run --method nnunet --budget 4slices` on the phantom, phase by phase.

Runs the command on the CPU, pinned to `--cores` cores (default 2), with a fresh results
folder and the normal cache (`$LABELBENCH_CACHE`; pass `--fresh-cache` to include phantom
generation and preprocessing). Prints the wall time, the runner's phases from the results
store, nnU-Net's own steps (export, fingerprint, plan, preprocess, train, validation) from
the run record, the plan and schedule nnU-Net ran (by default the protocol's fine-tuning
samples at its planned batch) with the time per training step, the run's status, samples,
validation and sanity DSC, the CPU time used (all processes, nnU-Net's workers included) and
the load average, which says whether other work shared the cores. All figures come from one
run of the command.

    python perf/bench_baselines.py [--method nnunet] [--budget 4slices] [--cores 2]
        [--threads N] [--device cpu] [--fresh-cache] [-- extra bench run arguments, e.g.
        --set epochs=5]

With `--device cuda` it times the GPU path (the CPU cores still pinned: nnU-Net's data
augmentation runs on them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from bench_common import bench_run_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="nnunet")
    parser.add_argument("--budget", default="4slices")
    parser.add_argument("--protocol", default="phantom")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores to pin the run to")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch / OpenMP threads (default: one per core; use fewer when other jobs share "
        "the cores, as OpenMP threads that wait on each other slow down many times)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--fresh-cache", action="store_true", help="start from an empty cache")
    parser.add_argument("extra", nargs="*", help="more `bench run` arguments")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))[: args.cores]
    with tempfile.TemporaryDirectory() as tmp:
        threads = args.threads or len(cores)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if args.fresh_cache:
            env["LABELBENCH_CACHE"] = str(Path(tmp) / "cache")
        results = Path(tmp) / "runs"
        cmd = bench_run_command(
            args.method,
            args.budget,
            results,
            args.extra,
            protocol=args.protocol,
            device=args.device,
        )
        load_before = os.getloadavg()[0]
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))
        wall = time.perf_counter() - t
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = os.getloadavg()[0]
        with sqlite3.connect(results / "labelbench.sqlite") as conn:
            status, phases, info, device, peak, samples, off, val, train = conn.execute(
                "SELECT status, phases, info, device, peak_mem_mb, finetune_samples, "
                "off_protocol, val_dsc, train_dsc FROM runs"
            ).fetchone()
            dsc = conn.execute(
                "SELECT avg(value) FROM case_metrics WHERE metric = 'dsc'"
            ).fetchone()[0]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    info = json.loads(info)
    print(
        f"command: bench run --method {args.method} --budget {args.budget} "
        f"--protocol {args.protocol} --device {args.device} {' '.join(args.extra)}".rstrip()
    )
    print(
        f"wall time: {wall:.1f}s on {device}, pinned to {len(cores)} cores {cores}, "
        f"{threads} threads; status {status}"
    )
    print(
        f"fine-tuning samples {samples} ({'off-protocol: ' + off if off else 'on-protocol'}); "
        f"validation DSC {val}, sanity DSC on its labeled slices {train}"
    )
    print("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in json.loads(phases).items()))
    nn = info.get("nnunet")
    if nn:
        print("nnU-Net steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in nn["seconds"].items()))
        plan = nn.get("plan", {})
        print(
            f"nnU-Net plan ({plan.get('planner')}, {plan.get('configuration')}): patch "
            f"{plan.get('patch_size')}, batch {plan.get('batch_size')}, {plan.get('n_stages')} "
            f"stages {plan.get('features_per_stage')}, spacing {plan.get('spacing_mm')} mm; "
            f"split: {nn.get('split', {}).get('source')}"
        )
        sched = nn.get("schedule", {})
        steps = sched.get("optimizer_steps") or 0
        per_step = nn["seconds"].get("train", 0.0) / max(steps, 1)
        print(
            f"nnU-Net schedule ({sched.get('trainer')}, from {sched.get('from')}): "
            f"{sched.get('epochs')} epochs of {sched.get('iterations_per_epoch')} iterations "
            f"(last {sched.get('last_epoch_iterations')}) = {steps} steps × batch "
            f"{sched.get('batch_size')} = {sched.get('samples_seen')} samples; "
            f"{per_step:.3f}s per step (training incl. nnU-Net's per-epoch validation); "
            f"pseudo-Dice {nn.get('pseudo_dice')}"
        )
    if "pretrain" in info:
        print(f"pretraining: {info['pretrain']}")
    print(
        f"CPU time (all processes): {cpu:.0f}s = {cpu / max(wall, 1e-9):.2f} cores busy on "
        f"average; load average {load_before:.1f} before, {load_after:.1f} after "
        f"(above {len(cores)} means other work shared the cores)"
    )
    print(f"mean DSC over test cases and organs: {dsc:.3f}; peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
