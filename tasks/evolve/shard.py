"""One round on one pool shard: choose operations, evolve, clean, answer, eliminate; write the candidates."""

from __future__ import annotations

import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger

from prompts import PromptPack, PromptPackError, load_pack
from storage import ShardRef, StorageSettings, read_shard, write_shard
from storage.schema import count_values, records_table
from tasks.core.context import EvolveSpec
from tasks.core.stage import Stage, shard_reader, state
from tasks.core.summaries import ShardSummary
from tasks.evolve.drive import RowDone, drive_batch, drive_streaming
from tasks.evolve.progress import ShardProgress, track_shard
from tasks.evolve.steps import ShardPlan
from tasks.llm.aio import run_on_loop
from tasks.llm.base import LLMBackend
from tasks.llm.factory import RoleBackends, role_backends


def evolve_rows(
    rows: list[dict[str, Any]], round_index: int, config: EvolveSpec, backends: RoleBackends | LLMBackend,
    pack: PromptPack, streaming: bool = False, on_row: RowDone | None = None,
) -> list[dict[str, Any]]:
    """One candidate per pool row, in order, with status ``evolved`` or ``rejected`` and its reason.

    ``backends``: the evolving, answering and judging backends (one backend serves all three). ``streaming``: each
    row moves to its next stage as soon as its own step is done, on the process's streaming loop (rows of other
    shards of the process in flight too); otherwise stage by stage in one batch per stage. Same candidates.
    ``on_row`` gets each candidate as soon as it is made (progress inside the shard).
    """
    stages = backends if isinstance(backends, RoleBackends) else RoleBackends.single(backends)
    plan = ShardPlan.of(rows, round_index, config, pack, stages.model_names())
    if streaming:
        return run_on_loop(drive_streaming(plan, stages, on_row))
    return drive_batch(plan, stages, on_row)


def evolve_shard(
    pool: ShardRef,
    candidates_uri: str,
    round_index: int,
    spec: EvolveSpec,
    backend: RoleBackends | LLMBackend,
    pack: PromptPack,
    key: str | None = None,
    settings: StorageSettings | None = None,
    on_row: RowDone | None = None,
) -> ShardSummary:
    """Evolve every row of a pool shard (checked against its ref) and commit the candidates shard under ``key``;
    ``on_row`` gets each candidate as it is made."""
    started = time.perf_counter()
    rows = read_shard(pool.uri, settings, expected=pool.model_dump()).to_pylist()
    candidates = evolve_rows(rows, round_index, spec, backend, pack, spec.streaming, on_row) if rows else []
    table = records_table(candidates)
    marker = write_shard(candidates_uri, table, settings=settings, key=key)
    return summarize(round_index, pool.uri, ShardRef.of(marker), table, time.perf_counter() - started)


def shard_counts(candidates: ShardRef, table: pa.Table) -> dict[str, Any]:
    """What a shard summary counts from its candidates shard's columns."""
    passed = pc.equal(table["status"], "evolved")
    return {"candidates": candidates, "pool_in": table.num_rows, "passed": pc.sum(passed).as_py() or 0,
            "rejected": count_values(table["reject_reason"]),
            "operations": count_values(table["operation"].filter(passed)),
            "prompt_tokens": pc.sum(table["prompt_tokens"]).as_py() or 0,
            "completion_tokens": pc.sum(table["completion_tokens"]).as_py() or 0}


def summarize(round_index: int, pool_uri: str, candidates: ShardRef, table: pa.Table,
              seconds: float, reused: bool = False) -> ShardSummary:
    """The summary of a candidates shard, counted from its columns."""
    return ShardSummary(round=round_index, pool_uri=pool_uri, seconds=round(seconds, 3), reused=reused,
                        **shard_counts(candidates, table))


# A candidates shard's ``.done`` marker is its stage marker.
EVOLVE_SHARD = Stage("evolve", ShardSummary, lambda layout, k, i: layout.shard(k, "candidates", i),
                     read=shard_reader(shard_counts))


