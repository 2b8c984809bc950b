"""``evol plan``: what a run would do, printed as two tables (stages, estimate)."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from flows.cli_common import SET_OPTION, ConfigArg, Debug, console, fail, fail_on_problems, load_config, run_line


def _measure_log() -> Any:
    """Measuring starts the run's engines: their output goes to a log file, named on the terminal."""
    from tasks.core.runlog import RunLog

    path = Path(tempfile.gettempdir()) / f"evol-plan-{datetime.now():%Y%m%d-%H%M%S}.log"
    run_log = RunLog(local=path, uri=str(path))
    run_log.start(verbose=False)
    console.print(f"log: {path} (the engine's output while measuring)", soft_wrap=True, highlight=False)
    return run_log


def plan(
    config: ConfigArg,
    sets: list[str] = SET_OPTION,
    recompute: list[str] = typer.Option([], "--recompute", help="As for `evol run`: ingest, round=K, mix, export, "
                                        "all (repeatable)"),
    measure: int = typer.Option(0, "--measure", min=0, help="Run round 1 of N seeds through the model to measure "
                                "completion tokens and speed (starts the engine)"),
    debug: Debug = False,
) -> None:
    """Show what `evol run` would do: each stage reused or recomputed, shards per round, and an estimate of
    prompt and completion tokens and engine time. Starts no Prefect and (without --measure) no engine."""
    from flows.cli_models import prepare_for_config
    from tasks.core.summaries import engine_time_line, whole_run
    from tasks.ingest.seeds import IngestError
    from tasks.planning.plan import make_plan
    from tasks.planning.validate import validate_run

    run_config = load_config(config, sets, recompute)
    fail_on_problems(validate_run(run_config, str(config), write_check=False))  # a plan writes nothing
    prepare_for_config(run_config)
    run_log = _measure_log() if measure else None
    try:
        planned = make_plan(run_config, tuple(recompute), measure)
    except (IngestError, OSError) as err:
        fail(str(err))
    finally:
        if run_log is not None:
            run_log.finish()
    console.print(f"plan for run [bold]{planned.run_uri}[/] ({run_line(run_config)})", soft_wrap=True, highlight=False)
    stages = Table(title="stages")
    for col in ("stage", "would be", "shards reused", "why"):
        stages.add_column(col, justify="right" if col == "shards reused" else "left")
    for s in planned.stages:
        sharded = s.stage in ("ingest", "score") or s.stage.startswith("round")
        shards = f"{s.shards_reused}/{s.shards}" if sharded else "-"
        stages.add_row(s.stage, "reused" if s.reused else "recomputed", shards, s.why)
    console.print(stages)
    e = planned.estimate
    table = Table(title=f"estimate for {e.rows} seed rows")
    for col in ("round", "calls", "prompt tokens", "completion tokens", "to compute"):
        table.add_column(col, justify="right")
    for r in e.rounds:
        table.add_row(str(r.round), str(r.calls), str(r.prompt_tokens), str(r.completion_tokens), f"{r.share:.0%}")
    console.print(table)
    if e.stages:
        added = Table(title="added by the scoring stage")
        for col in ("stage", "calls", "prompt tokens", "max generated tokens", "to compute"):
            added.add_column(col, justify="left" if col == "stage" else "right")
        for s in e.stages:
            added.add_row(s.stage, str(s.calls), str(s.prompt_tokens), str(s.max_completion_tokens), f"{s.share:.0%}")
        console.print(added)
    whole = whole_run(e)
    for label, est in (("whole run", whole), ("to compute", e)) if whole != e else (("whole run", whole),):
        console.print(f"{label}: {est.total('prompt_tokens')} prompt tokens, {est.total('completion_tokens')} "
                      f"completion tokens. {engine_time_line(est)}", soft_wrap=True, highlight=False)
    console.print(f"tokens counted with {e.tokenizer}; completions from {e.completions}", soft_wrap=True,
                  highlight=False)
