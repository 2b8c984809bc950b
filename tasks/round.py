"""Finish a round: cross-shard exact dedup, the next pool, the round invariant, the round summary."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.states import Completed
from pydantic import BaseModel

from storage import (
    RunLayout,
    ShardRef,
    StorageSettings,
    duck_connect,
    read_parquet_sql,
    read_shard,
    read_stage,
    verify_shard,
    write_shard,
    write_stage,
)
from storage.schema import records_table
from storage.shards import remove_shards_except
from tasks.context import content_key
from tasks.dedup import find_exact_duplicates

if TYPE_CHECKING:  # export and report read RoundSummary without importing the evolve stage
    from tasks.evolve import ShardSummary


class RoundInvariantError(RuntimeError):
    """The pool accounting of a round does not add up; the round's outputs can't be trusted."""


class RoundSummary(BaseModel):
    """One round, as shown in the UI and the dataset card, with the shards it handed on."""

    round: int
    shards: int
    pool_in: int
    evolved: int
    carried: int
    rejected: dict[str, int]
    operations: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    wall_seconds: float  # from the round's start to its end
    shard_seconds: float  # summed over its shard tasks
    shards_reused: int = 0
    reused: bool = False
    pool_out: list[ShardRef] = []
    evolved_shards: list[ShardRef] = []
    rejected_shards: list[ShardRef] = []


def next_pool_rows(pool: list[dict[str, Any]], candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An evolved candidate replaces its parent; a rejected one's parent goes on unchanged."""
    if [c["parent_id"] for c in candidates] != [p["id"] for p in pool]:
        raise RoundInvariantError("candidates do not line up with their pool shard (one per parent, in order)")
    return [c if c["status"] == "evolved" else p for p, c in zip(pool, candidates, strict=True)]


def round_key(candidates: list[ShardRef], pool_in: list[ShardRef], references: list[ShardRef]) -> str:
    """What finishing a round depends on: its pool and candidate shards and the shards its dedup reads."""
    return content_key("round", [p.sha256 for p in pool_in], [c.sha256 for c in candidates],
                       [r.sha256 for r in references])


def finish_round(
    layout: RunLayout,
    round_index: int,
    shard_summaries: list[ShardSummary],
    pool_in: list[ShardRef],
    references: list[ShardRef],
    started: float,
    force: bool = False,
    settings: StorageSettings | None = None,
) -> RoundSummary:
    """Mark cross-shard duplicates, write evolved / rejected / next pool shards, check the invariant.

    ``references`` are the shards an evolution must not duplicate (seeds, earlier rounds' evolutions, the
    pool). Reused when ``_round.json`` was written under the same key and its shards still verify.
    """
    key = round_key([s.candidates for s in shard_summaries], pool_in, references)
    marker_uri = layout.file(f"round={round_index}", "_round.json")
    record = None if force else read_stage(marker_uri, key, settings)
    if record is not None:
        return RoundSummary.model_validate({**record["summary"], "reused": True,
                                            "shards_reused": sum(1 for s in shard_summaries if s.reused)})
    candidate_uris = [s.candidates.uri for s in shard_summaries]
    for ref in references:
        verify_shard(ref.uri, settings, expected=ref.model_dump())
    duplicates = find_exact_duplicates(candidate_uris, [r.uri for r in references], settings)
    duplicate_of = dict(zip(duplicates.column("id").to_pylist(), duplicates.column("duplicate_of").to_pylist(),
                            strict=True))
    reasons: Counter[str] = Counter()
    operations: Counter[str] = Counter()
    outputs: dict[str, list[ShardRef]] = {"evolved": [], "rejected": [], "pool": []}
    for i, (summary, pool_ref) in enumerate(zip(shard_summaries, pool_in, strict=True)):
        pool = read_shard(pool_ref.uri, settings, expected=pool_ref.model_dump()).to_pylist()
        candidates = read_shard(summary.candidates.uri, settings,
                                expected=summary.candidates.model_dump()).to_pylist()
        for c in candidates:
            if c["status"] == "evolved" and c["id"] in duplicate_of:
                c.update(status="rejected", reject_reason="duplicate", duplicate_of=duplicate_of[c["id"]])
        evolved = [c for c in candidates if c["status"] == "evolved"]
        rejected = [c for c in candidates if c["status"] == "rejected"]
        reasons.update(c["reject_reason"] for c in rejected)
        operations.update(c["operation"] for c in evolved)
        for stage, rows in (("evolved", evolved), ("rejected", rejected), ("pool", next_pool_rows(pool, candidates))):
            marker = write_shard(layout.shard(round_index, stage, i), records_table(rows), settings=settings, key=key)
            outputs[stage].append(ShardRef.of(marker))
    for stage, refs in outputs.items():
        remove_shards_except(layout.stage_dir(round_index, stage), [r.uri for r in refs], settings)
    remove_shards_except(layout.stage_dir(round_index, "candidates"), candidate_uris, settings)
    counts = check_round_invariant(round_index, [r.uri for r in pool_in], outputs, settings)
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
        wall_seconds=round(time.time() - started, 3),
        shard_seconds=round(sum(s.seconds for s in shard_summaries), 3),
        shards_reused=sum(1 for s in shard_summaries if s.reused),
        pool_out=outputs["pool"],
        evolved_shards=outputs["evolved"],
        rejected_shards=outputs["rejected"],
    )
    write_stage(marker_uri, key, result.model_dump(mode="json"), outputs, settings)
    return result


def check_round_invariant(round_index: int, pool_in_uris: list[str], outputs: dict[str, list[ShardRef]],
                          settings: StorageSettings | None = None) -> dict[str, int]:
    """Pool in = evolved + carried, and every carried row has exactly one rejected candidate with a reason.

    Computed with DuckDB over the committed shards, independently of how they were written.
    """
    evolved_uris, rejected_uris, next_uris = ([r.uri for r in outputs[k]] for k in ("evolved", "rejected", "pool"))
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
def finish_round_task(layout: RunLayout, round_index: int, shard_summaries: list[ShardSummary],
                      pool_in: list[ShardRef], references: list[ShardRef], started: float,
                      force: bool = False) -> RoundSummary:
    """Finish a round once all its shards are done (or reuse its committed outputs)."""
    summary = finish_round(layout, round_index, shard_summaries, pool_in, references, started, force)
    return Completed(data=summary, name="Reused") if summary.reused else summary