_RUNTIMES: dict[str, tuple[PromptPack, RoleBackends]] = {}  # by the spec, the run's template shas included
_BACKENDS: dict[str, RoleBackends] = {}  # by the spec without them: an edited pack keeps the backends
_RUNTIMES_LOCK = threading.Lock()
_RUNTIME_BUILDS = {"count": 0}


def evolve_runtime_builds() -> int:
    """How many times this process built a run's backends (a cluster worker: once per run settings)."""
    return _RUNTIME_BUILDS["count"]


def reset_evolve_runtimes() -> None:
    """Forget the packs and backends of earlier runs in this process (a run calls it at its start, so a newly
    registered backend is picked up; vLLM engines stay cached on their own)."""
    with _RUNTIMES_LOCK:
        _RUNTIMES.clear()
        _BACKENDS.clear()


def evolve_runtime_built(spec: EvolveSpec) -> bool:
    """Whether this run already built the pack and backends of ``spec`` (so their engines are warm)."""
    with _RUNTIMES_LOCK:
        return spec.model_dump_json() in _RUNTIMES


def evolve_runtime(spec: EvolveSpec) -> tuple[PromptPack, RoleBackends]:
    """The prompt pack and backends of a spec, built once per process and shared by its shard tasks.

    A run's spec carries its pack's template shas (the ones in its stage keys), so a long-lived worker loads the
    pack again for a run that started after an edit, and a pack that no longer matches its run (edited mid-run)
    fails the shard instead of rendering templates the run's keys do not name."""
    cache_key = spec.model_dump_json()
    with _RUNTIMES_LOCK:
        if cache_key not in _RUNTIMES:
            pack = load_pack(spec.prompt_pack)
            if spec.template_shas is not None and pack.template_shas() != spec.template_shas:
                changed = sorted(k for k in {*pack.template_shas(), *spec.template_shas}
                                 if pack.template_shas().get(k) != spec.template_shas.get(k))
                raise PromptPackError(f"prompt pack {spec.prompt_pack!r} changed since the run started (templates "
                                      f"{', '.join(changed)}): rerun the flow to evolve with the edited pack")
            settings = spec.model_dump_json(exclude={"template_shas"})
            if settings not in _BACKENDS:
                _BACKENDS[settings] = role_backends(spec.llm, streaming=spec.streaming)
                _RUNTIME_BUILDS["count"] += 1
            _RUNTIMES[cache_key] = (pack, _BACKENDS[settings])
        return _RUNTIMES[cache_key]


@task(name="evolve-shard", task_run_name="evolve-r{round_index}-s{shard_index:05d}", retries=2,
      retry_delay_seconds=[2, 10], tags=["llm"])
def evolve_shard_task(pool: ShardRef, candidates_uri: str, round_index: int, shard_index: int,
                      spec: EvolveSpec, key: str, force: bool = False, progress_every_s: float = 5.0
                      ) -> ShardSummary:
    """Evolve one pool shard; a candidates shard already committed under the same key is reused (state
    ``Reused`` in the UI), so the storage marker is the only record of what is done. While rows stream the shard
    logs its progress (every tenth of its rows, or every ``progress_every_s`` seconds) and keeps it on this
    process's board for its round."""
    found = None if force else EVOLVE_SHARD.done(candidates_uri, key, round=round_index, pool_uri=pool.uri)
    if found is not None:
        return state(found, f"{candidates_uri} was committed under the same key")
    pack, backend = evolve_runtime(spec)
    progress = track_shard(candidates_uri, ShardProgress(round_index, shard_index, pool.rows, progress_every_s))
    logger = _run_logger()

    def on_row(candidate: dict[str, Any]) -> None:
        line = progress.record(candidate)
        if line is not None:
            logger.info("%s", line)

    return evolve_shard(pool, candidates_uri, round_index, spec, backend, pack, key=key, on_row=on_row)


def _run_logger() -> Any:
    """The task run's logger (its lines reach the UI from the streaming loop's thread too), else the module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger(__name__)
