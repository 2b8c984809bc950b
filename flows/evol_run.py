"""The deployable entry: load a run config from a URI (a local path or ``s3://``) and run the pipeline."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.settings import PREFECT_UI_URL

from flows.evol_instruct import RunResult, evol_instruct
from tasks.core.config_file import load_run_config
from tasks.core.context import run_layout
from tasks.reporting.monitor import artifact_key
from tasks.reporting.report import run_links_markdown


@flow(name="evol-run")
def evol_run(config_uri: str, rounds: int | None = None) -> RunResult:
    """Load the RunConfig at ``config_uri`` (relative paths from the worker's code folder) and run evol-instruct."""
    config = load_run_config(config_uri, {"rounds": rounds} if rounds is not None else None)
    get_run_logger().info("config %s: %s rounds, %s backend, model %s, output root %s", config_uri, config.rounds,
                          config.llm.backend, config.llm.model, config.output_root)
    result = evol_instruct(config)
    run_id = run_layout(config).run_id  # the UI shows this run's own artifacts: links to its subflows' ones
    create_markdown_artifact(key=artifact_key(run_id, "run"), description=f"Evol-Instruct run {run_id}: outputs",
                             markdown=run_links_markdown(run_id, result.run_uri, config.rounds, result.export.files,
                                                         PREFECT_UI_URL.value()))
    return result
