"""What a run resolves to, once: its folder, the prompt pack's template shas, the model's identity, the seeds'
content hash, and the stage key of each stage (``stage_key``).

A stage's key is the hash of exactly what it depends on, so a rerun recomputes a stage only when one of
those changed (and everything downstream, through the shas of its outputs):

- ingest: the seed file's bytes, the field map, the shard size, the reader version;
- an evolve shard: its pool shard's sha, the round, the templates, the model, sampling, elimination,
  operation weights and the run seed;
- finishing a round: its candidate shards and the shards its dedup compares against;
- a score shard (``score:``): its seed shard's and the same shard of every round's evolutions, the scoring
  templates, the scoring model, the score settings;
- mix: the seeds' and every round's evolved shards (with ``mix.selection``, the score shards), dedup and mix
  settings, the run seed, the benchmark files' bytes (``mix.decontaminate``);
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
from tasks.core.config import (
    EliminationConfig,
    LLMConfig,
    RunConfig,
    ScoreConfig,
    StageSampling,
)
from tasks.core.options import without_unset_options

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


class ScoreSpec(BaseModel):
    """The settings a score shard reads: the pack (its scoring templates), the scoring model, the score settings."""

    model_config = ConfigDict(frozen=True)

    prompt_pack: str
    llm: LLMConfig  # the ``score`` role, resolved
    score: ScoreConfig
    streaming: bool = False  # the run's engine kind (orchestration.streaming), so a shared model is one engine

    @classmethod
    def of(cls, config: RunConfig) -> ScoreSpec | None:
        if config.score is None:
            return None
        return cls(prompt_pack=config.prompt_pack, llm=config.llm.for_role("score"), score=config.score,
                   streaming=config.orchestration.streaming)


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
    score: ScoreSpec | None = None
    score_key: str = ""  # the scoring templates, model and settings; a shard's key adds its inputs

    def forced(self, stage: str) -> bool:
        return "all" in self.recompute or stage in self.recompute

    def evolve_shard_key(self, pool_sha: str, round_index: int) -> str:
        return stage_key("evolve", self.evolve_key, pool_sha, round_index)

    def score_shard_key(self, input_shas: list[str]) -> str:
        return stage_key("score", self.score_key, input_shas)

    def mix_key(self, input_shas: list[str], score_shas: list[str] | None = None) -> str:
        """Mix's key; ``score_shas`` (with ``mix.selection``) and unset later options only enter it when given, so a
        run without them keeps its key."""
        c = self.config
        # without decontamination or selection the key is what it was before they existed: earlier mixes are reused
        mix = c.mix.model_dump(mode="json", exclude=None if c.mix.decontaminate else {"decontaminate"})
        return stage_key("mix", input_shas, c.dedup.model_dump(mode="json"), without_unset_options({"mix": mix})["mix"],
                         c.random_seed, c.rounds, *([self.benchmark_shas] if self.benchmark_shas else []),
                         *([score_shas] if score_shas else []))


def seeds_content_sha(uri: str, settings: StorageSettings | None = None) -> str:
    fs, path = resolve(uri, settings)
    with fs.open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


STAGES = ("ingest", "score", "mix", "export", "all")


def check_recompute(recompute: tuple[str, ...], rounds: int) -> None:
    """Stage names a user may force: ingest, round=K (1..rounds), score, mix, export, all."""
    valid = set(STAGES) | {f"round={k}" for k in range(1, rounds + 1)}
    if bad := [s for s in recompute if s not in valid]:
        raise ValueError(f"unknown stage(s) to recompute {bad}: use ingest, round=1..round={rounds}, score, mix, "
                         "export or all")
