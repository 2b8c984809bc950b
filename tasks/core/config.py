"""Configuration: environment settings (``EVOL_*``) and the frozen per-run ``RunConfig``."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage import StorageSettings
from storage.redact import redact, redact_text, remember_secrets, remember_url_credentials, url_has_credentials
from tasks.core.config_base import SamplingParams, StrictModel
from tasks.core.data_config import DedupConfig, ExportConfig, MixConfig
from tasks.core.elimination import EliminationConfig
from tasks.core.options import ScoreConfig, check_selection

ModelT = TypeVar("ModelT", bound=BaseModel)


class RedactedModel(StrictModel):
    """A config whose JSON form (``config.json``, the dataset card, Prefect's flow-run parameters) masks its secrets
    (``storage.redact``: URL credentials, ``engine_args.hf_token`` and any setting named key, token, secret or
    password); the Python object keeps them for the engines, and the process masks them in every log line."""

    @model_serializer(mode="wrap", when_used="json")
    def _redacted(self, handler: SerializerFunctionWrapHandler) -> Any:
        return redact(handler(self))

    @model_validator(mode="after")
    def _remember_secrets(self) -> Any:
        remember_secrets(self.model_dump(mode="python"))
        return self


def default_models_dir() -> str:
    """Where prepared models live unless ``EVOL_LLM__MODELS_DIR`` says: the user's cache folder,
    ``$XDG_CACHE_HOME/evol-instruct/models`` (``~/.cache/evol-instruct/models`` without an absolute XDG_CACHE_HOME),
    so the current directory never decides it."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"
    return str(base / "evol-instruct" / "models")


class LLMEnvSettings(BaseModel):
    """Where models and servers are (``EVOL_LLM__MODELS_DIR``, ``__BASE_URL``, ``__API_KEY``) and how the ``openai``
    backend talks to a server (``EVOL_LLM__REQUEST_TIMEOUT_S``, ``__MAX_RETRIES``, ``__MAX_CONCURRENCY``)."""

    models_dir: str = Field(default_factory=default_models_dir)
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: SecretStr = SecretStr("EMPTY")
    request_timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(3, ge=0)
    max_concurrency: int = Field(64, ge=1)


class EnvSettings(BaseSettings):
    """Settings read from the environment, prefix ``EVOL_``, nested sections with ``__``."""

    model_config = SettingsConfigDict(env_prefix="EVOL_", env_nested_delimiter="__", extra="ignore")

    storage: StorageSettings = Field(default_factory=StorageSettings)
    llm: LLMEnvSettings = Field(default_factory=LLMEnvSettings)
    # ``EVOL_CLUSTER``: the Dask scheduler a run's shards go to when its config names none (see OrchestrationConfig)
    cluster: str | None = Field(None, pattern=r"^(embedded|(tcp|tls|inproc)://\S+)$")


BackendName = Literal["vllm", "openai", "scripted"]
ROLES: tuple[str, ...] = ("evolve", "respond", "judge")  # the LLM roles of a round; ``score`` defaults to ``judge``


class RoleLLMConfig(RedactedModel):
    """One role's backend and model; a key left out is taken from the run's ``llm`` section."""

    backend: BackendName | None = None
    model: str | None = None
    engine_args: dict[str, Any] | None = None
    structured_outputs: bool | None = None


class LLMConfig(RedactedModel):
    """Which backend and model a run uses; ``engine_args`` go to ``vllm.LLM`` unchanged.

    ``evolve``, ``respond`` and ``judge`` may name another backend or model for that role (a strong judge, a
    cheap evolver); by default every role uses this one. ``structured_outputs`` (``openai`` backend) says
    whether the server honours vLLM's ``structured_outputs`` request field; without it yes/no judgements fall
    back to a strict text parse.
    """

    backend: BackendName = "vllm"
    model: str = "default"
    engine_args: dict[str, Any] = Field(default_factory=dict)
    structured_outputs: bool = True
    evolve: RoleLLMConfig | None = None
    respond: RoleLLMConfig | None = None
    judge: RoleLLMConfig | None = None
    score: RoleLLMConfig | None = None  # the scoring stage (``score:``): the judge's settings unless given

    def for_role(self, role: str) -> LLMConfig:
        """The backend settings of one role (``evolve``, ``respond``, ``judge``; ``score`` from the judge's)."""
        if role not in (*ROLES, "score"):
            raise ValueError(f"unknown role {role!r} (expected one of {', '.join(ROLES)}, score)")
        override = getattr(self, role)
        source = self.for_role("judge") if role == "score" else self
        base = source.model_dump(include={"backend", "model", "engine_args", "structured_outputs"})
        if override is not None:
            base.update({k: v for k, v in override.model_dump().items() if v is not None})
        return LLMConfig.model_validate(base)


class StageSampling(StrictModel):
    """Sampling per stage (the paper: temperature 1, top_p 0.95, max_tokens 2048)."""

    evolve: SamplingParams = SamplingParams()
    respond: SamplingParams = SamplingParams()
    equality: SamplingParams = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=8)
    validity: SamplingParams = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=4)


