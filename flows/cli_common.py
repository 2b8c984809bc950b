"""What the ``evol`` command and its subcommand modules share: the consoles, ``--debug``, error exits."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)
DEBUG = {"on": False}


def _debug(on: bool) -> None:
    DEBUG["on"] = DEBUG["on"] or on


Debug = Annotated[bool, typer.Option("--debug", help="Show the traceback behind an error", callback=_debug)]
ConfigArg = Annotated[Path, typer.Argument(help="Run configuration (YAML), e.g. configs/demo.yaml")]
SET_OPTION = typer.Option([], "--set", help="Override a config key: KEY=VALUE, KEY dotted "
                          "(rounds=3, sampling.evolve.max_tokens=64; repeatable)")


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


def load_config(path: Path, sets: list[str], recompute: list[str], overrides: dict[str, Any] | None = None) -> Any:
    """The run config at ``path`` with the overrides and ``--set`` pairs, its ``--recompute`` names checked; a config
    that can't be read ends the command with its error."""
    from tasks.core.config import ConfigError
    from tasks.core.config_file import load_run_config
    from tasks.core.context import check_recompute

    try:
        config = load_run_config(path, overrides, sets)
        check_recompute(tuple(recompute), config.rounds)
    except (ConfigError, ValueError) as err:
        fail(str(err))
    return config


def fail_on_problems(problems: list) -> None:
    """Exit 2 with one ``error: <file>: <key>: <what>`` line per problem, if there are any."""
    if problems:
        fail("\n".join(str(p) for p in problems))


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises ``SystemExit(143)`` instead of ending the process
    at once: as on Ctrl-C, ``finally`` blocks run, so the run's log is uploaded and the run folder given back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
