"""Finish a round: cross-shard exact dedup, the next pool, the round invariant, the round summary."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from storage import (
    RunLayout,
    ShardRef,
    StorageSettings,
    duck_connect,
    read_parquet_sql,
    read_shard,
    verify_shard,
    write_shard,
    write_stage,
)
from storage.schema import count_values
from storage.shards import remove_shards_except
from tasks.core.context import stage_key
from tasks.core.stage import Stage, state
from tasks.core.summaries import RoundSummary, ShardSummary
from tasks.round.dedup import find_exact_duplicates


class RoundInvariantError(RuntimeError):
    """The pool accounting of a round does not add up; the round's outputs can't be trusted."""


def shard_outputs(pool: pa.Table, candidates: pa.Table, duplicates: pa.Table) -> dict[str, pa.Table]:
    """One shard's ``evolved``, ``rejected`` and next ``pool`` rows, in order.

    ``duplicates`` (``row``, ``duplicate_of``): the candidates that are exact duplicates, rejected as such. An
    evolved candidate replaces its parent; a rejected one's parent goes on unchanged."""
    n = candidates.num_rows
    if pool.num_rows != n or not candidates["parent_id"].equals(pool["id"]):
        raise RoundInvariantError("candidates do not line up with their pool shard (one per parent, in order)")
    if duplicates.num_rows:
        where = np.full(n, -1)
        where[duplicates["row"].to_numpy()] = np.arange(duplicates.num_rows)
        found = pa.array(where, mask=where < 0)
        hit = pc.is_valid(found)
        for name, value in (("status", "rejected"), ("reject_reason", "duplicate"),
                            ("duplicate_of", pc.take(duplicates["duplicate_of"], found))):
            i = candidates.schema.get_field_index(name)
            candidates = candidates.set_column(i, candidates.schema.field(i), pc.if_else(hit, value, candidates[i]))
    evolved, rejected = (pc.equal(candidates["status"], status) for status in ("evolved", "rejected"))
    rows = np.arange(n)
    return {"evolved": candidates.filter(evolved), "rejected": candidates.filter(rejected),
            "pool": pa.concat_tables([pool, candidates]).take(np.where(evolved.to_numpy(), rows + n, rows))}


def round_key(candidates: list[ShardRef], pool_in: list[ShardRef], references: list[ShardRef]) -> str:
    """What finishing a round depends on: its pool and candidate shards and the shards its dedup reads."""
    return stage_key("round", [p.sha256 for p in pool_in], [c.sha256 for c in candidates],
                       [r.sha256 for r in references])


ROUND = Stage("round", RoundSummary, RunLayout.round_marker)


