"""What the speed scripts share: the `bench run` command line they time.

Run as `python perf/<script>.py`, so this folder is on `sys.path` and the scripts import
this module by its plain name.
"""

from __future__ import annotations

import sys
from pathlib import Path


def bench_run_command(
    method: str, budget: str, results: Path, extra: list[str], **options: str
) -> list[str]:
    """`python -m benchmark.cli run --method M --budget B [--<option> V ...] --results R
    --quiet EXTRA...`; an option's `_` becomes `-` (protocol="phantom" → `--protocol phantom`)."""
    flags = [part for k, v in options.items() for part in (f"--{k.replace('_', '-')}", v)]
    return [
        sys.executable, "-m", "benchmark.cli", "run", "--method", method, "--budget", budget,
        *flags, "--results", str(results), "--quiet", *extra,
    ]  # fmt: skip
