"""Label efficiency on a protocol: mean DSC per method and budget over several seeds.

Runs the grid with `bench sweep` (which skips runs already finished in the results store
and pretrains each model once), then prints the table of mean DSC (over seeds and test
cases) of the ranked runs (completed, on-protocol) and writes the report with `bench report`.
The defaults are the reference grid of `reports/phantom/`:

    python perf/label_efficiency.py [--methods ...] [--budgets ...] [--seeds 0,1,2] \
        [--results reports/phantom] [--out reports/phantom]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmark.report import split_ranked
from benchmark.store import ResultsStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods", default="unet-scratch,diffusion-linear,diffusion-decoder,simclr,mae,nnunet"
    )
    parser.add_argument("--budgets", default="4slices,1pct,10pct,100pct")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--protocol", default="phantom")
    parser.add_argument("--results", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    methods, budgets = args.methods.split(","), args.budgets.split(",")
    cmd = [sys.executable, "-m", "benchmark.cli", "sweep", "--methods", args.methods]
    cmd += ["--budgets", args.budgets, "--seeds", args.seeds, "--protocol", args.protocol]
    cmd += ["--results", str(args.results), "--device", args.device, "--quiet"]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=False)  # failed runs are recorded; the table shows the rest
    store = ResultsStore(args.results)
    runs = split_ranked(store.runs(protocol=args.protocol))[0]
    runs = runs[runs.method.isin(methods) & runs.budget.isin(budgets)]
    metrics = store.metrics(runs.run_id)
    per_case = metrics.groupby(["run_id", "case_id"]).dsc.mean().reset_index()
    per_case = per_case.merge(runs[["run_id", "method", "budget", "seed"]], on="run_id")
    table = per_case.groupby(["method", "budget"]).dsc.mean().unstack("budget")
    seeds_n = runs.groupby(["method", "budget"]).seed.nunique().unstack("budget")
    print("\nmean DSC over seeds and test cases (seeds per cell in brackets)")
    header = "| method | " + " | ".join(budgets) + " |"
    print(header)
    print("|" + "---|" * (len(budgets) + 1))
    for method in methods:
        cells = []
        for b in budgets:
            if (
                method in table.index
                and b in table.columns
                and table.loc[method, b] == table.loc[method, b]
            ):
                cells.append(f"{table.loc[method, b]:.3f} ({int(seeds_n.loc[method, b])})")
            else:
                cells.append("n/a")
        print(f"| {method} | " + " | ".join(cells) + " |")
    report = [
        sys.executable,
        "-m",
        "benchmark.cli",
        "report",
        "--protocol",
        args.protocol,
        "--results",
        str(args.results),
    ]
    if args.out:
        report += ["--out", str(args.out)]
    subprocess.run(report, check=False)


if __name__ == "__main__":
    main()
