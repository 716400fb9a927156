"""`bench report`, `bench methods`, `bench protocols` and `bench protocol show`: what is
installed, what a protocol holds, and the leaderboard of what is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from benchmark.cli.options import (
    DataOpt,
    DrawSeedOpt,
    ProtocolOpt,
    QuietOpt,
    ResultsOpt,
    check_seeds,
)
from benchmark.cli.output import err, out, user_errors


@user_errors
def report(
    protocol: ProtocolOpt = "phantom",
    results: ResultsOpt = Path("runs"),
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default reports/<protocol>).")
    ] = None,
    mix_code: Annotated[
        bool,
        typer.Option(
            "--mix-code",
            help="Pool runs made by different code (default: each method's newest code only).",
        ),
    ] = False,
) -> None:
    """Write LEADERBOARD.md and plots for one protocol from the results store."""
    from benchmark.report import report_from_store

    path = report_from_store(protocol, results, out_dir, mix_code)
    out.print(f"wrote {path}", highlight=False)


@user_errors
def methods(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show config fields.")] = False,
) -> None:
    """List installed methods (entry-point group labelbench.methods)."""
    from rich.markup import escape

    from benchmark.config import describe_fields
    from benchmark.registry import installed_methods

    table = Table(title="installed methods")
    for col in ("name", "summary", "package"):
        table.add_column(col)
    for name, entry in installed_methods().items():
        try:
            cls = entry.load()
            summary = cls.summary
            if verbose:
                fields = describe_fields(cls.Config)
                summary += "\n" + "\n".join(
                    f"  {n}: {t} = {d}" + ("  (execution only)" if x else "")
                    for n, t, d, x in fields
                )
            summary = escape(summary)  # a plugin's text is shown as written, never as markup
        except Exception as exc:  # a broken plugin must not hide the others
            summary = f"[red]cannot load: {escape(str(exc))}[/red]"
        table.add_row(escape(name), summary, escape(entry.distribution))
    out.print(table)


@user_errors
def protocols() -> None:
    """List available protocols."""
    from rich.markup import escape

    from benchmark.protocol import available_protocols, load_protocol

    table = Table(title="protocols")
    for col in ("name", "description", "budgets", "file"):
        table.add_column(col)
    for name, path in available_protocols().items():
        p = load_protocol(str(path))
        table.add_row(name, escape(p.description), ", ".join(p.budgets), escape(str(path)))
    out.print(table)


@user_errors
def protocol_show(
    name: Annotated[str, typer.Argument(help="Protocol name or .toml path.")],
    data: DataOpt = None,
    seed: DrawSeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Print the protocol's hash, split sizes and budget sizes (reads the data)."""
    from benchmark.data.context import load_data
    from benchmark.errors import BudgetError
    from benchmark.progress import Progress
    from benchmark.protocol import load_protocol

    check_seeds(seed)
    protocol = load_protocol(name)
    progress = Progress(quiet=quiet, console=err)
    try:
        ctx = load_data(protocol, data, progress)
    finally:
        progress.stop()
    out.print(
        f"[bold]{protocol.name}[/bold] ({protocol.path}) hash {protocol.hash}", highlight=False
    )
    out.print(
        f"data {ctx.index.root}; slice store {ctx.store.key}; split {ctx.split.hash}",
        highlight=False,
    )
    table = Table(title="split")
    for col in ("part", "cases", "slices"):
        table.add_column(col)
    for part in ("train", "val", "test"):
        ids = getattr(ctx.split, part)
        n = sum(len(ctx.store.rows_of_case(c)) for c in ids)
        table.add_row(part, str(len(ids)), str(n))
    table.add_row("unlabeled", str(len(ctx.index.unlabeled)), "")
    out.print(table)
    candidates = ctx.train_candidates()[0]
    table = Table(
        title=f"budgets (seed {seed}; drawn from {len(candidates)} "
        f"{protocol.draw_from} train slices)"
    )
    for col in ("budget", "definition", "labeled slices", "from cases"):
        table.add_column(col)
    for b in protocol.budgets.values():
        definition = f"{b.count} {b.unit}" if b.count else f"{b.fraction:.0%} of {b.unit}"
        try:
            ids, _ = ctx.budget_rows(b, seed)
        except BudgetError:
            table.add_row(b.name, definition, "[red]larger than the train pool[/red]", "")
            continue
        table.add_row(b.name, definition, str(len(ids)), str(len({i.split(":")[0] for i in ids})))
    out.print(table)
