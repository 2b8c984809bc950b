"""Finish a round: cross-shard exact dedup, the next pool, the round invariant, the round summary."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from prefect import task
from pydantic import BaseModel

from storage import RunLayout, StorageSettings, duck_connect, list_committed_shards, read_parquet_sql, read_shard
from storage.schema import records_table
from storage.shards import write_shard
from storage.uri import resolve
from tasks.dedup import find_exact_duplicates
from tasks.evolve import ShardSummary


class RoundInvariantError(RuntimeError):
    """The pool accounting of a round does not add up; the round's outputs can't be trusted."""


class RoundSummary(BaseModel):
    """One round, as shown in the UI and the dataset card."""

    round: int
    shards: int
    pool_in: int
    evolved: int
    carried: int
    rejected: dict[str, int]
    operations: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def reference_shards(layout: RunLayout, round_index: int, settings: StorageSettings | None = None) -> list[str]:
    """Shards an evolution must not duplicate: the seeds, every earlier round's evolutions, the current pool."""
    uris = list_committed_shards(layout.stage_dir(0, "pool"), settings)
    for k in range(1, round_index):
        uris += list_committed_shards(layout.stage_dir(k, "evolved"), settings)
    if round_index > 1:
        uris += list_committed_shards(layout.stage_dir(round_index - 1, "pool"), settings)
    return uris


def next_pool_rows(pool: list[dict[str, Any]], candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An evolved candidate replaces its parent; a rejected one's parent goes on unchanged."""
    if [c["parent_id"] for c in candidates] != [p["id"] for p in pool]:
        raise RoundInvariantError("candidates do not line up with their pool shard (one per parent, in order)")
    return [c if c["status"] == "evolved" else p for p, c in zip(pool, candidates, strict=True)]


def finish_round(
    layout: RunLayout,
    round_index: int,
    shard_summaries: list[ShardSummary],
    settings: StorageSettings | None = None,
) -> RoundSummary:
    """Mark cross-shard duplicates, write evolved / rejected / next pool shards, check the invariant."""
    summary_uri = layout.file(f"round={round_index}", "_round.json")
    fs, summary_path = resolve(summary_uri, settings)
    if fs.exists(summary_path):
        return RoundSummary.model_validate_json(fs.cat_file(summary_path))
    candidate_uris = [s.candidates_uri for s in shard_summaries]
    duplicates = find_exact_duplicates(candidate_uris, reference_shards(layout, round_index, settings), settings)
    duplicate_of = dict(zip(duplicates.column("id").to_pylist(), duplicates.column("duplicate_of").to_pylist(),
                            strict=True))
    reasons: Counter[str] = Counter()
    operations: Counter[str] = Counter()
    for i, summary in enumerate(shard_summaries):
        pool = read_shard(summary.shard, settings).to_pylist()
        candidates = read_shard(summary.candidates_uri, settings).to_pylist()
        for c in candidates:
            if c["status"] == "evolved" and c["id"] in duplicate_of:
                c.update(status="rejected", reject_reason="duplicate", duplicate_of=duplicate_of[c["id"]])
        evolved = [c for c in candidates if c["status"] == "evolved"]
        rejected = [c for c in candidates if c["status"] == "rejected"]
        reasons.update(c["reject_reason"] for c in rejected)
        operations.update(c["operation"] for c in evolved)
        write_shard(layout.shard(round_index, "evolved", i), records_table(evolved), settings=settings)
        write_shard(layout.shard(round_index, "rejected", i), records_table(rejected), settings=settings)
        write_shard(layout.shard(round_index, "pool", i), records_table(next_pool_rows(pool, candidates)),
                    settings=settings)
    counts = check_round_invariant(layout, round_index, [s.shard for s in shard_summaries], settings)
    result = RoundSummary(
        round=round_index,
        shards=len(shard_summaries),
        pool_in=counts["pool_in"],
        evolved=counts["evolved"],
        carried=counts["carried"],
        rejected=dict(sorted(reasons.items())),
        operations=dict(sorted(operations.items())),
        prompt_tokens=sum(s.prompt_tokens for s in shard_summaries),
        completion_tokens=sum(s.completion_tokens for s in shard_summaries),
        seconds=round(sum(s.seconds for s in shard_summaries), 3),
    )
    fs.pipe_file(summary_path, json.dumps(result.model_dump(), indent=2).encode())
    return result


def check_round_invariant(
    layout: RunLayout, round_index: int, pool_in_uris: list[str], settings: StorageSettings | None = None
) -> dict[str, int]:
    """Pool in = evolved + carried, and every carried row has exactly one rejected candidate with a reason.

    Computed with DuckDB over the committed shards, independently of how they were written.
    """
    evolved_uris = list_committed_shards(layout.stage_dir(round_index, "evolved"), settings)
    rejected_uris = list_committed_shards(layout.stage_dir(round_index, "rejected"), settings)
    next_uris = list_committed_shards(layout.stage_dir(round_index, "pool"), settings)
    con = duck_connect(*(pool_in_uris + evolved_uris), settings=settings)
    pool_in = con.execute(f"SELECT count(*) FROM {read_parquet_sql(pool_in_uris)}").fetchone()[0]
    evolved = con.execute(f"SELECT count(*) FROM {read_parquet_sql(evolved_uris)}").fetchone()[0]
    next_size = con.execute(f"SELECT count(*) FROM {read_parquet_sql(next_uris)}").fetchone()[0]
    carried, bad = con.execute(f"""
        WITH carried AS (
            SELECT id FROM {read_parquet_sql(next_uris)}
            WHERE id IN (SELECT id FROM {read_parquet_sql(pool_in_uris)})
        ), rejections AS (
            SELECT parent_id, count(*) AS n FROM {read_parquet_sql(rejected_uris)}
            WHERE round = {int(round_index)} AND reject_reason IS NOT NULL GROUP BY parent_id
        )
        SELECT count(*), count(*) FILTER (WHERE coalesce(r.n, 0) <> 1)
        FROM carried c LEFT JOIN rejections r ON r.parent_id = c.id
    """).fetchone()
    if pool_in != evolved + carried or next_size != pool_in or bad:
        raise RoundInvariantError(
            f"round {round_index}: pool in {pool_in} != evolved {evolved} + carried {carried}, "
            f"next pool {next_size}, carried rows without exactly one rejected candidate: {bad}"
        )
    return {"pool_in": pool_in, "evolved": evolved, "carried": carried}


@task(name="finish-round", task_run_name="finish-r{round_index}", retries=1, retry_delay_seconds=5)
def finish_round_task(layout: RunLayout, round_index: int, shard_summaries: list[ShardSummary]) -> RoundSummary:
    """Finish a round once all its shards are done."""
    return finish_round(layout, round_index, shard_summaries)
