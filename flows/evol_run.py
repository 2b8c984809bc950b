"""The deployable entry: load a run config from a URI (a local path or ``s3://``) and run the pipeline."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.evol_instruct import RunResult, evol_instruct
from tasks.core.config_file import load_run_config


@flow(name="evol-run")
def evol_run(config_uri: str, rounds: int | None = None) -> RunResult:
    """Load the RunConfig at ``config_uri`` (relative paths from the worker's code folder) and run evol-instruct."""
    config = load_run_config(config_uri, {"rounds": rounds} if rounds is not None else None)
    get_run_logger().info("config %s: %s rounds, %s backend, model %s, output root %s", config_uri, config.rounds,
                          config.llm.backend, config.llm.model, config.output_root)
    return evol_instruct(config)
