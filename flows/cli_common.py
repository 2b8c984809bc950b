"""What the ``evol`` command and its subcommand modules share: the consoles, ``--debug``, error exits."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)
DEBUG = {"on": False}


def run_line(config: Any) -> str:
    """``N round(s), BACKEND backend, model MODEL``: what `evol run` and `evol plan` say of a run first."""
    rounds = f"{config.rounds} round" + ("" if config.rounds == 1 else "s")
    return f"{rounds}, {config.llm.backend} backend, model {config.llm.model}"


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` (one line per line of the message) and exit 2; ``--debug`` adds the traceback."""
    from storage.redact import redact_text

    if DEBUG["on"] and sys.exc_info()[0] is not None:
        import traceback

        err_console.print(redact_text(traceback.format_exc()), markup=False, highlight=False)
    for line in redact_text(str(message)).splitlines() or [""]:
        err_console.print(f"[bold red]error:[/] {line}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code=2)


def fail_on_problems(problems: list) -> None:
    """Exit 2 with one ``error: <file>: <key>: <what>`` line per problem, if there are any."""
    if problems:
        fail("\n".join(str(p) for p in problems))
