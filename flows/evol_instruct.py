"""The Evol-Instruct flow: ingest, M rounds (each a mapped task over shards), mix, export, then training."""

from __future__ import annotations

import json

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from flows.train import train
from storage import RunLayout, is_committed, list_committed_shards
from storage.shards import write_file_atomic
from tasks.core.config import RunConfig
from tasks.evolve import ShardSummary, evolve_shard_task
from tasks.export import ExportSummary, export_final_task
from tasks.ingest import IngestSummary, ingest_run_seeds_task
from tasks.mix import MixSummary, mix_final_task
from tasks.plan import plan_run
from tasks.report import final_markdown, instruction_length_by_round, round_table
from tasks.round import RoundSummary, finish_round_task
from tasks.trigger import TriggerResult, trigger_training


class RoundFailed(RuntimeError):
    """Some shards of a round failed after their retries; a rerun computes only those."""


class RunResult(BaseModel):
    """Where a run's outputs are and what it did."""

    run_uri: str
    fingerprint: str
    ingest: IngestSummary
    rounds: list[RoundSummary]
    mix: MixSummary
    export: ExportSummary
    training: TriggerResult | None = None


@flow(name="evol-round", flow_run_name="round-{round_index}", task_runner=ThreadPoolTaskRunner(max_workers=2))
def evol_round(config: RunConfig, layout: RunLayout, round_index: int, fingerprint: str) -> RoundSummary:
    """Map the shard task over the pool's shards, then finish the round."""
    pool_uris = list_committed_shards(layout.stage_dir(round_index - 1, "pool"))
    if not pool_uris:
        pool_dir = layout.stage_dir(round_index - 1, "pool")
        raise RoundFailed(f"round {round_index}: no committed pool shards in {pool_dir}")
    candidate_uris = [layout.shard(round_index, "candidates", i) for i in range(len(pool_uris))]
    shard_task = evolve_shard_task.with_options(
        retries=config.orchestration.retries, retry_delay_seconds=config.orchestration.retry_delay_s
    )
    futures = shard_task.map(pool_uris, candidate_uris, round_index, list(range(len(pool_uris))),
                             unmapped(config), unmapped(fingerprint))
    summaries: list[ShardSummary] = []
    failed: list[str] = []
    for uri, future in zip(pool_uris, futures, strict=True):
        result = future.result(raise_on_failure=False)
        if isinstance(result, ShardSummary):
            summaries.append(result)
        else:
            failed.append(f"{uri} ({type(result).__name__}: {result})")
    # A Prefect cache hit whose candidates shard is gone from storage (deleted by hand) is recomputed.
    stale = [i for i, s in enumerate(summaries) if not failed and not is_committed(s.candidates_uri)]
    for i in stale:
        summaries[i] = shard_task.with_options(refresh_cache=True)(
            pool_uris[i], candidate_uris[i], round_index, i, config, fingerprint)
    if failed:
        raise RoundFailed(f"round {round_index}: {len(failed)} shard(s) failed after retries; rerun the flow to "
                          f"compute only these: " + "; ".join(failed))
    summary = finish_round_task(layout, round_index, summaries)
    create_table_artifact(key=f"round-{round_index}", table=round_table(summary),
                          description=f"Round {round_index} of run {layout.run_id}")
    return summary


@flow(name="evol-instruct")
def evol_instruct(config: RunConfig) -> RunResult:
    """Evolve the seeds for ``config.rounds`` rounds, then mix, deduplicate and export the data."""
    logger = get_run_logger()
    plan = plan_run(config)
    layout, fingerprint, template_shas = plan.layout, plan.fingerprint, plan.template_shas
    write_file_atomic(layout.file("config.json"), json.dumps(config.model_dump(mode="json"), indent=2).encode())
    logger.info("run %s: outputs under %s", fingerprint, layout.run_uri)
    ingest = ingest_run_seeds_task(config, layout)
    logger.info("seeds: %d accepted, rejected %s", ingest.accepted, ingest.rejected)
    round_flow = evol_round.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=config.orchestration.max_parallel_shards)
    )
    rounds = [round_flow(config, layout, k, fingerprint) for k in range(1, config.rounds + 1)]
    mix = mix_final_task(layout, config)
    export = export_final_task(layout, config, fingerprint, config.llm.model, template_shas, rounds, mix)
    create_markdown_artifact(
        key="evol-summary",
        markdown=final_markdown(layout.run_uri, fingerprint, rounds, mix,
                                instruction_length_by_round(layout, config.rounds), export.files),
        description=f"Evol-Instruct run {layout.run_id}",
    )
    training = None
    if config.train is not None:
        training = trigger_training(export.files["messages"], layout.run_uri, config.train, in_process=train)
        logger.info("training %s: flow run %s -> %s", training.mode, training.flow_run_id, training.output_uri)
    return RunResult(run_uri=layout.run_uri, fingerprint=fingerprint, ingest=ingest, rounds=rounds, mix=mix,
                     export=export, training=training)
