"""The consoles and the one error format every stage's CLI uses: `error (code): message`."""

from __future__ import annotations

import typer
from rich.console import Console

from ingest.errors import PolicyRagError

console = Console()
err_console = Console(stderr=True)


def print_error(exc: PolicyRagError) -> None:
    err_console.print(f"[bold red]error[/] ({exc.code}): {exc}", soft_wrap=True)


def fail(exc: PolicyRagError) -> None:
    """Print the error and exit 2 (a configuration, input or store error)."""
    print_error(exc)
    raise typer.Exit(2)
