"""The engine start as a step of its own: a round that has shards to compute and no warm backend yet starts
its engines in a task of their own (``start-engines``) before its shards run, so the UI shows the start and
its seconds instead of a silent 0/N bar. Once per run: later rounds find the backends built."""

from __future__ import annotations

import time

from prefect import task
from pydantic import BaseModel

from storage import ShardCorrupt, StorageSettings
from storage.shards import read_marker
from tasks.core.config import ROLES, LLMConfig
from tasks.core.context import EvolveSpec
from tasks.evolve.shard import evolve_runtime, evolve_runtime_built


class EngineStart(BaseModel):
    backends: list[str]  # "backend model" per distinct backend, as configured
    engines: list[str]  # model names of the engines started (vLLM); none for scripted or remote backends
    seconds: float

    def note(self) -> str:
        what = f"engine {', '.join(self.engines)}" if self.engines else f"backend {', '.join(self.backends)}"
        return f"{what} ready in {self.seconds:.1f} s"


def engine_labels(llm: LLMConfig) -> list[str]:
    """``backend model`` of each distinct backend a run uses, in stage order."""
    return list(dict.fromkeys(f"{resolved.backend} {resolved.model}" for resolved in map(llm.for_role, ROLES)))


def pending_shards(candidate_uris: list[str], keys: list[str], force: bool = False,
                   settings: StorageSettings | None = None) -> int:
    """How many of a round's candidate shards are not committed under their key (markers only: cheap)."""
    if force:
        return len(candidate_uris)
    pending = 0
    for uri, key in zip(candidate_uris, keys, strict=True):
        try:
            pending += read_marker(uri, settings).get("key") != key
        except ShardCorrupt:
            pending += 1
    return pending


def needs_engine_start(spec: EvolveSpec, candidate_uris: list[str], keys: list[str], force: bool = False) -> bool:
    """Whether a round must start its engines first: it has shards to compute and this run has not built its
    backends yet. A round whose shards are all reused starts nothing."""
    return not evolve_runtime_built(spec) and pending_shards(candidate_uris, keys, force) > 0


def start_engines(spec: EvolveSpec) -> EngineStart:
    started = time.perf_counter()
    _pack, backends = evolve_runtime(spec)
    engines = backends.start()
    return EngineStart(backends=engine_labels(spec.llm), engines=engines,
                       seconds=round(time.perf_counter() - started, 3))


@task(name="start-engines", task_run_name="start-engines-r{round_index}", tags=["llm"])
def start_engines_task(spec: EvolveSpec, round_index: int) -> EngineStart:
    """Start the run's LLM engines before the round's shards (a failed start fails the round at once)."""
    return start_engines(spec)
