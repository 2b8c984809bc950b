"""The scoring stage: one task per seed shard, over that shard's roots (the seed shard and the same shard of every
round's evolutions: a round keeps each root's rows in its seed's shard), mapped like a round's shards; each shard is
committed under the hash of its inputs and reused while they stay the same."""

from __future__ import annotations

import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from prompts import PromptPack, load_pack
from storage import ShardRef, StorageSettings, read_shard, write_shard
from storage.schema import count_values, records_table, score_schema
from tasks.core.context import ScoreSpec
from tasks.core.options import ORIGINAL_RESPONSE
from tasks.core.stage import Stage, shard_reader, state
from tasks.core.summaries import RoundSummary, ScoreShardSummary
from tasks.llm.base import LLMBackend
from tasks.llm.factory import get_backend
from tasks.score.rows import score_rows


def score_inputs(seeds: list[ShardRef], rounds: list[RoundSummary]) -> list[list[ShardRef]]:
    """Each score shard's inputs: seed shard i, then shard i of each round's evolutions."""
    return [[seed, *(r.evolved_shards[i] for r in rounds)] for i, seed in enumerate(seeds)]


def score_counts(scores: ShardRef, table: pa.Table) -> dict[str, Any]:
    """What a score shard's summary counts from its columns."""
    chosen = sum(pc.sum(pc.equal(table[f"{k}_method"], "chosen")).as_py() or 0 for k in ("complexity", "quality"))
    evolved: dict[str, Any] = {}
    if "response_operation" in table.column_names:  # response evolution
        rewrites = pc.struct_field(pc.list_flatten(table["response_variants"]), "operation")
        evolved = {"rewrites": len(rewrites) - (pc.sum(pc.equal(rewrites, ORIGINAL_RESPONSE)).as_py() or 0),
                   "replaced_by": {op: n for op, n in count_values(table["response_operation"]).items()
                                   if op != ORIGINAL_RESPONSE}}
    return {"scores": scores, "rows": table.num_rows, "chosen": chosen, **evolved,
            "complexity": table.num_rows - table["complexity"].null_count,
            "quality": table.num_rows - table["quality"].null_count,
            "embedded": table.num_rows - table["embedding"].null_count,
            "prompt_tokens": pc.sum(table["prompt_tokens"]).as_py() or 0,
            "completion_tokens": pc.sum(table["completion_tokens"]).as_py() or 0}


# A score shard's ``.done`` marker is its stage marker.
SCORE_SHARD = Stage("score", ScoreShardSummary, lambda layout, i: layout.score_shard(i),
                    read=shard_reader(score_counts))


def score_shard(inputs: list[ShardRef], scores_uri: str, spec: ScoreSpec, backend: LLMBackend, pack: PromptPack,
                key: str | None = None, settings: StorageSettings | None = None,
                embedder: LLMBackend | None = None) -> ScoreShardSummary:
    """Score every row of a shard's inputs (each checked against its ref) and commit the scores under ``key``;
    ``embedder``: the backend of the embeddings (None: ``backend``)."""
    started = time.perf_counter()
    rows = [row for ref in inputs for row in read_shard(ref.uri, settings, expected=ref.model_dump()).to_pylist()]
    schema = score_schema(spec.score.evolve_responses is not None)
    table = records_table(score_rows(rows, pack, backend, spec.score, embedder), schema)
    marker = write_shard(scores_uri, table, schema=schema, settings=settings, key=key)
    seconds = round(time.perf_counter() - started, 3)
    return ScoreShardSummary(seconds=seconds, **score_counts(ShardRef.of(marker, scores_uri), table))


_RUNTIMES: dict[str, tuple[PromptPack, LLMBackend, LLMBackend]] = {}
_LOCK = threading.Lock()


def reset_score_runtimes() -> None:
    """Forget the scoring backends of earlier runs in this process (a run calls it at its start)."""
    with _LOCK:
        _RUNTIMES.clear()


def score_runtime(spec: ScoreSpec) -> tuple[PromptPack, LLMBackend, LLMBackend]:
    """The pack, the scoring backend and the backend of the embeddings (the scoring one, or the same backend on
    ``score.embedding_model``) of a spec, built once per process and shared by its score tasks."""
    cache_key = spec.model_dump_json()
    with _LOCK:
        if cache_key not in _RUNTIMES:
            backend, model = get_backend(spec.llm, streaming=spec.streaming), spec.score.embedding_model
            embedder = backend if model is None else \
                get_backend(spec.llm.model_copy(update={"model": model}), streaming=spec.streaming)
            _RUNTIMES[cache_key] = (load_pack(spec.prompt_pack), backend, embedder)
        return _RUNTIMES[cache_key]


@task(name="score-shard", task_run_name="score-s{shard_index:05d}", retries=2, retry_delay_seconds=[2, 10],
      tags=["llm"])
def score_shard_task(inputs: list[ShardRef], scores_uri: str, shard_index: int, spec: ScoreSpec, key: str,
                     force: bool = False) -> ScoreShardSummary:
    """Score one shard's rows; a score shard already committed under the same key is reused (state ``Reused``)."""
    found = None if force else SCORE_SHARD.done(scores_uri, key, shard=shard_index)
    if found is not None:
        return state(found, f"{scores_uri} was committed under the same key")
    pack, backend, embedder = score_runtime(spec)
    return score_shard(inputs, scores_uri, spec, backend, pack, key=key, embedder=embedder).model_copy(
        update={"shard": shard_index})
