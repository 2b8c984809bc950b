"""What a run resolves to, once: its folder, the prompt pack's template shas, the model's identity, the seeds'
content hash, and the stage key of each stage (``stage_key``).

A stage's key is the hash of exactly what it depends on, so a rerun recomputes a stage only when one of
those changed (and everything downstream, through the shas of its outputs):

- ingest: the seed file's bytes, the field map, the shard size, the reader version;
- an evolve shard: its pool shard's sha, the round, the templates, the model, sampling, elimination,
  operation weights and the run seed;
- finishing a round: its candidate shards and the shards its dedup compares against;
- mix: the seeds' and every round's evolved shards, dedup and mix settings, the run seed, the benchmark files'
  bytes (``mix.decontaminate``);
- export: the final shard and what the dataset card shows.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from storage import RunLayout, StorageSettings, resolve
from tasks.core.config import EliminationConfig, LLMConfig, RunConfig, StageSampling

# Bump when the reading of seed files changes what ingest produces.
READER_VERSION = "4"


def stage_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def run_name(config: RunConfig) -> str:
    """The run folder's name: the config's ``name``, else the seed file's stem."""
    if config.name:
        return config.name
    stem = Path(config.seeds.rstrip("/").rsplit("/", 1)[-1]).name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "run"


def run_layout(config: RunConfig) -> RunLayout:
    """Where a run's files go: ``{output_root}/{name}``; the same name always means the same folder."""
    return RunLayout(config.output_root, run_name(config))


class EvolveSpec(BaseModel):
    """The settings an evolve shard reads (and nothing else of the config)."""

    model_config = ConfigDict(frozen=True)

    prompt_pack: str
    operation_weights: dict[str, float] | None
    random_seed: int
    prefill: bool
    llm: LLMConfig
    sampling: StageSampling
    elimination: EliminationConfig
    streaming: bool = False  # how rows are driven (orchestration.streaming): in no stage key
    template_shas: dict[str, str] | None = None  # the pack's templates when the run started (in the key already)

    @classmethod
    def of(cls, config: RunConfig) -> EvolveSpec:
        return cls(prompt_pack=config.prompt_pack, operation_weights=config.operation_weights,
                   random_seed=config.random_seed, prefill=config.prefill, llm=config.llm, sampling=config.sampling,
                   elimination=config.elimination, streaming=config.orchestration.streaming)


class RunContext(BaseModel):
    """A run, resolved once at its start; stages get the parts they need from it."""

    model_config = ConfigDict(frozen=True)

    config: RunConfig
    layout: RunLayout
    template_shas: dict[str, str]
    model: dict[str, Any]
    seeds_sha: str
    evolve: EvolveSpec
    ingest_key: str
    evolve_key: str
    benchmark_shas: tuple[str, ...] = ()  # SHA-256 of each ``mix.decontaminate`` file when the run started
    recompute: tuple[str, ...] = ()

    def forced(self, stage: str) -> bool:
        return "all" in self.recompute or stage in self.recompute

    def evolve_shard_key(self, pool_sha: str, round_index: int) -> str:
        return stage_key("evolve", self.evolve_key, pool_sha, round_index)

    def mix_key(self, input_shas: list[str]) -> str:
        c = self.config
        # without decontamination the key is what it was before the option existed: earlier mixes are reused
        mix = c.mix.model_dump(mode="json", exclude=None if c.mix.decontaminate else {"decontaminate"})
        return stage_key("mix", input_shas, c.dedup.model_dump(mode="json"), mix, c.random_seed, c.rounds,
                         *([self.benchmark_shas] if self.benchmark_shas else []))


def seeds_content_sha(uri: str, settings: StorageSettings | None = None) -> str:
    fs, path = resolve(uri, settings)
    with fs.open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


STAGES = ("ingest", "mix", "export", "all")


def check_recompute(recompute: tuple[str, ...], rounds: int) -> None:
    """Stage names a user may force: ingest, round=K (1..rounds), mix, export, all."""
    valid = set(STAGES) | {f"round={k}" for k in range(1, rounds + 1)}
    if bad := [s for s in recompute if s not in valid]:
        raise ValueError(f"unknown stage(s) to recompute {bad}: use ingest, round=1..round={rounds}, mix, export "
                         "or all")
