"""What each stage of a run hands the next, written once for the flow and for `evol plan`: a round's dedup
references, the mix's inputs. The stages themselves: ``INGEST``, ``EVOLVE_SHARD``, ``ROUND``, ``MIX``, ``EXPORT``."""

from __future__ import annotations

from storage import ShardRef
from tasks.core.config import RunConfig
from tasks.core.summaries import RoundSummary
from tasks.evolve.shard import EVOLVE_SHARD
from tasks.export.files import EXPORT
from tasks.ingest.seeds import INGEST
from tasks.mix.final import MIX
from tasks.round.finish import ROUND

STAGES = (INGEST, EVOLVE_SHARD, ROUND, MIX, EXPORT)  # in the order a run runs them (rounds: shards, then finish)


def round_references(seeds: list[ShardRef], rounds: list[RoundSummary], pool: list[ShardRef]) -> list[ShardRef]:
    """The shards the next round's evolutions must not duplicate: the seeds, earlier evolutions, from round 2 on
    its pool (in round 1 the pool is the seeds)."""
    return seeds + [ref for r in rounds for ref in r.evolved_shards] + (pool if rounds else [])


def mix_inputs(config: RunConfig, seeds: list[ShardRef], rounds: list[RoundSummary]) -> list[ShardRef]:
    """The mix's input shards: the seeds (``mix.include_seeds``), then each round's evolutions."""
    return (seeds if config.mix.include_seeds else []) + [ref for r in rounds for ref in r.evolved_shards]
