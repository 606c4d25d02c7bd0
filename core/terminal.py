"""The consoles and the one error format every command uses: `error (code): message`.

The root command group (policyrag/cli.py) prints any `PolicyRagError` a command raises this way
and exits 2, so commands raise and never catch-and-print themselves.
"""

from __future__ import annotations

from rich.console import Console

from core.errors import PolicyRagError

console = Console()
err_console = Console(stderr=True)


def print_error(exc: PolicyRagError) -> None:
    err_console.print(f"[bold red]error[/] ({exc.code}): {exc}", soft_wrap=True)
