"""``evol run``: the whole pipeline from a config file, with per-round progress."""

from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from flows.cli_common import SET_OPTION, ConfigArg, Debug, console, fail, fail_on_problems, load_config, run_line


class RoundTimeColumn(ProgressColumn):
    """A round's time, from the round's start to its end (or now); ``-:--:--`` until the round starts."""

    def render(self, task: Task) -> Text:
        seconds = task.fields.get("seconds")
        return Text("-:--:--" if seconds is None else str(timedelta(seconds=int(seconds))), style="progress.elapsed")


def _watch_progress(run_id: str, rounds: int, stop: threading.Event, out: Console | None = None) -> None:
    """One bar per round from the run's own round progress in this process (``tasks.monitor.round_bars``): a
    round's bar counts this run's shard tasks as they finish, reused ones included, and its time starts with the
    round. The run folder's markers are not read: an earlier run's shards have them too."""
    from tasks.reporting.monitor import round_bars

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RoundTimeColumn(),
                  console=out or console, transient=False) as progress:
        tasks = [progress.add_task(f"round {k}", total=None, seconds=None) for k in range(1, rounds + 1)]

        def show() -> None:
            for task, bar in zip(tasks, round_bars(run_id, rounds), strict=True):
                progress.update(task, completed=bar.completed, total=bar.total, seconds=bar.seconds)

        show()
        while not stop.wait(0.5):
            show()
        show()  # the last frame: what the run did up to its end


def run(
    config: ConfigArg,
    rounds: int | None = typer.Option(None, "--rounds", min=0, help="Override the number of rounds"),
    output_root: str | None = typer.Option(None, "--output-root", help="Override where runs are written"),
    show_progress: bool = typer.Option(True, "--progress/--no-progress", help="Show per-round progress"),
    recompute: list[str] = typer.Option([], "--recompute",
                                        help="Redo a stage even if its outputs are current: ingest, round=K, mix, "
                                             "export or all (repeatable)"),
    sets: list[str] = SET_OPTION,
    take_over: bool = typer.Option(False, "--take-over", help="Take the run folder from a run that holds it"),
    verbose: bool = typer.Option(False, "--verbose", help="Show Prefect's and vLLM's logs in the terminal too "
                                 "(they always go to RUN/logs/run-*.log)"),
    debug: Debug = False,
) -> None:
    """Run the whole pipeline: ingest, evolve round after round, mix, deduplicate, export.

    The run folder is OUTPUT_ROOT/NAME; a rerun reuses every stage whose inputs did not change."""
    from storage.lease import RunLease, held_message, is_stale
    from tasks.core.context import run_layout
    from tasks.planning.validate import check_cluster, check_prefect_api, validate_run

    overrides = {k: v for k, v in (("rounds", rounds), ("output_root", output_root)) if v is not None}
    run_config = load_config(config, sets, recompute, overrides)
    # Plan-time validation: a config that can't run fails here, before Prefect starts or a run folder exists.
    fail_on_problems(validate_run(run_config, str(config)) + check_prefect_api() + check_cluster(run_config))

    layout = run_layout(run_config)
    held = RunLease(layout.run_uri).read()
    if held is not None and not take_over and not is_stale(held):
        fail(held_message(layout.run_uri, held))
    api = os.environ.get("PREFECT_API_URL")
    from storage.redact import redact_text
    shown_api = redact_text(api) if api else "a local Prefect API for this run"
    console.print(f"run [bold]{layout.run_id}[/] ({run_line(run_config)}) on {shown_api}",
                  soft_wrap=True, highlight=False)
    from flows.cli_models import prepare_for_config  # here, not above: tests/infra_driver.py replaces it
    prepare_for_config(run_config)
    from flows.cli_common import sigterm_as_exit
    from flows.local_api import local_api

    with sigterm_as_exit(), (nullcontext() if api else local_api()):
        result = _run_flow(run_config, layout, show_progress, recompute, take_over, verbose, on_server=bool(api))
    table = Table(title="rounds")
    for col in ("round", "pool in", "evolved", "carried", "rejected", "reused"):
        table.add_column(col, justify="left" if col == "rejected" else "right")
    for r in result.rounds:
        table.add_row(str(r.round), str(r.pool_in), str(r.evolved), str(r.carried),
                      ", ".join(f"{k}={v}" for k, v in r.rejected.items()),
                      "yes" if r.reused else f"{r.shards_reused}/{r.shards} shards")
    console.print(table)
    from tasks.reporting.report import seeds_line
    console.print(seeds_line(result.ingest), soft_wrap=True, highlight=False)
    from tasks.reporting.monitor import empty_export_warning, low_evolution_warning
    warnings = [low_evolution_warning(r, run_config.orchestration.min_evolved_share) for r in result.rounds]
    warnings.append(empty_export_warning(result.export.rows, run_config.rounds, run_config.mix.include_seeds))
    for warning in filter(None, warnings):
        console.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True, highlight=False)
    console.print(f"final rows: [bold]{result.mix.final}[/] (seeds and survivors after dedup)"
                  + (" (reused)" if result.mix.reused else ""), soft_wrap=True, highlight=False)
    console.print(f"outputs: {result.run_uri}", soft_wrap=True)
    for kind, uri in result.export.files.items():
        console.print(f"  {kind:9s} {uri}", soft_wrap=True)
    raise typer.Exit(code=0)


def _run_flow(config: Any, layout: Any, show_progress: bool, recompute: list[str], take_over: bool,
              verbose: bool = False, on_server: bool = False) -> Any:
    """The flow, with progress bars; on a server (``PREFECT_API_URL``) a run of the ``evol-instruct/cli`` deployment
    (``flows.server_run``), else a plain flow run on the run's private API."""
    from flows.evol_instruct import evol_instruct
    from flows.server_run import run_on_server
    from tasks.core.runlog import RunLog

    run_log = RunLog.for_run(layout.run_uri)
    run_log.start(verbose)
    shown = "" if verbose else " (Prefect's and vLLM's logs; --verbose shows them here)"
    console.print(f"log: {run_log.uri}{shown}", soft_wrap=True, highlight=False)

    stop = threading.Event()
    watcher = None
    if show_progress:
        from tasks.reporting.monitor import reset_live_rounds
        reset_live_rounds(layout.run_id)  # the flow does too, at its start; the bars begin empty meanwhile
        watcher = threading.Thread(target=_watch_progress, args=(layout.run_id, config.rounds, stop), daemon=True)
        watcher.start()
    from storage.errors import infrastructure_message
    from tasks.ingest.seeds import IngestError
    try:
        if on_server:
            from storage.redact import redact_text
            return run_on_server(config, list(recompute), take_over, lambda line: console.print(
                redact_text(line), soft_wrap=True, highlight=False, markup=False))
        return evol_instruct(config, recompute=list(recompute), take_over=take_over)
    except IngestError as err:  # the seeds as a whole can't be used (nothing accepted, too much rejected)
        unusable = str(err)
    except Exception as err:  # storage down, a full disk, the folder taken by a run that started with this one
        unusable = infrastructure_message(err, layout.run_uri)
        if unusable is None:
            raise
    finally:
        stop.set()
        if watcher:
            watcher.join(timeout=5)
        run_log.finish()
    fail(unusable)  # after the progress bars' last frame
