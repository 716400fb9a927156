"""The options the `bench` commands share, each declared once as a typer `Annotated` alias
(its flags and help text), and the checks and conversions of their values.

Options that one command alone has stay with that command.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from benchmark.errors import ConfigError

R = TypeVar("R")


def _method(text: str) -> Any:
    return typer.Option("--method", "-m", help=text)


def _seed(text: str) -> Any:
    return typer.Option("--seed", "-s", help=text)


ProtocolOpt = Annotated[str, typer.Option("--protocol", "-p", help="Protocol name or .toml path.")]
ResultsOpt = Annotated[
    Path, typer.Option("--results", help="Results directory (holds labelbench.sqlite).")
]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Data folder for protocols that read a path.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="Hash every input file and cached file again, byte by byte, instead of trusting "
        "the digest memo; a damaged cache is rebuilt.",
    ),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Method config override key=value; repeatable.")
]
SweepSetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="key=value for every method, or method:key=value."),
]

MethodOpt = Annotated[str, _method("Method name (see `bench methods`).")]
PretrainMethodOpt = Annotated[str, _method("A method with pretraining.")]
GenerativeMethodOpt = Annotated[str, _method("A generative method.")]
MethodsOpt = Annotated[str, typer.Option("--methods", help="Comma-separated method names.")]

BudgetOpt = Annotated[str, typer.Option("--budget", "-b", help="Budget name (e.g. 4slices, 1pct).")]
BudgetsOpt = Annotated[str, typer.Option("--budgets", help="Comma-separated budget names.")]

RunSeedsOpt = Annotated[list[int] | None, _seed("Seed; repeat for several.")]
SweepSeedsOpt = Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")]
DrawSeedOpt = Annotated[int, _seed("Budget draw seed.")]
PretrainSeedOpt = Annotated[int, _seed("Run seed (if the method uses it).")]
SampleSeedOpt = Annotated[int, _seed("Sampling seed.")]
FidelitySeedOpt = Annotated[int, _seed("Seed of sampling and of the real-slice draw.")]

RunForceOpt = Annotated[bool, typer.Option("--force", help="Re-run even if already completed.")]
SweepForceOpt = Annotated[bool, typer.Option("--force", help="Re-run completed runs.")]

SamplerOpt = Annotated[
    str | None, typer.Option("--sampler", help="One of the method's (default: its first).")
]
StepsOpt = Annotated[
    int | None,
    typer.Option("--steps", help="Sampling steps (default: the method's own for the sampler)."),
]


def check_device(device: str, here: bool = True) -> None:
    """Refuse a `--device` that is none of auto, cpu, cuda, cuda:N, and (`here`: the device
    is this machine's) a CUDA device this machine does not have, before any work."""
    if device in ("auto", "cpu"):
        return
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise ConfigError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if not here:
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(
            f"--device {device}: torch {torch.__version__} sees no CUDA device on this machine; "
            f"use --device cpu (or auto)"
        )
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise ConfigError(
            f"--device {device}: this machine has {count} CUDA device(s), 0 to {count - 1}"
        )


def names(text: str) -> list[str]:
    """The names of a comma-separated option (`--methods a,b`), blanks dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def int_seeds(text: str) -> list[int]:
    """The seeds of `--seeds 0,1,2`."""
    seeds = []
    for item in names(text):
        try:
            seeds.append(int(item))
        except ValueError:
            raise ConfigError(f"--seeds: {item!r} is not an integer") from None
        if seeds[-1] < 0:
            raise ConfigError(f"--seeds: {item} is not a seed (an integer >= 0)")
    return seeds


def check_seeds(*seeds: int) -> None:
    """`--seed` values: seeds draw budgets and initialise models, integers >= 0."""
    for seed in seeds:
        if seed < 0:
            raise ConfigError(f"--seed {seed}: a seed is an integer >= 0")


def request(cls: type[R], params: dict[str, Any], **values: Any) -> R:
    """The request dataclass `cls` of a command from its parameters (`locals()` on entry):
    each field takes the parameter of its name and `overrides` the `--set` items; `values`
    give the fields that the command converts first (they win)."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    taken = {name: value for name, value in params.items() if name in fields}
    if "set_" in params:
        taken["overrides"] = list(params["set_"] or [])
    return cls(**{**taken, **values})
