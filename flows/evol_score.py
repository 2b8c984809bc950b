"""The scoring stage as the flow runs it: a subflow mapping the score-shard task over the shards (one per seed
shard), on the round's task runner; a shard committed under its key is reused by the task itself."""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from flows.runners import release_future
from storage import ShardRef
from tasks.core.context import RunContext
from tasks.core.summaries import ScoreShardSummary, ScoreSummary
from tasks.runtime.stages import SCORE_SHARD
from tasks.score.shard import score_shard_task


class ScoreFailed(RuntimeError):
    """Some score shards failed after their retries; a rerun computes only those."""


@flow(name="evol-score", flow_run_name="score")
def evol_score(ctx: RunContext, inputs: list[list[ShardRef]]) -> ScoreSummary:
    """Score every shard (complexity, quality, embeddings), or reuse the ones committed under their keys."""
    if ctx.score is None:
        raise ValueError("the run has no `score:` section")
    logger = get_run_logger()
    uris = [SCORE_SHARD.marker(ctx.layout, i) for i in range(len(inputs))]
    keys = [ctx.score_shard_key([r.sha256 for r in refs]) for refs in inputs]
    task = score_shard_task.with_options(retries=ctx.config.orchestration.retries,
                                         retry_delay_seconds=ctx.config.orchestration.retry_delay_s)
    futures = task.map(inputs, uris, list(range(len(inputs))), unmapped(ctx.score), keys,
                       unmapped(ctx.forced("score")))
    shards: list[ScoreShardSummary] = []
    failed: list[str] = []
    for i, future in enumerate(futures):
        result = future.result(raise_on_failure=False)
        release_future(future)
        if isinstance(result, ScoreShardSummary):
            shards.append(result)
        else:
            failed.append(f"{uris[i]} ({type(result).__name__}: {result})")
    if failed:
        raise ScoreFailed(f"score: {len(failed)} shard(s) failed after retries; rerun the flow to compute only "
                          "these: " + "; ".join(failed))
    summary = ScoreSummary(shards=shards, shards_reused=sum(1 for s in shards if s.reused))
    logger.info("score: %d row(s) in %d shard(s) (%d reused): %d complexity, %d quality, %d chosen only, %d embedded",
                summary.total("rows"), len(shards), summary.shards_reused, summary.total("complexity"),
                summary.total("quality"), summary.total("chosen"), summary.total("embedded"))
    if ctx.score.score.evolve_responses is not None:
        replaced = summary.replaced_by()
        logger.info("response evolution: %d rewrite(s) asked; %d response(s) replaced by a better-scored rewrite %s",
                    summary.total("rewrites"), sum(replaced.values()), replaced)
    return summary
