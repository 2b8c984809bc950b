"""What a run would do, read from its folder with the run's own stage keys, without Prefect (``evol plan``): each
stage reused or recomputed, shards per round, and the estimate. Past a recomputed stage the outputs are unknown, so
the stages after it count as recomputed (an upper bound: at run time a byte-identical output lets them be reused).
"""

from __future__ import annotations

import json
import tempfile

from pydantic import BaseModel

from storage import RunLayout, ShardRef, read_stage, resolve
from storage.shards import committed_marker, write_file_atomic
from tasks.core.config import RunConfig
from tasks.core.context import RunContext, stage_key
from tasks.core.summaries import Estimate
from tasks.export.card import dataset_card, instruction_length_by_round
from tasks.export.files import export_key
from tasks.ingest.seeds import ingest_run_seeds
from tasks.planning.estimate import make_estimate
from tasks.round.finish import round_key
from tasks.runtime.resolve import build_context
from tasks.runtime.stages import EVOLVE_SHARD, EXPORT, INGEST, MIX, ROUND, mix_inputs, round_references

ESTIMATE_FILE = "estimate.json"


class StagePlan(BaseModel):
    """One stage of the plan: ``ingest``, ``round K``, ``mix`` or ``export``."""

    stage: str
    reused: bool
    shards: int = 0
    shards_reused: int = 0
    why: str = ""  # why it is recomputed


class RunPlan(BaseModel):
    run_uri: str
    stages: list[StagePlan]
    estimate: Estimate


def _why(ctx: RunContext, stage: str, marker_uri: str, upstream: str = "") -> str:
    """Why a stage is recomputed; ``upstream``: the first stage recomputed before it."""
    fs, path = resolve(marker_uri)
    if upstream or ctx.forced(stage):
        return f"after {upstream}" if upstream else "forced by --recompute"
    return "its inputs changed" if fs.exists(path) else "not run yet"


def plan_stages(ctx: RunContext, seeds: list[ShardRef], estimate: Estimate | None) -> list[StagePlan]:
    """Rounds, mix and export with the run's keys, from the seed shards (committed or ingested now) on;
    ``estimate`` is the one recorded in the run folder for this work (None: the run makes a new one)."""
    config, layout = ctx.config, ctx.layout
    stages, pool, rounds, upstream = [], seeds, [], ""
    for k in range(1, config.rounds + 1):
        name, marker = f"round={k}", ROUND.marker(layout, k)
        markers = [] if upstream or ctx.forced(name) else [committed_marker(
            EVOLVE_SHARD.marker(layout, k, i), ctx.evolve_shard_key(ref.sha256, k)) for i, ref in enumerate(pool)]
        done = [ShardRef.of(m) for m in markers if m is not None]
        key = round_key(done, pool, round_references(seeds, rounds, pool))
        summary = None if upstream or len(done) < len(pool) else ROUND.done(marker, key)
        stages.append(StagePlan(stage=f"round {k}", reused=summary is not None, shards=len(pool),
                                shards_reused=len(done), why="" if summary else _why(ctx, name, marker, upstream)))
        if summary is None:
            upstream = upstream or f"round {k}"
            continue
        rounds.append(summary)
        pool = summary.pool_out
    mix_marker, export_marker = MIX.marker(layout), EXPORT.marker(layout)
    data_key = ctx.mix_key([r.sha256 for r in mix_inputs(config, seeds, rounds)])
    mix = None if upstream or ctx.forced("mix") else MIX.done(mix_marker, data_key)
    if mix is None:
        return stages + [StagePlan(stage="mix", reused=False, why=_why(ctx, "mix", mix_marker, upstream)),
                         StagePlan(stage="export", reused=False, why=f"after {upstream or 'mix'}")]
    stages.append(StagePlan(stage="mix", reused=True))
    if estimate is None:
        return stages + [StagePlan(stage="export", reused=False, why="the card gets a new estimate")]
    card = dataset_card(config, data_key, ctx.template_shas, rounds, mix, estimate,
                        instruction_length_by_round(seeds, rounds))
    reused = not ctx.forced("export") and EXPORT.done(export_marker, export_key(mix, card.encode())) is not None
    return stages + [StagePlan(stage="export", reused=reused, why="" if reused else _why(ctx, "export", export_marker))]


def estimate_key(ctx: RunContext) -> str:
    """What a run's recorded estimate stands for: the seeds, everything an evolve shard reads, the rounds (and
    that it reads nothing else: an estimate recorded from other runs' figures is made again)."""
    return stage_key("estimate", ctx.ingest_key, ctx.evolve_key, ctx.config.rounds, "own data")


def stored_estimate(ctx: RunContext) -> Estimate | None:
    """The estimate recorded in the run folder for this work, if its key is the run's."""
    record = read_stage(ctx.layout.file(ESTIMATE_FILE), estimate_key(ctx))
    return Estimate.model_validate(record["estimate"]) if record else None


def run_estimate(ctx: RunContext, refs: list[ShardRef], accepted: int) -> Estimate:
    """The estimate a run records (``{run}/estimate.json``) when it starts: kept while the seeds, the evolve
    settings and the rounds stay the same (so the card does not change with reruns), else made now, from the
    run's own seeds and settings only: never from other runs under the output root, nor from the candidates a
    killed attempt of this run left, so the same data always gives the same card."""
    estimate = stored_estimate(ctx)
    if estimate is None:
        estimate = make_estimate(ctx, refs, accepted, previous=False)
        record = {"key": estimate_key(ctx), "estimate": estimate.model_dump(mode="json")}
        write_file_atomic(ctx.layout.file(ESTIMATE_FILE), json.dumps(record, indent=2).encode())
    return estimate


def make_plan(config: RunConfig, recompute: tuple[str, ...] = (), measure: int = 0) -> RunPlan:
    """The plan of a run of ``config``: stage by stage, and the estimate of what is still to compute (the seed
    shards are the committed ones when ingest is reused, else ingest's own output written to a temporary folder)."""
    ctx = build_context(config, tuple(recompute))
    marker = INGEST.marker(ctx.layout)
    found = None if ctx.forced("ingest") else INGEST.done(marker, ctx.ingest_key)
    with tempfile.TemporaryDirectory(prefix="evol-plan-") as workdir:
        summary = found or ingest_run_seeds(config, RunLayout(workdir, "plan"), ctx.ingest_key, True)
        refs, accepted = summary.refs, summary.accepted
        ingest = StagePlan(stage="ingest", reused=found is not None, shards=len(refs),
                           shards_reused=len(refs) if found else 0, why="" if found else _why(ctx, "ingest", marker))
        estimate = make_estimate(ctx, refs, accepted, measure)
        stages = [ingest, *plan_stages(ctx, refs, stored_estimate(ctx))]
    share = {s.stage: 0.0 if s.reused else 1 - s.shards_reused / max(1, s.shards) for s in stages}
    rounds = [r.model_copy(update={"share": share[f"round {r.round}"]}) for r in estimate.rounds]
    return RunPlan(run_uri=ctx.layout.run_uri, stages=stages, estimate=estimate.model_copy(update={"rounds": rounds}))
