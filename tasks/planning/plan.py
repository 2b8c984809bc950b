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
from tasks.core.summaries import (
    Estimate,
    ExportSummary,
    IngestSummary,
    MixSummary,
    RoundSummary,
    ScoreShardSummary,
    ScoreSummary,
    Summary,
)
from tasks.export.card import dataset_card
from tasks.export.files import export_key
from tasks.export.scores import ScoreBins
from tasks.ingest.seeds import ingest_run_seeds
from tasks.planning.estimate import make_estimate
from tasks.round.finish import round_key
from tasks.runtime.resolve import build_context
from tasks.runtime.stages import EVOLVE_SHARD, EXPORT, INGEST, MIX, ROUND, SCORE_SHARD, stage_names, walk

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


def _why(ctx: RunContext, stage: str, marker_uri: str) -> str:
    """Why a stage is recomputed."""
    fs, path = resolve(marker_uri)
    if ctx.forced(stage):
        return "forced by --recompute"
    return "its inputs changed" if fs.exists(path) else "not run yet"


class PlanSteps:
    """The stages as `evol plan` walks them (``tasks.runtime.stages.walk``, the flow's walk): each asks its
    marker whether it is done under the key the run would use, and notes its line of the plan."""

    def __init__(self, ctx: RunContext, seeds: IngestSummary, estimate: Estimate | None) -> None:
        self.ctx, self.seeds, self.estimate, self.stages = ctx, seeds, estimate, []

    def note(self, stage: str, summary: Summary | None, why: str, shards: int = 0, shards_reused: int = 0) -> None:
        self.stages.append(StagePlan(stage=stage, reused=summary is not None, shards=shards,
                                     shards_reused=shards_reused, why="" if summary is not None else why))

    def ingest(self) -> IngestSummary:
        return self.seeds

    def round(self, k: int, pool: list[ShardRef], references: list[ShardRef], expected: int) -> RoundSummary | None:
        ctx, name, marker = self.ctx, f"round={k}", ROUND.marker(self.ctx.layout, k)
        uris = [EVOLVE_SHARD.marker(ctx.layout, k, i) for i in range(len(pool))]
        markers = [] if ctx.forced(name) else [
            committed_marker(uri, ctx.evolve_shard_key(ref.sha256, k)) for uri, ref in zip(uris, pool, strict=True)]
        done = [ShardRef.of(m, uri) for m, uri in zip(markers, uris, strict=False) if m is not None]
        summary = None if ctx.forced(name) or len(done) < len(pool) else \
            ROUND.done(marker, round_key(done, pool, references))
        self.note(f"round {k}", summary, _why(ctx, name, marker), len(pool), len(done))
        return summary

    def score(self, inputs: list[list[ShardRef]]) -> ScoreSummary | None:
        ctx = self.ctx
        found: list[ScoreShardSummary | None] = [
            None if ctx.forced("score") else SCORE_SHARD.done(SCORE_SHARD.marker(ctx.layout, i),
                                                              ctx.score_shard_key([r.sha256 for r in refs]), shard=i)
            for i, refs in enumerate(inputs)]
        done = [s for s in found if s is not None]
        summary = ScoreSummary(shards=done, shards_reused=len(done)) if len(done) == len(inputs) else None
        self.note("score", summary, _why(ctx, "score", SCORE_SHARD.marker(ctx.layout, 0)), len(inputs), len(done))
        return summary

    def mix(self, inputs: list[ShardRef], data_key: str, expected: int,
            scores: list[ShardRef]) -> MixSummary | None:
        marker = MIX.marker(self.ctx.layout)
        summary = None if self.ctx.forced("mix") else MIX.done(marker, data_key)
        self.note("mix", summary, _why(self.ctx, "mix", marker))
        return summary

    def export(self, data_key: str, rounds: list[RoundSummary], mix: MixSummary, lengths: dict[str, float],
               scores: ScoreBins | None) -> ExportSummary | None:
        ctx, marker = self.ctx, EXPORT.marker(self.ctx.layout)
        if self.estimate is None:
            self.note("export", None, "the card gets a new estimate")
            return None
        card = dataset_card(ctx.config, data_key, ctx.template_shas, rounds, mix, self.estimate, lengths,
                            self.seeds.source, scores)
        summary = None if ctx.forced("export") else EXPORT.done(marker, export_key(mix, card.encode()))
        self.note("export", summary, _why(ctx, "export", marker))
        return summary


def plan_stages(ctx: RunContext, seeds: IngestSummary, estimate: Estimate | None) -> list[StagePlan]:
    """Rounds, mix and export with the run's keys, from the seed shards (committed or ingested now) on;
    ``estimate`` is the one recorded in the run folder for this work (None: the run makes a new one). Past the
    first stage that is recomputed the outputs are unknown: the stages after it are recomputed too."""
    steps = PlanSteps(ctx, seeds, estimate)
    walk(ctx, steps)
    stages, names = steps.stages, stage_names(ctx.config.rounds, ctx.score is not None)[1:]
    first = next((s for s in stages if not s.reused), None)
    return stages + [StagePlan(stage=name, reused=False, shards=len(seeds.refs) if name.startswith(("round", "score"))
                               else 0, why=f"after {first.stage}") for name in names[len(stages):] if first is not None]


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
        # the rounds only: the scoring stage's estimate is not in the card, and its settings are not in this key
        estimate = make_estimate(ctx, refs, accepted, previous=False).model_copy(update={"stages": []})
        record = {"key": estimate_key(ctx), "estimate": estimate.model_dump(mode="json", exclude={"stages"})}
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
        stages = [ingest, *plan_stages(ctx, summary, stored_estimate(ctx))]
    share = {s.stage: 0.0 if s.reused else 1 - s.shards_reused / max(1, s.shards) for s in stages}
    rounds = [r.model_copy(update={"share": share[f"round {r.round}"]}) for r in estimate.rounds]
    after = [s.model_copy(update={"share": share["score"]}) for s in estimate.stages]  # both in the score shards
    return RunPlan(run_uri=ctx.layout.run_uri, stages=stages,
                   estimate=estimate.model_copy(update={"rounds": rounds, "stages": after}))