class OrchestrationConfig(StrictModel):
    """How shards are scheduled; does not change what a run produces (not in the fingerprint)."""

    max_parallel_shards: int = Field(2, ge=1)
    # Each row moves to its next stage as soon as its own step is done, the rows of every shard of a process on
    # one engine with no lock; false: each shard runs stage by stage in one batch per stage. Same outputs.
    streaming: bool = True
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(5.0, ge=0)
    min_evolved_share: float = Field(0.05, ge=0.0, le=1.0)  # a round evolving less logs a warning
    # While rows stream, the round's progress artifact and each shard's log show the rows so far at least this often.
    progress_interval_s: float = Field(5.0, gt=0)
    # Where shard tasks run: None takes ``EVOL_CLUSTER`` and else "embedded"; "embedded" = threads in the run's
    # process (max_parallel_shards of them); "tcp://host:8786" = the workers of that Dask scheduler (`evol worker`).
    cluster: str | None = Field(None, pattern=r"^(embedded|(tcp|tls|inproc)://\S+)$")

    def cluster_address(self, env_cluster: str | None = None) -> str | None:
        """The Dask scheduler address the shards go to, or None for the embedded thread runner."""
        chosen = self.cluster or env_cluster or "embedded"
        return None if chosen == "embedded" else chosen


class TrainConfig(StrictModel):
    """Fine-tuning after the export: the recipe, and the deployment (``flow-name/deployment-name``) that runs it
    on the GPU pool when it exists (otherwise the train flow runs in-process)."""

    recipe: str  # a name under recipes/ or a YAML path
    deployment: str = Field("train/gpu", pattern=r"^[^/]+/[^/]+$")
    enabled: bool = True


class IngestConfig(StrictModel):
    """How seeds are read, and how much of a seed file may be rejected before a run stops."""

    max_rejected_share: float = Field(0.5, ge=0.0, le=1.0)
    csv_header: Literal["auto"] | bool = "auto"  # auto: the first row is a header when it names a known field


NAME_MAX = 100


class RunConfig(RedactedModel):
    """Everything that decides what a run produces. Frozen; unknown keys are errors."""

    # The run folder's name: at most 100 characters keeps it (and the files named after it) within every file
    # system's 255-byte limit on a name.
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=NAME_MAX)
    seeds: str
    field_map: dict[str, str] = Field(default_factory=dict)
    ingest: IngestConfig = IngestConfig()
    output_root: str = "runs"
    rounds: int = Field(4, ge=0, le=50)
    shard_size: int = Field(1000, ge=1)
    random_seed: int = 0  # operation choice, shuffle, sampling; `seed` is its deprecated name
    prompt_pack: str = "general"
    operation_weights: dict[str, float] | None = None
    prefill: bool = True  # start the assistant's turn with the template's output label (#Rewritten Prompt#:)
    llm: LLMConfig = LLMConfig()
    sampling: StageSampling = StageSampling()
    elimination: EliminationConfig = EliminationConfig()
    dedup: DedupConfig = DedupConfig()
    mix: MixConfig = MixConfig()
    score: ScoreConfig | None = None  # the scoring stage: off unless given
    export: ExportConfig = ExportConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    train: TrainConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _old_seed_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "seed" in data:
            if "random_seed" in data:
                raise ValueError("give `random_seed` only (`seed` is its old name)")
            warnings.warn("config key `seed` is deprecated: call it `random_seed`", FutureWarning, stacklevel=2)
            data = {("random_seed" if k == "seed" else k): v for k, v in data.items()}
        return data

    @field_validator("seeds", "output_root")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        if url_has_credentials(value):
            remember_url_credentials(value)
            raise ValueError(f"{redact_text(value)}: credentials in a storage URL are not supported; give them in "
                             "EVOL_STORAGE__KEY and EVOL_STORAGE__SECRET")
        return value

    @model_validator(mode="after")
    def _selection_needs_scores(self) -> RunConfig:
        check_selection(self.mix.selection, self.score)
        return self

    @field_validator("operation_weights")
    @classmethod
    def _weights_valid(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if any(not math.isfinite(w) or w < 0 for w in (value or {}).values()):
            raise ValueError("weights must be finite and >= 0")
        if value is not None and not any(w > 0 for w in value.values()):
            raise ValueError("at least one weight must be > 0")
        return value


class ConfigError(ValueError):
    """A configuration file that can't be used; the message names the file and the keys."""


def validation_message(source: str, err: ValidationError) -> str:
    """One line per bad key: ``<file>: <key>: <what>`` (configs, training recipes, prompt pack manifests)."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def validated(model: type[ModelT], data: Any, source: str, error: type[ValueError] = ConfigError) -> ModelT:
    """A mapping validated as ``model`` (a config, a training recipe); ``error`` names ``source`` and each bad key."""
    if not isinstance(data, dict):
        raise error(f"{source}: (top level): expected a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise error(validation_message(source, err)) from None


def parse_run_config(data: Any, source: str = "<config>") -> RunConfig:
    """Validate a mapping as a RunConfig; errors name ``source`` and each bad key."""
    return validated(RunConfig, data, source)
