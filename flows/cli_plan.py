"""``evol plan``: what a run would do, printed as two tables (stages, estimate)."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tasks.core.runlog import RunLog

console = Console()


def _measure_log() -> RunLog:
    """Measuring starts the run's engines: their output goes to a log file, named on the terminal."""
    path = Path(tempfile.gettempdir()) / f"evol-plan-{datetime.now():%Y%m%d-%H%M%S}.log"
    run_log = RunLog(local=path, uri=str(path))
    run_log.start(verbose=False)
    console.print(f"log: {path} (the engine's output while measuring)", soft_wrap=True, highlight=False)
    return run_log


def plan_command(config_path: Path, sets: list[str], recompute: list[str], measure: int) -> None:
    from flows.cli_common import fail, fail_on_problems, run_line
    from flows.cli_models import prepare_for_config
    from tasks.core.config import ConfigError
    from tasks.core.config_file import load_run_config
    from tasks.core.context import check_recompute
    from tasks.core.summaries import engine_time_line, whole_run
    from tasks.ingest.seeds import IngestError
    from tasks.planning.plan import make_plan
    from tasks.planning.validate import validate_run

    try:
        config = load_run_config(config_path, None, sets)
        check_recompute(tuple(recompute), config.rounds)
    except (ConfigError, ValueError) as err:
        fail(str(err))
    fail_on_problems(validate_run(config, str(config_path), write_check=False))  # a plan writes nothing
    prepare_for_config(config)
    run_log = _measure_log() if measure else None
    try:
        plan = make_plan(config, tuple(recompute), measure)
    except (IngestError, OSError) as err:
        fail(str(err))
    finally:
        if run_log is not None:
            run_log.finish()
    console.print(f"plan for run [bold]{plan.run_uri}[/] ({run_line(config)})", soft_wrap=True, highlight=False)
    stages = Table(title="stages")
    for col in ("stage", "would be", "shards reused", "why"):
        stages.add_column(col, justify="right" if col == "shards reused" else "left")
    for s in plan.stages:
        sharded = s.stage in ("ingest", "score") or s.stage.startswith("round")
        shards = f"{s.shards_reused}/{s.shards}" if sharded else "-"
        stages.add_row(s.stage, "reused" if s.reused else "recomputed", shards, s.why)
    console.print(stages)
    e = plan.estimate
    table = Table(title=f"estimate for {e.rows} seed rows")
    for col in ("round", "calls", "prompt tokens", "completion tokens", "to compute"):
        table.add_column(col, justify="right")
    for r in e.rounds:
        table.add_row(str(r.round), str(r.calls), str(r.prompt_tokens), str(r.completion_tokens), f"{r.share:.0%}")
    console.print(table)
    whole = whole_run(e)
    for label, est in (("whole run", whole), ("to compute", e)) if whole != e else (("whole run", whole),):
        console.print(f"{label}: {est.total('prompt_tokens')} prompt tokens, {est.total('completion_tokens')} "
                      f"completion tokens. {engine_time_line(est)}", soft_wrap=True, highlight=False)
    console.print(f"tokens counted with {e.tokenizer}; completions from {e.completions}", soft_wrap=True,
                  highlight=False)
