"""A run's stages in their order, walked once for the flow and for `evol plan`: ingest, round 1..M, score (when the
config has a ``score:`` section), mix, export.

``walk`` hands each stage what the one before it recorded (a round its pool and dedup references, mix its inputs and
the data key, export the card's figures); its ``steps`` say what doing a stage means: the flow runs its task, the
plan asks the stage's marker whether it is done. The stages themselves: ``INGEST``, ``EVOLVE_SHARD``, ``ROUND``,
``SCORE_SHARD``, ``MIX``, ``EXPORT``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from storage import ShardRef
from tasks.core.config import RunConfig
from tasks.core.context import RunContext
from tasks.core.summaries import ExportSummary, IngestSummary, MixSummary, RoundSummary, ScoreSummary
from tasks.evolve.shard import EVOLVE_SHARD
from tasks.export.card import instruction_length_by_round
from tasks.export.files import EXPORT
from tasks.export.scores import ScoreBins, score_bins
from tasks.ingest.seeds import INGEST
from tasks.mix.final import MIX
from tasks.round.finish import ROUND
from tasks.score.shard import SCORE_SHARD, score_inputs

STAGES = (INGEST, EVOLVE_SHARD, ROUND, SCORE_SHARD, MIX, EXPORT)  # in the order a run runs them


def stage_names(rounds: int, scored: bool = False) -> list[str]:
    """The stages of a run of ``rounds`` rounds (``scored``: with the scoring stage) as `evol plan` lists them."""
    return ["ingest", *(f"round {k}" for k in range(1, rounds + 1)), *(["score"] if scored else []), "mix", "export"]


@dataclass
class Walked:
    """How far a walk got, and what each stage it passed recorded."""

    ingest: IngestSummary | None = None
    rounds: list[RoundSummary] = field(default_factory=list)
    score: ScoreSummary | None = None
    data_key: str | None = None
    mix: MixSummary | None = None
    lengths: dict[str, float] = field(default_factory=dict)
    score_bins: ScoreBins | None = None
    export: ExportSummary | None = None


def walk(ctx: RunContext, steps: Any) -> Walked:
    """Each stage in turn, each handed what the stages before it recorded: ``steps.ingest()``, ``steps.round(k,
    pool, references, expected)``, with a ``score:`` section ``steps.score(inputs)`` (each score shard's input
    shards), ``steps.mix(inputs, data_key, expected, scores)`` (``scores``: the score shards, with
    ``mix.selection`` or ``score.evolve_responses``), ``steps.export(data_key, rounds, mix, lengths, score_bins)``
    (``score_bins``: with a ``score:`` section, rows per score bin; ``expected``: the rows the stages before
    counted); a step that returns None ends the walk."""
    w = Walked(ingest=steps.ingest())
    if w.ingest is None:
        return w
    seeds, pool, expected = w.ingest.refs, w.ingest.refs, w.ingest.accepted
    for k in range(1, ctx.config.rounds + 1):
        summary = steps.round(k, pool, round_references(seeds, w.rounds, pool), expected)
        if summary is None:
            return w
        w.rounds.append(summary)
        pool, expected = summary.pool_out, summary.pool_in
    if ctx.score is not None:
        w.score = steps.score(score_inputs(seeds, w.rounds))
        if w.score is None:
            return w
    inputs = mix_inputs(ctx.config, seeds, w.rounds)
    scores = w.score.refs if w.score is not None and reads_scores(ctx.config) else []
    w.data_key = ctx.mix_key([r.sha256 for r in inputs], [r.sha256 for r in scores])
    counted = (w.ingest.accepted if ctx.config.mix.include_seeds else 0) + sum(r.evolved for r in w.rounds)
    w.mix = steps.mix(inputs, w.data_key, counted, scores)
    if w.mix is None:
        return w
    w.lengths = instruction_length_by_round(seeds, w.rounds)
    w.score_bins = score_bins(w.score.refs, w.mix.final_uri) if w.score is not None else None
    w.export = steps.export(w.data_key, w.rounds, w.mix, w.lengths, w.score_bins)
    return w


def reads_scores(config: RunConfig) -> bool:
    """Whether mix reads the score shards: to select by them (``mix.selection``), or to take each row's kept
    response (``score.evolve_responses``)."""
    return config.mix.selection is not None or (config.score is not None and config.score.evolve_responses is not None)


def round_references(seeds: list[ShardRef], rounds: list[RoundSummary], pool: list[ShardRef]) -> list[ShardRef]:
    """The shards the next round's evolutions must not duplicate: the seeds, earlier evolutions, from round 2 on
    its pool (in round 1 the pool is the seeds)."""
    return seeds + [ref for r in rounds for ref in r.evolved_shards] + (pool if rounds else [])


def mix_inputs(config: RunConfig, seeds: list[ShardRef], rounds: list[RoundSummary]) -> list[ShardRef]:
    """The mix's input shards: the seeds (``mix.include_seeds``), then each round's evolutions."""
    return (seeds if config.mix.include_seeds else []) + [ref for r in rounds for ref in r.evolved_shards]
