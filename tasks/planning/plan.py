"""What a run would do, read from its folder with the run's own stage keys, without Prefect (``evol plan``): each
stage reused or recomputed, shards per round, and the estimate. Past a recomputed stage the outputs are unknown, so
the stages after it count as recomputed (an upper bound: at run time a byte-identical output lets them be reused).
"""

from __future__ import annotations

import json
import tempfile

from pydantic import BaseModel

from storage import RunLayout, ShardRef, read_stage, resolve, stage_refs
from storage.shards import committed_marker, write_file_atomic
from tasks.core.config import RunConfig
from tasks.core.context import RunContext, stage_key
from tasks.core.summaries import Estimate, MixSummary, RoundSummary
from tasks.export.card import dataset_card, instruction_length_by_round
from tasks.export.files import export_key, reusable_export
from tasks.planning.estimate import make_estimate
from tasks.round.finish import round_key
from tasks.runtime.resolve import build_context

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
    stages, pool, evolved, summaries, upstream = [], seeds, [], [], ""
    for k in range(1, config.rounds + 1):
        name, marker = f"round={k}", layout.file(f"round={k}", "_round.json")
        markers = [] if upstream or ctx.forced(name) else [committed_marker(
            layout.shard(k, "candidates", i), ctx.evolve_shard_key(ref.sha256, k)) for i, ref in enumerate(pool)]
        done = [ShardRef.of(m) for m in markers if m is not None]
        references = seeds + evolved + (pool if k > 1 else [])  # as the flow hands them to the round
        record = None if upstream or len(done) < len(pool) else read_stage(marker, round_key(done, pool, references))
        stages.append(StagePlan(stage=f"round {k}", reused=record is not None, shards=len(pool),
                                shards_reused=len(done), why="" if record else _why(ctx, name, marker, upstream)))
        if record is None:
            upstream = upstream or f"round {k}"
            continue
        summaries.append(RoundSummary.model_validate(record["summary"]))
        pool, evolved = stage_refs(record, "pool"), evolved + stage_refs(record, "evolved")
    mix_marker, export_marker = layout.file("final", "_mix.json"), layout.file("export", "_export.json")
    data_key = ctx.mix_key([r.sha256 for r in (seeds if config.mix.include_seeds else []) + evolved])
    mix = None if upstream or ctx.forced("mix") else read_stage(mix_marker, data_key)
    if mix is None:
        return stages + [StagePlan(stage="mix", reused=False, why=_why(ctx, "mix", mix_marker, upstream)),
                         StagePlan(stage="export", reused=False, why=f"after {upstream or 'mix'}")]
    stages.append(StagePlan(stage="mix", reused=True))
    if estimate is None:
        return stages + [StagePlan(stage="export", reused=False, why="the card gets a new estimate")]
    summary = MixSummary.model_validate(mix["summary"])
    card = dataset_card(config, data_key, ctx.template_shas, summaries, summary, estimate,
                        instruction_length_by_round(seeds, summaries))
    reused = not ctx.forced("export") and reusable_export(export_marker, export_key(summary, card.encode()),
                                                          None) is not None
    return stages + [StagePlan(stage="export", reused=reused, why="" if reused else _why(ctx, "export", export_marker))]


def estimate_key(ctx: RunContext) -> str:
    """What a run's recorded estimate stands for: the seeds, everything an evolve shard reads, the rounds."""
    return stage_key("estimate", ctx.ingest_key, ctx.evolve_key, ctx.config.rounds)


def stored_estimate(ctx: RunContext) -> Estimate | None:
    """The estimate recorded in the run folder for this work, if its key is the run's."""
    record = read_stage(ctx.layout.file(ESTIMATE_FILE), estimate_key(ctx))
    return Estimate.model_validate(record["estimate"]) if record else None


def run_estimate(ctx: RunContext, refs: list[ShardRef], accepted: int) -> Estimate:
    """The estimate a run records (``{run}/estimate.json``) when it starts: kept while the seeds, the evolve
    settings and the rounds stay the same (so the card does not change with reruns), else made now."""
    estimate = stored_estimate(ctx)
    if estimate is None:
        estimate = make_estimate(ctx, refs, accepted)
        record = {"key": estimate_key(ctx), "estimate": estimate.model_dump(mode="json")}
        write_file_atomic(ctx.layout.file(ESTIMATE_FILE), json.dumps(record, indent=2).encode())
    return estimate


def make_plan(config: RunConfig, recompute: tuple[str, ...] = (), measure: int = 0) -> RunPlan:
    """The plan of a run of ``config``: stage by stage, and the estimate of what is still to compute (the seed
    shards are the committed ones when ingest is reused, else ingest's own output written to a temporary folder)."""
    from tasks.ingest.seeds import ingest_run_seeds

    ctx = build_context(config, tuple(recompute))
    marker = ctx.layout.file("round=0", "_ingest.json")
    record = None if ctx.forced("ingest") else read_stage(marker, ctx.ingest_key)
    with tempfile.TemporaryDirectory(prefix="evol-plan-") as workdir:
        if record is None:
            summary = ingest_run_seeds(config, RunLayout(workdir, "plan"), ctx.ingest_key, True)
            refs, accepted = summary.refs, summary.accepted
        else:
            refs, accepted = stage_refs(record, "pool"), record["summary"]["accepted"]
        ingest = StagePlan(stage="ingest", reused=record is not None, shards=len(refs),
                           shards_reused=len(refs) if record else 0, why="" if record else _why(ctx, "ingest", marker))
        estimate = make_estimate(ctx, refs, accepted, measure)
        stages = [ingest, *plan_stages(ctx, refs, stored_estimate(ctx))]
    share = {s.stage: 0.0 if s.reused else 1 - s.shards_reused / max(1, s.shards) for s in stages}
    rounds = [r.model_copy(update={"share": share[f"round {r.round}"]}) for r in estimate.rounds]
    return RunPlan(run_uri=ctx.layout.run_uri, stages=stages, estimate=estimate.model_copy(update={"rounds": rounds}))
