"""Where the `bench` commands write: the stdout and stderr consoles, and the wrapper that turns
a user-facing error into one red line and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from benchmark.errors import LabelbenchError

out = Console(emoji=False)  # ":x" in a path or value is text, never an emoji code
err = Console(stderr=True, emoji=False)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a `LabelbenchError` (or a stray `EOFError`) into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LabelbenchError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except EOFError as exc:
            # A truncated file read outside benchmark.data.reader (which names the file).
            # Escaping, click would take it for Ctrl-D and print a bare "Aborted.".
            reason = str(exc) or "a file ended early"
            err.print(f"[red]error:[/red] truncated input: {escape(reason)}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper
