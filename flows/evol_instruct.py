"""The Evol-Instruct flow: ingest, M rounds (each a mapped task over shards), mix, export, then training.

Wiring only. Each stage decides from its storage marker whether its work is already done (see
``tasks.context``); the flow hands each stage the shards its upstream stage recorded and checks that the
counts add up from one stage to the next.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack, suppress
from uuid import UUID

from prefect import flow, get_client, get_run_logger, runtime, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from pydantic import BaseModel

from flows.evol_score import evol_score
from flows.runners import cluster_address, completions, release_future, round_task_runner
from flows.train import train
from storage import ShardRef, StageMismatch, total_rows
from storage.layout import remove_rounds_beyond
from storage.lease import RunLease, is_stale
from storage.shards import sweep_temp_files, write_file_atomic
from tasks.core.config import RunConfig
from tasks.core.context import RunContext, run_layout
from tasks.core.runlog import install_redaction
from tasks.core.summaries import (
    ExportSummary,
    IngestSummary,
    MixSummary,
    RoundSummary,
    ScoreSummary,
    ShardSummary,
    engine_time_line,
)
from tasks.evolve.progress import forget_shard, running_rows
from tasks.evolve.shard import evolve_shard_task, reset_evolve_runtimes
from tasks.export.files import export_final_task
from tasks.export.plots import plots_markdown
from tasks.export.scores import ScoreBins
from tasks.ingest.seeds import ingest_run_seeds_task
from tasks.mix.final import mix_final_task
from tasks.planning.plan import run_estimate
from tasks.reporting.monitor import (
    RoundProgress,
    artifact_key,
    empty_export_warning,
    flow_run_name_for,
    low_evolution_warning,
    publish_round,
    reset_live_rounds,
    run_name_of,
    shard_log_line,
)
from tasks.reporting.report import artifact_link, final_markdown, round_table
from tasks.reporting.run_index import record_attempt
from tasks.reporting.samples import round_samples, samples_markdown, samples_table
from tasks.round.finish import finish_round_task
from tasks.runtime.cancel import CancelWatcher
from tasks.runtime.engine import engine_labels, needs_engine_start, start_engines_task
from tasks.runtime.recovery import crash_dead_flow_run, crash_lost_task_runs
from tasks.runtime.resolve import build_context
from tasks.runtime.stages import EVOLVE_SHARD, walk
from tasks.runtime.trigger import TriggerResult, trigger_training
from tasks.score.shard import reset_score_runtimes


class RoundFailed(RuntimeError):
    """Some shards of a round failed after their retries; a rerun computes only those."""


class RunResult(BaseModel):
    """Where a run's outputs are and what it did."""

    run_uri: str
    data_key: str
    ingest: IngestSummary
    rounds: list[RoundSummary]
    score: ScoreSummary | None = None
    mix: MixSummary
    export: ExportSummary
    training: TriggerResult | None = None


def _check_chain(stage: str, expected: int, refs: list[ShardRef]) -> None:
    if total_rows(refs) != expected:
        raise StageMismatch(f"{stage}: its input shards hold {total_rows(refs)} rows, the stage before it "
                            f"recorded {expected}: {[r.uri for r in refs]}")


@flow(name="evol-round", flow_run_name="round-{round_index}")
def evol_round(ctx: RunContext, round_index: int, pool_in: list[ShardRef], references: list[ShardRef],
               expected_pool: int) -> RoundSummary:
    """Map the shard task over the pool's shards, then finish the round.

    Tasks are submitted and their results taken, so a task that reports ``Reused`` hands on its data."""
    started = time.time()
    _check_chain(f"round {round_index}", expected_pool, pool_in)
    layout, force = ctx.layout, ctx.forced(f"round={round_index}")
    candidate_uris = [EVOLVE_SHARD.marker(layout, round_index, i) for i in range(len(pool_in))]
    keys = [ctx.evolve_shard_key(ref.sha256, round_index) for ref in pool_in]
    shard_task = evolve_shard_task.with_options(
        retries=ctx.config.orchestration.retries, retry_delay_seconds=ctx.config.orchestration.retry_delay_s
    )
    logger = get_run_logger()
    progress = RoundProgress(round_index, len(pool_in), started=started, total_rows=total_rows(pool_in))
    publish_round(layout.run_id, progress)  # the terminal's bar for this round counts from here
    for uri in candidate_uris:  # rows an earlier run in this process left on the board are not this round's
        forget_shard(uri)
    progress_key = artifact_key(layout.run_id, "round", round_index, "progress")
    # On a cluster each worker's engine starts with its first shard and stays warm for the worker's life.
    distributed = cluster_address(ctx.config.orchestration) is not None
    engines = [] if distributed or not needs_engine_start(ctx.evolve, candidate_uris, keys, force) else \
        engine_labels(ctx.config.llm)
    if engines:
        progress.note = f"starting {', '.join(engines)}…"
        logger.info("round %d: starting %s", round_index, ", ".join(engines))
    progress_id = create_progress_artifact(0.0, key=progress_key, description=progress.description())
    if engines:  # rate and ETA count from the engine being ready
        engine = start_engines_task.submit(ctx.evolve, round_index).result()
        progress.note, progress.started = engine.note(), time.time()
        logger.info("round %d: %s", round_index, progress.note)
        update_progress_artifact(progress_id, 0.0, description=progress.description())
    every_s = ctx.config.orchestration.progress_interval_s
    futures = shard_task.map(pool_in, candidate_uris, round_index, list(range(len(pool_in))),
                             unmapped(ctx.evolve), keys, unmapped(force), unmapped(every_s))
    index_of = {id(f): i for i, f in enumerate(futures)}
    results: dict[int, ShardSummary] = {}
    failed: list[str] = []
    lost = []
    for future in completions(list(futures), every_s):
        if future is None:  # no shard finished for a while: show the rows of the running ones
            if progress.set_running(running_rows(candidate_uris)):
                update_progress_artifact(progress_id, progress.percent, description=progress.description())
            continue
        i = index_of[id(future)]
        try:
            result = future.result(raise_on_failure=False)
        except Exception as err:  # the runner gave up on the task (Dask: KilledWorker) and never reported it
            result = err
            lost.append(future.task_run_id)
        release_future(future)
        forget_shard(candidate_uris[i])
        if isinstance(result, ShardSummary):
            results[i] = result
            progress.add(result, i)
            logger.info("%s", shard_log_line(result, i, len(pool_in)))
        else:
            failed.append(f"{pool_in[i].uri} ({type(result).__name__}: {result})")
            logger.error("round %d shard %d/%d failed: %s", round_index, i + 1, len(pool_in), failed[-1])
            progress.finish(i)
        progress.set_running(running_rows(candidate_uris))
        update_progress_artifact(progress_id, progress.percent, description=progress.description())
    summaries = [results[i] for i in sorted(results)]
    if lost:
        with get_client(sync_client=True) as client:
            crash_lost_task_runs(client, lost, f"round {round_index}: the cluster lost this shard's task")
    if failed:
        raise RoundFailed(f"round {round_index}: {len(failed)} shard(s) failed after retries; rerun the flow to "
                          f"compute only these: " + "; ".join(failed))
    summary = finish_round_task.submit(layout, round_index, summaries, pool_in, references, started, force).result()
    progress.ended = time.time()
    create_table_artifact(key=artifact_key(layout.run_id, "round", round_index), table=round_table(summary),
                          description=f"Round {round_index} of run {layout.run_id}")
    samples, full_key = round_samples(pool_in, summary), artifact_key(layout.run_id, "round", round_index, "rows")
    title = f"Round {round_index} of run {layout.run_id}: evolved and rejected samples"
    create_markdown_artifact(key=full_key, markdown=samples_markdown(samples, title), description=f"{title}, in full")
    create_table_artifact(key=artifact_key(layout.run_id, "round", round_index, "samples"),
                          table=samples_table(samples), description=f"{title}; each row in full: "
                          + artifact_link(full_key, PREFECT_UI_URL.value()))
    warning = low_evolution_warning(summary, ctx.config.orchestration.min_evolved_share)
    if warning:
        logger.warning("%s", warning)
    return summary


def _flow_run_name() -> str:
    return flow_run_name_for(run_name_of(runtime.flow_run.parameters))


@flow(name="evol-instruct", flow_run_name=_flow_run_name)
def evol_instruct(config: RunConfig, recompute: list[str] | None = None, take_over: bool = False) -> RunResult:
    """Evolve the seeds for ``config.rounds`` rounds, then mix, deduplicate and export the data.

    ``recompute`` names stages to redo even when their outputs are current (ingest, round=K, mix, export,
    all); ``take_over`` takes the run folder from a run that holds its lease.
    """
    install_redaction()  # a deployment's or a worker's process too
    logger = get_run_logger()
    layout = run_layout(config)
    api_url = PREFECT_API_URL.value()
    holder = {"flow_run_id": str(runtime.flow_run.id), "prefect_api": api_url}
    with RunLease(layout.run_uri, take_over=take_over, extra=holder) as lease, ExitStack() as stack:
        if lease.previous:
            logger.warning("took over the run folder from %s", lease.previous)
            if is_stale(lease.previous):
                with get_client(sync_client=True) as client:
                    report = crash_dead_flow_run(client, lease.previous, api_url, UUID(holder["flow_run_id"]))
                logger.warning("%s", report.line())
        if api_url:  # a run outside a worker stops itself when cancelled in the UI or the API
            flow_run_id = UUID(holder["flow_run_id"])
            watcher = CancelWatcher(api_url, flow_run_id, lease.release)
            stack.enter_context(watcher)
        swept = sweep_temp_files(layout.run_uri)
        if swept:
            logger.info("removed %d temp file(s) left by killed runs", len(swept))
        if stale := remove_rounds_beyond(layout, config.rounds):
            logger.warning("removed %s: beyond this run's %d round(s)", ", ".join(stale), config.rounds)
        record_attempt(layout.run_uri, "running")  # `evol runs`: stopped until it ends, whatever is exported
        try:
            ctx = build_context(config, tuple(recompute or ()))
            reset_evolve_runtimes()
            reset_score_runtimes()
            reset_live_rounds(layout.run_id)
            write_file_atomic(layout.file("config.json"),
                              json.dumps(config.model_dump(mode="json"), indent=2).encode())
            logger.info("run %s: outputs under %s", layout.run_id, layout.run_uri)
            result = _run_stages(ctx)
        except Exception as err:  # `evol runs` says failed, not done with an earlier attempt's data
            with suppress(Exception):  # storage down: the run's own error is the one to see
                record_attempt(layout.run_uri, "failed", err)
            raise
        record_attempt(layout.run_uri, "done")
    return result


class RunSteps:
    """The stages as the flow runs them (``tasks.runtime.stages.walk`` hands each its inputs): each stage's task,
    reused by the task itself when its marker says so, and the counts checked from one stage to the next."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.logger, self.estimate, self.seeds_source = ctx, get_run_logger(), None, None
        self.round_flow = evol_round.with_options(task_runner=round_task_runner(ctx.config.orchestration))
        self.score_flow = evol_score.with_options(task_runner=round_task_runner(ctx.config.orchestration))

    def ingest(self) -> IngestSummary:
        ctx = self.ctx
        ingest = ingest_run_seeds_task.submit(ctx.config, ctx.layout, ctx.ingest_key, ctx.forced("ingest")).result()
        for problem in ingest.problems:
            self.logger.warning("%s", problem)
        self.logger.info("seeds: %d accepted, rejected %s%s", ingest.accepted, ingest.rejected,
                         " (reused)" if ingest.reused else "")
        self.seeds_source = ingest.source  # the path in the rows' meta.source, for the card
        try:  # the dataset card shows it beside the actual figures; a run never fails for want of one
            self.estimate = run_estimate(ctx, ingest.refs, ingest.accepted)
            self.logger.info("estimate: %d prompt and %d completion tokens in %d round(s) (completions: %s); %s",
                             self.estimate.total("prompt_tokens"), self.estimate.total("completion_tokens"),
                             ctx.config.rounds, self.estimate.completions, engine_time_line(self.estimate))
        except Exception as err:
            self.logger.warning("no token estimate for the card: %s: %s", type(err).__name__, err)
        return ingest

    def round(self, k: int, pool: list[ShardRef], references: list[ShardRef], expected: int) -> RoundSummary:
        return self.round_flow(self.ctx, k, pool, references, expected)

    def score(self, inputs: list[list[ShardRef]]) -> ScoreSummary:
        return self.score_flow(self.ctx, inputs)

    def mix(self, inputs: list[ShardRef], data_key: str, expected: int, scores: list[ShardRef]) -> MixSummary:
        _check_chain("mix", expected, inputs)
        ctx = self.ctx
        return mix_final_task.submit(ctx.layout, ctx.config, inputs, data_key, ctx.forced("mix"), ctx.benchmark_shas,
                                     scores).result()

    def export(self, data_key: str, rounds: list[RoundSummary], mix: MixSummary, lengths: dict[str, float],
               scores: ScoreBins | None) -> ExportSummary:
        ctx = self.ctx
        return export_final_task.submit(ctx.layout, ctx.config, data_key, ctx.template_shas, rounds, mix,
                                        ctx.forced("export"), self.estimate, lengths, self.seeds_source,
                                        scores).result()


def _run_stages(ctx: RunContext) -> RunResult:
    config, layout = ctx.config, ctx.layout
    w = walk(ctx, RunSteps(ctx))
    if w.ingest is None or w.mix is None or w.export is None or w.data_key is None:
        raise RuntimeError(f"run {layout.run_id}: a stage returned no summary")  # each step raises instead
    if warning := empty_export_warning(w.export.rows, config.rounds, config.mix.include_seeds):
        get_run_logger().warning("%s", warning)
    create_markdown_artifact(
        key=artifact_key(layout.run_id, "summary"),
        markdown=final_markdown(layout.run_uri, w.data_key, w.ingest, w.rounds, w.mix, w.lengths, w.export.files)
        + "\n" + plots_markdown(w.export.files),
        description=f"Evol-Instruct run {layout.run_id}",
    )
    training = None
    if config.train is not None:
        training = trigger_training(w.export.files["messages"], layout.run_uri, config.train, in_process=train)
        get_run_logger().info("training %s: flow run %s -> %s", training.mode, training.flow_run_id,
                              training.output_uri)
    return RunResult(run_uri=layout.run_uri, data_key=w.data_key, ingest=w.ingest, rounds=w.rounds, score=w.score,
                     mix=w.mix, export=w.export, training=training)
