"""One round on one pool shard: choose operations, evolve, clean, answer, eliminate; write the candidates."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pyarrow as pa
from prefect import task
from prefect.logging import get_logger
from prefect.states import Completed
from pydantic import BaseModel

from prompts import PromptPack, load_pack
from storage import ShardCorrupt, ShardRef, StorageSettings, read_shard, write_shard
from storage.schema import records_table
from storage.shards import read_marker
from tasks.clean import clean_evolved_instruction, cut_at_stops, split_stops
from tasks.context import EvolveSpec
from tasks.core.config import SamplingParams
from tasks.core.text import content_key, record_id
from tasks.eliminate import EQUALITY_CHOICES, EQUALITY_VERDICTS, equality_reason, parse_equality, text_rule_reasons
from tasks.llm.base import Completion, LLMBackend
from tasks.llm.factory import StageBackends, stage_backends
from tasks.operations import evolve_prompts
from tasks.validity import VALIDITY_CHOICES, llm_validity_reason, parse_yes_no, validity_rule_reason

# Reasons decided from the evolution alone: such candidates are not answered.
EVOLUTION_REASONS = frozenset({"llm_error", "empty_evolution", "evolution_truncated", "scaffolding_copied"})


class ShardSummary(BaseModel):
    """What one shard task did; small enough for Prefect to record."""

    round: int
    pool_uri: str
    candidates: ShardRef
    pool_in: int
    passed: int
    rejected: dict[str, int]
    operations: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    reused: bool = False


def _tokens(*completions: Completion | None) -> tuple[int, int]:
    done = [c for c in completions if c is not None]
    return sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done)


def _judge(backend: LLMBackend, prompts: list[list[dict[str, str]]], params: SamplingParams,
           choices: tuple[str, ...]) -> list[Completion]:
    """Ask the judge a forced choice: constrained where the backend can, free text to parse otherwise."""
    return backend.generate(prompts, params.model_copy(update={"choices": choices}))


def _method(completion: Completion | None) -> str | None:
    if completion is None or not completion.ok:
        return None
    return "constrained" if completion.constrained else "text"


def _raw(completion: Completion | None) -> str | None:
    if completion is None:
        return None
    return completion.text if completion.ok else completion.error


def evolve_rows(
    rows: list[dict[str, Any]], round_index: int, config: EvolveSpec, backends: StageBackends | LLMBackend,
    pack: PromptPack,
) -> list[dict[str, Any]]:
    """One candidate per pool row, in order, with status ``evolved`` or ``rejected`` and its reason.

    ``backends``: the evolving, answering and judging backends (one backend serves all three).
    """
    stages = backends if isinstance(backends, StageBackends) else StageBackends.single(backends)
    scaffolding = config.elimination.scaffolding_phrases or pack.scaffolding_phrases
    ops, variants, parents, rendered = evolve_prompts(rows, round_index, pack, config.random_seed,
                                                      config.operation_weights, config.prefill)
    # A stop string that is part of an output label would cut a label the model repeats to nothing: those
    # stops are applied after generation, past the label.
    engine_stops, label_stops = split_stops(config.sampling.evolve.stop,
                                            [pack.label(op, v) for op, v in zip(ops, variants, strict=True)])
    evolved = stages.evolve.generate([m for m, _ in rendered],
                                     config.sampling.evolve.model_copy(update={"stop": engine_stops}))
    cuts = [cut_at_stops(c.text, label_stops) if c.ok else (c.text, False) for c in evolved]
    finish = ["stop" if was_cut else c.finish_reason for c, (_, was_cut) in zip(evolved, cuts, strict=True)]
    instructions = [clean_evolved_instruction(text) if c.ok else "" for c, (text, _) in zip(evolved, cuts, strict=True)]

    def reasons_with(responses: list[Completion | None]) -> list[str | None]:
        table = pa.table({
            "instruction": instructions,
            "response": [r.text if r is not None and r.ok else None for r in responses],
            "finish_reason": finish,
            "response_finish_reason": [r.finish_reason if r is not None else None for r in responses],
            "error": [c.error or (r.error if r is not None else None) for c, r in zip(evolved, responses, strict=True)],
        })
        return text_rule_reasons(table, config.elimination, scaffolding)

    early = reasons_with([None] * len(rows))
    invalid: list[str | None] = [None] * len(rows)
    validity: list[Completion | None] = [None] * len(rows)
    if config.elimination.validity_check:
        for i, reason in enumerate(early):
            if reason not in EVOLUTION_REASONS:
                invalid[i] = validity_rule_reason(instructions[i], parents[i], pack.operations[ops[i]].kind,
                                                  config.elimination.shorter_than_parent_ratio,
                                                  "\n".join(m["content"] for m in rendered[i][0]))
        to_judge = [i for i, reason in enumerate(early) if reason not in EVOLUTION_REASONS and invalid[i] is None]
        prompts = [pack.validity_messages(parents[i], instructions[i])[0] for i in to_judge]
        for i, c in zip(to_judge, _judge(stages.judge, prompts, config.sampling.validity, VALIDITY_CHOICES),
                        strict=True):
            validity[i] = c
            invalid[i] = "llm_error" if not c.ok else llm_validity_reason(c.text if c.constrained
                                                                          else parse_yes_no(c.text))

    to_answer = [i for i, reason in enumerate(early) if reason not in EVOLUTION_REASONS and invalid[i] is None]
    answer_prompts = [pack.answer_messages(instructions[i], "") for i in to_answer]
    answers: list[Completion | None] = [None] * len(rows)
    for i, completion in zip(to_answer, stages.respond.generate([m for m, _ in answer_prompts],
                                                                config.sampling.respond), strict=True):
        answers[i] = completion
    reasons = reasons_with(answers)
    for i, reason in enumerate(invalid):
        if reason is not None and early[i] not in EVOLUTION_REASONS:
            reasons[i] = reason

    checks: list[Completion | None] = [None] * len(rows)
    if config.elimination.equality_check:
        to_check = [i for i, reason in enumerate(reasons) if reason is None]
        prompts = [pack.equality_messages(parents[i], instructions[i])[0] for i in to_check]
        for i, c in zip(to_check, _judge(stages.judge, prompts, config.sampling.equality, EQUALITY_CHOICES),
                        strict=True):
            checks[i] = c
            verdict = EQUALITY_VERDICTS[c.text] if c.constrained else parse_equality(c.text)
            reasons[i] = "llm_error" if not c.ok else equality_reason(verdict)

    answer_sha = pack.answer_messages("x", "")[1]
    models = stages.model_names()
    out = []
    for i, row in enumerate(rows):
        prompt_tokens, completion_tokens = _tokens(evolved[i], validity[i], answers[i], checks[i])
        out.append({
            "id": record_id(f"{row['id']}\n{round_index}\n{instructions[i]}"),
            "root_id": row["root_id"],
            "parent_id": row["id"],
            "round": round_index,
            "operation": ops[i],
            "instruction": instructions[i],
            "input": "",
            "content_key": content_key(instructions[i]),
            "response": answers[i].text if answers[i] is not None and answers[i].ok else None,
            "status": "rejected" if reasons[i] else "evolved",
            "reject_reason": reasons[i],
            "model": models["evolve"],
            "respond_model": models["respond"],
            "judge_model": models["judge"],
            "prompt_sha": rendered[i][1],
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "finish_reason": finish[i],
            "response_prompt_sha": answer_sha if answers[i] is not None else None,
            "response_finish_reason": answers[i].finish_reason if answers[i] is not None else None,
            "raw_evolution": evolved[i].text if evolved[i].ok else evolved[i].error,
            "equality_raw": _raw(checks[i]),
            "equality_method": _method(checks[i]),
            "equality_margin": checks[i].choice_margin if checks[i] is not None else None,
            "validity_raw": _raw(validity[i]),
            "validity_method": _method(validity[i]),
            "validity_margin": validity[i].choice_margin if validity[i] is not None else None,
            "meta": row.get("meta"),  # the seed's source fields, down the whole lineage
        })
    return out


def evolve_shard(
    pool: ShardRef,
    candidates_uri: str,
    round_index: int,
    spec: EvolveSpec,
    backend: StageBackends | LLMBackend,
    pack: PromptPack,
    key: str | None = None,
    settings: StorageSettings | None = None,
) -> ShardSummary:
    """Evolve every row of a pool shard (checked against its ref) and commit the candidates shard under ``key``."""
    started = time.perf_counter()
    rows = read_shard(pool.uri, settings, expected=pool.model_dump()).to_pylist()
    candidates = evolve_rows(rows, round_index, spec, backend, pack) if rows else []
    marker = write_shard(candidates_uri, records_table(candidates), settings=settings, key=key)
    return summarize(round_index, pool.uri, ShardRef.of(marker), candidates, time.perf_counter() - started)


def summarize(round_index: int, pool_uri: str, candidates: ShardRef, rows: list[dict[str, Any]],
              seconds: float, reused: bool = False) -> ShardSummary:
    """The summary of a candidates shard."""
    return ShardSummary(
        round=round_index,
        pool_uri=pool_uri,
        candidates=candidates,
        pool_in=len(rows),
        passed=sum(1 for c in rows if c["status"] == "evolved"),
        rejected=dict(sorted(Counter(c["reject_reason"] for c in rows if c["reject_reason"]).items())),
        operations=dict(sorted(Counter(c["operation"] for c in rows).items())),
        prompt_tokens=sum(c["prompt_tokens"] for c in rows),
        completion_tokens=sum(c["completion_tokens"] for c in rows),
        seconds=round(seconds, 3),
        reused=reused,
    )


def reusable_candidates(candidates_uri: str, key: str, settings: StorageSettings | None = None) -> tuple[
        ShardRef, pa.Table] | None:
    """The committed candidates shard written under ``key``, if it still verifies; None means compute it."""
    try:
        marker = read_marker(candidates_uri, settings)
    except ShardCorrupt:
        return None  # never committed
    if marker.get("key") != key:
        return None
    try:
        return ShardRef.of(marker), read_shard(candidates_uri, settings, expected=marker)
    except ShardCorrupt as err:
        logger = get_logger(__name__)
        logger.warning("%s", err)
        return None


_RUNTIMES: dict[str, tuple[PromptPack, StageBackends]] = {}
_RUNTIMES_LOCK = threading.Lock()
_RUNTIME_BUILDS = {"count": 0}


def stage_runtime_builds() -> int:
    """How many times this process built a pack and its backends (a cluster worker: once per run settings)."""
    return _RUNTIME_BUILDS["count"]


def reset_stage_runtimes() -> None:
    """Forget the packs and backends of earlier runs in this process (a run calls it at its start, so an
    edited pack or a newly registered backend is picked up; vLLM engines stay cached on their own)."""
    with _RUNTIMES_LOCK:
        _RUNTIMES.clear()


def stage_runtime_built(spec: EvolveSpec) -> bool:
    """Whether this run already built the pack and backends of ``spec`` (so their engines are warm)."""
    with _RUNTIMES_LOCK:
        return spec.model_dump_json() in _RUNTIMES


def stage_runtime(spec: EvolveSpec) -> tuple[PromptPack, StageBackends]:
    """The prompt pack and backend of a spec, built once per run and shared by its shard tasks."""
    cache_key = spec.model_dump_json()
    with _RUNTIMES_LOCK:
        if cache_key not in _RUNTIMES:
            _RUNTIMES[cache_key] = (load_pack(spec.prompt_pack), stage_backends(spec.llm))
            _RUNTIME_BUILDS["count"] += 1
        return _RUNTIMES[cache_key]


@task(name="evolve-shard", task_run_name="evolve-r{round_index}-s{shard_index:05d}", retries=2,
      retry_delay_seconds=[2, 10], tags=["llm"])
def evolve_shard_task(pool: ShardRef, candidates_uri: str, round_index: int, shard_index: int,
                      spec: EvolveSpec, key: str, force: bool = False) -> ShardSummary:
    """Evolve one pool shard; a candidates shard already committed under the same key is reused (state
    ``Reused`` in the UI), so the storage marker is the only record of what is done."""
    if not force:
        found = reusable_candidates(candidates_uri, key)
        if found is not None:
            ref, table = found
            return Completed(data=summarize(round_index, pool.uri, ref, table.to_pylist(), 0.0, reused=True),
                             name="Reused", message=f"{candidates_uri} was committed under the same key")
    pack, backend = stage_runtime(spec)
    return evolve_shard(pool, candidates_uri, round_index, spec, backend, pack, key=key)