def finish_round(layout: RunLayout, round_index: int, shard_summaries: list[ShardSummary], pool_in: list[ShardRef],
                 references: list[ShardRef], started: float, force: bool = False,
                 settings: StorageSettings | None = None) -> RoundSummary:
    """Mark cross-shard duplicates, write evolved / rejected / next pool shards, check the invariant.

    ``references`` are the shards an evolution must not duplicate (seeds, earlier rounds' evolutions, the
    pool). Reused when ``_round.json`` was written under the same key and its shards still verify."""
    key = round_key([s.candidates for s in shard_summaries], pool_in, references)
    shards_reused = sum(1 for s in shard_summaries if s.reused)
    found = None if force else ROUND.done(layout.round_marker(round_index), key, settings, shards_reused=shards_reused)
    if found is not None:
        return found
    candidate_uris = [s.candidates.uri for s in shard_summaries]
    for ref in references:
        verify_shard(ref.uri, settings, expected=ref.model_dump())
    duplicates = find_exact_duplicates(candidate_uris, [r.uri for r in references], settings)
    duplicates = duplicates.sort_by([("shard", "ascending"), ("row", "ascending")])
    bounds = np.searchsorted(duplicates["shard"].to_numpy(), np.arange(len(shard_summaries) + 1))
    # The shards' own counts, less what dedup took from them.
    reasons = sum((Counter(s.rejected) for s in shard_summaries), Counter({"duplicate": duplicates.num_rows}))
    operations = sum((Counter(s.operations) for s in shard_summaries), Counter())
    outputs: dict[str, list[ShardRef]] = {"evolved": [], "rejected": [], "pool": []}
    for i, (summary, pool_ref) in enumerate(zip(shard_summaries, pool_in, strict=True)):
        pool = read_shard(pool_ref.uri, settings, expected=pool_ref.model_dump())
        candidates = read_shard(summary.candidates.uri, settings, expected=summary.candidates.model_dump())
        shard_duplicates = duplicates.slice(bounds[i], bounds[i + 1] - bounds[i])
        operations.subtract(count_values(candidates["operation"].take(shard_duplicates["row"])))
        for stage, table in shard_outputs(pool, candidates, shard_duplicates).items():
            marker = write_shard(layout.shard(round_index, stage, i), table, settings=settings, key=key)
            outputs[stage].append(ShardRef.of(marker))
    for stage, refs in outputs.items():
        remove_shards_except(layout.stage_dir(round_index, stage), [r.uri for r in refs], settings)
    remove_shards_except(layout.stage_dir(round_index, "candidates"), candidate_uris, settings)
    counts = check_round_invariant(round_index, [r.uri for r in pool_in], outputs, settings)
    result = RoundSummary(
        round=round_index, shards=len(shard_summaries), **counts, rejected=dict(sorted((+reasons).items())),
        operations=dict(sorted((+operations).items())), prompt_tokens=sum(s.prompt_tokens for s in shard_summaries),
        completion_tokens=sum(s.completion_tokens for s in shard_summaries),
        wall_seconds=round(time.time() - started, 3), shard_seconds=round(sum(s.seconds for s in shard_summaries), 3),
        shards_reused=shards_reused, pool_out=outputs["pool"], evolved_shards=outputs["evolved"],
        rejected_shards=outputs["rejected"],
    )
    write_stage(layout.round_marker(round_index), key, result.model_dump(mode="json"), outputs, settings)
    return result


def check_round_invariant(round_index: int, pool_in_uris: list[str], outputs: dict[str, list[ShardRef]],
                          settings: StorageSettings | None = None) -> dict[str, int]:
    """Pool in = evolved + carried, and every carried row has exactly one rejected candidate with a reason.

    Computed with DuckDB over the committed shards, independently of how they were written."""
    evolved_uris, rejected_uris, next_uris = ([r.uri for r in outputs[k]] for k in ("evolved", "rejected", "pool"))
    pool_src, next_src = read_parquet_sql(pool_in_uris), read_parquet_sql(next_uris)
    con = duck_connect(*(pool_in_uris + evolved_uris), settings=settings)
    pool_in, evolved, next_size, carried, bad = con.execute(f"""
        WITH rejections AS (
            SELECT parent_id, count(*) AS n FROM {read_parquet_sql(rejected_uris)}
            WHERE round = {int(round_index)} AND reject_reason IS NOT NULL GROUP BY parent_id
        )
        SELECT (SELECT count(*) FROM {pool_src}), (SELECT count(*) FROM {read_parquet_sql(evolved_uris)}),
               (SELECT count(*) FROM {next_src}), count(*), count(*) FILTER (WHERE coalesce(r.n, 0) <> 1)
        FROM {next_src} c LEFT JOIN rejections r ON r.parent_id = c.id
        WHERE c.id IN (SELECT id FROM {pool_src})
    """).fetchone()
    if pool_in != evolved + carried or next_size != pool_in or bad:
        raise RoundInvariantError(
            f"round {round_index}: pool in {pool_in} != evolved {evolved} + carried {carried}, "
            f"next pool {next_size}, carried rows without exactly one rejected candidate: {bad}"
        )
    return {"pool_in": pool_in, "evolved": evolved, "carried": carried}


@task(name="finish-round", task_run_name="finish-r{round_index}", retries=1, retry_delay_seconds=5)
def finish_round_task(layout: RunLayout, round_index: int, shard_summaries: list[ShardSummary],
                      pool_in: list[ShardRef], references: list[ShardRef], started: float,
                      force: bool = False) -> RoundSummary:
    """Finish a round once all its shards are done (or reuse its committed outputs)."""
    return state(finish_round(layout, round_index, shard_summaries, pool_in, references, started, force))
