"""The final data: seeds plus every round's survivors, near-deduplicated, shuffled, sampled (at random, or by
diversity-aware selection over the scoring stage's scores: ``tasks.mix.select``)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from storage import (
    RunLayout,
    ShardRef,
    StageMismatch,
    StorageSettings,
    read_shard,
    total_rows,
    write_shard,
    write_stage,
)
from storage.schema import RECORD_SCHEMA, SCORE_SCHEMA, count_values
from tasks.core.config import RunConfig
from tasks.core.options import ORIGINAL_RESPONSE
from tasks.core.stage import Stage, state
from tasks.core.summaries import MixSummary
from tasks.mix.benchmarks import read_benchmarks
from tasks.mix.decontaminate import contaminated_rows
from tasks.mix.near_dedup import find_near_duplicates
from tasks.mix.select import select_table


def _with_reason(table: pa.Table, reason: str, of: list[str] | pa.Array | None = None) -> pa.Table:
    """``table`` with ``reject_reason`` set to ``reason`` and, given, ``duplicate_of`` to ``of`` (what each row
    repeats: a kept row's id, a benchmark item)."""
    table = table.set_column(table.schema.get_field_index("reject_reason"), "reject_reason",
                             pa.array([reason] * table.num_rows, pa.string()))
    if of is None:
        return table
    of = of if isinstance(of, pa.Array) else pa.array(of, pa.string())
    return table.set_column(table.schema.get_field_index("duplicate_of"), "duplicate_of", of)


def _read_all(refs: list[ShardRef], settings: StorageSettings | None, schema: pa.Schema) -> pa.Table:
    tables = [read_shard(ref.uri, settings, expected=ref.model_dump()) for ref in refs]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def kept_responses(table: pa.Table, scores: pa.Table) -> pa.Table:
    """``table`` with each row's response the one response evolution kept (``scores``: the score rows with
    ``response_operation``): where a rewrite won, its text, its template's sha as ``response_prompt_sha`` and the
    rewriting (scoring) model as ``respond_model``; the other rows as they were."""
    where = pc.index_in(table["id"], scores["id"])
    operation = scores["response_operation"].take(where)
    rewritten = pc.fill_null(pc.not_equal(operation, ORIGINAL_RESPONSE), False)
    for column, source in (("response", "response"), ("response_prompt_sha", "response_prompt_sha"),
                           ("respond_model", "score_model")):
        value = pc.if_else(rewritten, scores[source].take(where), table[column])
        table = table.set_column(table.schema.get_field_index(column), column, value)
    return table


def replaced_by(final: pa.Table, scores: pa.Table) -> dict[str, int]:
    """The final rows whose response is a rewrite, by operation."""
    operation = scores["response_operation"].filter(pc.is_in(scores["id"], final["id"]))
    return {op: n for op, n in count_values(operation).items() if op != ORIGINAL_RESPONSE}


MIX = Stage("mix", MixSummary, RunLayout.mix_marker)


def mix_final(layout: RunLayout, config: RunConfig, inputs: list[ShardRef], key: str, force: bool = False,
              settings: StorageSettings | None = None, benchmark_shas: tuple[str, ...] | None = None,
              scores: list[ShardRef] | None = None) -> MixSummary:
    """Build and commit ``final/`` (the training data) and ``final_dropped/`` (with reasons) from ``inputs``;
    with ``mix.selection``, the rows are chosen by their ``scores`` (the score shards), the others dropped as
    ``not_selected`` with the nearest chosen row in ``duplicate_of``; with response evolution (score shards with
    ``response_operation``), each row takes the response the scoring stage kept.

    Reused when ``final/_mix.json`` was written under ``key`` and both shards still verify. ``benchmark_shas``: the
    benchmark files' SHA-256 the key was made with (``mix.decontaminate``); a file that changed since is an error.
    """
    found = None if force else MIX.done(layout.mix_marker(), key, settings)
    if found is not None:
        return found
    # the input shards (seeds first, then each round's evolved rows), each checked against its ref
    table = _read_all(inputs, settings, RECORD_SCHEMA)
    if table.num_rows != total_rows(inputs):
        raise StageMismatch(f"mix: read {table.num_rows} rows from shards that hold {total_rows(inputs)}")
    candidates = table.num_rows
    score_table = _read_all(scores or [], settings, SCORE_SCHEMA)
    evolved = "response_operation" in score_table.column_names  # response evolution: each row's kept response
    if evolved:
        table = kept_responses(table, score_table)
    # a null response compares as null: filled as blank
    has_response = pc.invert(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(table["response"]), ""), True))
    dropped = [_with_reason(table.filter(pc.invert(has_response)), "no_response")]
    table = table.filter(has_response)

    contaminated: dict[str, int] = {}
    if config.mix.decontaminate is not None and table.num_rows:
        spec = config.mix.decontaminate
        rows, items = contaminated_rows(table["content_key"], read_benchmarks(spec.files, settings, benchmark_shas),
                                        spec.n)
        dropped.append(_with_reason(table.take(pa.array(rows, pa.int64())), "contaminated", items))
        contaminated = dict(Counter(item.rsplit("#", 1)[0] for item in items))
        keep = np.ones(table.num_rows, bool)
        keep[rows] = False
        table = table.filter(pa.array(keep))

    # Exact duplicates never get here: ingest drops them among the seeds, each round against everything before.
    near_count = 0
    if config.dedup.near and table.num_rows:
        near = find_near_duplicates(table["id"].to_pylist(), table["content_key"],
                                    threshold=config.dedup.jaccard_threshold, shingle_size=config.dedup.shingle_size,
                                    num_perm=config.dedup.num_perm, seed=config.random_seed)
        near_count = len(near)
        is_near = pc.is_in(table["id"], pa.array(list(near), pa.string()))
        near_rows = table.filter(is_near)
        dropped.append(_with_reason(near_rows, "near_duplicate", [near[i] for i in near_rows["id"].to_pylist()]))
        table = table.filter(pc.invert(is_near))

    not_selected = 0
    if config.mix.selection is not None:
        table, left, nearest = select_table(table, score_table, config.mix.selection.threshold,
                                            config.mix.sample_size)
        dropped.append(_with_reason(left, "not_selected", nearest))
        not_selected = left.num_rows
    # Shuffle from a canonical order so the result does not depend on shard layout.
    table = table.take(pc.sort_indices(table, [("id", "ascending")]))
    order = np.random.default_rng(config.random_seed).permutation(table.num_rows)
    table = table.take(pa.array(order, pa.int64()))
    sampled_out = 0
    if config.mix.sample_size is not None and table.num_rows > config.mix.sample_size:
        sampled_out = table.num_rows - config.mix.sample_size
        table = table.slice(0, config.mix.sample_size)

    final_uri = layout.run_shard("final", 0)
    dropped_uri = layout.run_shard("final_dropped", 0)
    final_ref = ShardRef.of(write_shard(final_uri, table, settings=settings, key=key))
    dropped_table = pa.concat_tables([d.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA) for d in dropped])
    dropped_ref = ShardRef.of(write_shard(dropped_uri, dropped_table, settings=settings, key=key))
    summary = MixSummary(
        candidates=candidates, no_response=dropped[0].num_rows, near_duplicates=near_count, sampled_out=sampled_out,
        not_selected=not_selected, final=table.num_rows, contaminated=sum(contaminated.values()),
        contaminated_by=contaminated, by_round={str(r): n for r, n in count_values(table["round"]).items()},
        by_operation=count_values(table["operation"]),
        responses_replaced=replaced_by(table, score_table) if evolved else {},
        final_uri=final_uri, dropped_uri=dropped_uri, final_sha256=final_ref.sha256,
    )
    outputs = {"final": [final_ref], "dropped": [dropped_ref]}
    write_stage(layout.mix_marker(), key, summary.model_dump(mode="json"), outputs, settings)
    return summary


@task(name="mix-final", retries=1, retry_delay_seconds=5)
def mix_final_task(layout: RunLayout, config: RunConfig, inputs: list[ShardRef], key: str,
                   force: bool = False, benchmark_shas: tuple[str, ...] | None = None,
                   scores: list[ShardRef] | None = None) -> MixSummary:
    """Mix the seeds and every round's survivors into the final data (or reuse it)."""
    return state(mix_final(layout, config, inputs, key, force, benchmark_shas=benchmark_shas, scores=scores))
