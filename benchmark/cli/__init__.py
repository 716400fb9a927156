"""`bench`: the command line of labelbench. This module builds the typer `app` from the
command modules (`runs`, `catalog`, `generative`, `data`) and owns the `main` entry point;
the options they share are declared in `options`, the consoles and error wrapper in `output`.
"""

from __future__ import annotations

import typer

from benchmark.cli import catalog, data, generative, runs

app = typer.Typer(
    help="labelbench: label-efficient CT multi-organ segmentation benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Data sets: generate the built-in phantom.", no_args_is_help=True)
protocol_app = typer.Typer(help="Inspect one protocol.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(protocol_app, name="protocol")

for command in (
    runs.run,
    runs.evaluate,
    catalog.report,
    catalog.methods,
    catalog.protocols,
    generative.pretrain,
    generative.sample,
    generative.fidelity,
    runs.sweep,
):
    app.command()(command)
protocol_app.command("show")(catalog.protocol_show)
data_app.command("phantom")(data.phantom)


def main() -> None:
    """The `bench` console script (and `python -m benchmark.cli`)."""
    import warnings

    # Emitted by a dependency at import time; not actionable for users of the CLI.
    warnings.filterwarnings("ignore", message="`torch.jit.interface` is deprecated")
    app()
