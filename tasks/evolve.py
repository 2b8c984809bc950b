"""One round on one pool shard: choose operations, evolve, clean, answer, eliminate; write the candidates."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from prefect import task
from pydantic import BaseModel

from prompts import PromptPack, load_pack
from storage import StorageSettings, is_committed, read_shard, write_shard
from storage.schema import records_table
from storage.shards import read_marker
from tasks.clean import clean_evolved_instruction
from tasks.core.config import RunConfig
from tasks.core.text import parent_text, record_id
from tasks.eliminate import equality_reason, parse_equality, text_rule_reasons
from tasks.llm.base import Completion, LLMBackend
from tasks.llm.factory import get_backend
from tasks.operations import choose_operation, resolve_weights

# Reasons decided from the evolution alone: such candidates are not answered.
EVOLUTION_REASONS = frozenset({"llm_error", "empty_evolution", "evolution_truncated", "scaffolding_copied"})


class ShardSummary(BaseModel):
    """What one shard task did; small enough for Prefect to record."""

    round: int
    shard: str
    candidates_uri: str
    pool_in: int
    passed: int
    rejected: dict[str, int]
    operations: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def _tokens(*completions: Completion | None) -> tuple[int, int]:
    done = [c for c in completions if c is not None]
    return sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done)


def evolve_rows(
    rows: list[dict[str, Any]], round_index: int, config: RunConfig, backend: LLMBackend, pack: PromptPack
) -> list[dict[str, Any]]:
    """One candidate per pool row, in order, with status ``evolved`` or ``rejected`` and its reason."""
    weights = resolve_weights(pack, config.operation_weights)
    scaffolding = config.elimination.scaffolding_phrases or pack.scaffolding_phrases
    ops = [choose_operation(config.seed, row["id"], round_index, weights) for row in rows]
    parents = [parent_text(row) for row in rows]
    rendered = [pack.evolve_messages(op, parent, "") for op, parent in zip(ops, parents, strict=True)]
    evolved = backend.generate([m for m, _ in rendered], config.sampling.evolve)
    instructions = [clean_evolved_instruction(c.text) if c.ok else "" for c in evolved]

    def reasons_with(responses: list[Completion | None]) -> list[str | None]:
        table = pa.table({
            "instruction": instructions,
            "response": [r.text if r is not None and r.ok else None for r in responses],
            "finish_reason": [c.finish_reason for c in evolved],
            "response_finish_reason": [r.finish_reason if r is not None else None for r in responses],
            "error": [c.error or (r.error if r is not None else None) for c, r in zip(evolved, responses, strict=True)],
        })
        return text_rule_reasons(table, config.elimination, scaffolding)

    early = reasons_with([None] * len(rows))
    to_answer = [i for i, reason in enumerate(early) if reason not in EVOLUTION_REASONS]
    answer_prompts = [pack.answer_messages(instructions[i], "") for i in to_answer]
    answers: list[Completion | None] = [None] * len(rows)
    for i, completion in zip(to_answer, backend.generate([m for m, _ in answer_prompts], config.sampling.respond),
                             strict=True):
        answers[i] = completion
    reasons = reasons_with(answers)

    checks: list[Completion | None] = [None] * len(rows)
    if config.elimination.equality_check:
        to_check = [i for i, reason in enumerate(reasons) if reason is None]
        prompts = [pack.equality_messages(parents[i], instructions[i])[0] for i in to_check]
        for i, completion in zip(to_check, backend.generate(prompts, config.sampling.equality), strict=True):
            checks[i] = completion
            reasons[i] = "llm_error" if not completion.ok else equality_reason(parse_equality(completion.text))

    answer_sha = pack.answer_messages("x", "")[1]
    now = datetime.now(UTC)
    out = []
    for i, row in enumerate(rows):
        prompt_tokens, completion_tokens = _tokens(evolved[i], answers[i], checks[i])
        out.append({
            "id": record_id(f"{row['id']}\n{round_index}\n{instructions[i]}"),
            "root_id": row["root_id"],
            "parent_id": row["id"],
            "round": round_index,
            "operation": ops[i],
            "instruction": instructions[i],
            "input": "",
            "response": answers[i].text if answers[i] is not None and answers[i].ok else None,
            "status": "rejected" if reasons[i] else "evolved",
            "reject_reason": reasons[i],
            "model": backend.model_name,
            "prompt_sha": rendered[i][1],
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "finish_reason": evolved[i].finish_reason,
            "response_prompt_sha": answer_sha if answers[i] is not None else None,
            "response_finish_reason": answers[i].finish_reason if answers[i] is not None else None,
            "raw_evolution": evolved[i].text if evolved[i].ok else evolved[i].error,
            "equality_raw": (checks[i].text if checks[i].ok else checks[i].error) if checks[i] is not None else None,
            "meta": row.get("meta"),  # the seed's source fields, down the whole lineage
            "created_at": now,
        })
    return out


def evolve_shard(
    pool_uri: str,
    candidates_uri: str,
    round_index: int,
    config: RunConfig,
    backend: LLMBackend,
    pack: PromptPack,
    settings: StorageSettings | None = None,
) -> ShardSummary:
    """Evolve every row of a committed pool shard and commit the candidates shard."""
    started = time.perf_counter()
    rows = read_shard(pool_uri, settings).to_pylist()
    candidates = evolve_rows(rows, round_index, config, backend, pack) if rows else []
    write_shard(candidates_uri, records_table(candidates), settings=settings)
    return summarize(round_index, pool_uri, candidates_uri, candidates, time.perf_counter() - started)


def summarize(round_index: int, pool_uri: str, candidates_uri: str, candidates: list[dict[str, Any]],
              seconds: float) -> ShardSummary:
    """The summary of a candidates shard."""
    return ShardSummary(
        round=round_index,
        shard=pool_uri,
        candidates_uri=candidates_uri,
        pool_in=len(candidates),
        passed=sum(1 for c in candidates if c["status"] == "evolved"),
        rejected=dict(sorted(Counter(c["reject_reason"] for c in candidates if c["reject_reason"]).items())),
        operations=dict(sorted(Counter(c["operation"] for c in candidates).items())),
        prompt_tokens=sum(c["prompt_tokens"] for c in candidates),
        completion_tokens=sum(c["completion_tokens"] for c in candidates),
        seconds=round(seconds, 3),
    )


def _shard_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """A shard's work is the same when its pool shard content, round and run fingerprint are."""
    marker = read_marker(parameters["pool_uri"])
    fingerprint, round_index, pool_uri = parameters["fingerprint"], parameters["round_index"], parameters["pool_uri"]
    return f"evolve:{fingerprint}:r{round_index}:{pool_uri}:{marker['sha256']}"


@task(
    name="evolve-shard",
    task_run_name="evolve-r{round_index}-s{shard_index:05d}",
    cache_key_fn=_shard_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[2, 10],
    tags=["llm"],
)
def evolve_shard_task(pool_uri: str, candidates_uri: str, round_index: int, shard_index: int,
                      config: RunConfig, fingerprint: str) -> ShardSummary:
    """Evolve one pool shard; a shard whose candidates are already committed is read, not recomputed."""
    if is_committed(candidates_uri):
        rows = read_shard(candidates_uri).to_pylist()
        return summarize(round_index, pool_uri, candidates_uri, rows, 0.0)
    backend = get_backend(config.llm)
    pack = load_pack(config.prompt_pack)
    return evolve_shard(pool_uri, candidates_uri, round_index, config, backend, pack)
