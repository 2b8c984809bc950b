"""The final data: seeds plus every round's survivors, deduplicated (exact, then near), shuffled, sampled."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from pydantic import BaseModel

from storage import RunLayout, StorageSettings, list_committed_shards, read_shard, write_shard
from storage.schema import RECORD_SCHEMA
from tasks.core.config import RunConfig
from tasks.core.text import parent_text
from tasks.dedup import exact_dedup_table
from tasks.near_dedup import find_near_duplicates


class MixSummary(BaseModel):
    """What went into the final data and what was dropped on the way."""

    candidates: int
    no_response: int
    exact_duplicates: int
    near_duplicates: int
    sampled_out: int
    final: int
    by_round: dict[str, int]
    by_operation: dict[str, int]
    final_uri: str
    dropped_uri: str


def gather_survivors(layout: RunLayout, rounds: int, include_seeds: bool,
                     settings: StorageSettings | None = None) -> pa.Table:
    """Seeds (optionally) and every round's evolved rows, seeds first, then by round and shard."""
    uris = list_committed_shards(layout.stage_dir(0, "pool"), settings) if include_seeds else []
    for k in range(1, rounds + 1):
        uris += list_committed_shards(layout.stage_dir(k, "evolved"), settings)
    tables = [read_shard(u, settings) for u in uris]
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()


def _with_reason(table: pa.Table, reason: str) -> pa.Table:
    return table.set_column(table.schema.get_field_index("reject_reason"), "reject_reason",
                            pa.array([reason] * table.num_rows, pa.string()))


def mix_final(layout: RunLayout, config: RunConfig, settings: StorageSettings | None = None) -> MixSummary:
    """Build and commit ``final/`` (the training data) and ``final_dropped/`` (with reasons)."""
    table = gather_survivors(layout, config.rounds, config.mix.include_seeds, settings)
    candidates = table.num_rows
    has_response = pc.invert(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(table["response"]), ""), True))
    has_response = pc.and_(pc.is_valid(table["response"]), pc.fill_null(has_response, False))
    dropped = [_with_reason(table.filter(pc.invert(has_response)), "no_response")]
    table = table.filter(has_response)

    exact_dropped = pa.table({"id": pa.array([], pa.string())})
    if config.dedup.exact:
        table, exact_dropped = exact_dedup_table(table)
        dropped.append(_with_reason(exact_dropped.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA), "duplicate")
                       .set_column(RECORD_SCHEMA.get_field_index("duplicate_of"), "duplicate_of",
                                   exact_dropped["duplicate_of"]))
    near_count = 0
    if config.dedup.near and table.num_rows:
        rows = table.select(["id", "instruction", "input"]).to_pylist()
        near = find_near_duplicates([r["id"] for r in rows], [parent_text(r) for r in rows],
                                    threshold=config.dedup.jaccard_threshold, shingle_size=config.dedup.shingle_size,
                                    num_perm=config.dedup.num_perm, seed=config.seed)
        near_count = len(near)
        is_near = pc.is_in(table["id"], pa.array(list(near), pa.string()))
        near_rows = _with_reason(table.filter(is_near), "near_duplicate")
        near_rows = near_rows.set_column(RECORD_SCHEMA.get_field_index("duplicate_of"), "duplicate_of",
                                         pa.array([near[i] for i in near_rows["id"].to_pylist()], pa.string()))
        dropped.append(near_rows)
        table = table.filter(pc.invert(is_near))

    # Shuffle from a canonical order so the result does not depend on shard layout.
    table = table.take(pc.sort_indices(table, [("id", "ascending")]))
    order = np.random.default_rng(config.seed).permutation(table.num_rows)
    table = table.take(pa.array(order, pa.int64()))
    sampled_out = 0
    if config.mix.sample_size is not None and table.num_rows > config.mix.sample_size:
        sampled_out = table.num_rows - config.mix.sample_size
        table = table.slice(0, config.mix.sample_size)

    final_uri = layout.run_shard("final", 0)
    dropped_uri = layout.run_shard("final_dropped", 0)
    write_shard(final_uri, table, settings=settings)
    write_shard(dropped_uri, pa.concat_tables([d.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA) for d in dropped]),
                settings=settings)
    rounds = pc.value_counts(table["round"]).to_pylist()
    ops = pc.value_counts(table["operation"]).to_pylist()
    return MixSummary(
        candidates=candidates, no_response=dropped[0].num_rows, exact_duplicates=exact_dropped.num_rows,
        near_duplicates=near_count, sampled_out=sampled_out, final=table.num_rows,
        by_round={str(r["values"]): r["counts"] for r in sorted(rounds, key=lambda r: r["values"])},
        by_operation={r["values"]: r["counts"] for r in sorted(ops, key=lambda r: r["values"])},
        final_uri=final_uri, dropped_uri=dropped_uri,
    )


@task(name="mix-final", retries=1, retry_delay_seconds=5)
def mix_final_task(layout: RunLayout, config: RunConfig) -> MixSummary:
    """Mix every round's survivors into the final data."""
    return mix_final(layout, config)
