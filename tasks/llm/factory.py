"""Build the backends a run's ``LLMConfig`` asks for: one per stage, shared where the stages agree."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.config import ROLES, EnvSettings, LLMConfig
from tasks.llm.base import LLMBackend


def get_backend(llm_config: LLMConfig, env: EnvSettings | None = None, streaming: bool = False) -> LLMBackend:
    """The backend for ``llm_config``: ``vllm`` (local engine, ``default`` = the bundled model), ``openai``,
    or ``scripted`` (tests and benchmarks: a responder registered under ``model``, or ``demo``).

    ``streaming``: a ``vllm`` backend runs vLLM's async engine (``AsyncLLM``) instead of the offline ``vllm.LLM``;
    the other backends serve both ways."""
    env = env or EnvSettings()
    if llm_config.backend == "vllm":
        from tasks.llm.models import resolve_model
        from tasks.llm.vllm_backend import VLLMBackend

        return VLLMBackend(resolve_model(llm_config.model, env.llm.models_dir), llm_config.engine_args,
                           streaming=streaming)
    if llm_config.backend == "openai":
        from tasks.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(llm_config.model, env.llm, structured_outputs=llm_config.structured_outputs)
    if llm_config.backend == "scripted":
        from tasks.llm.scripted import scripted_backend

        return scripted_backend(llm_config.model)
    raise ValueError(f"unknown LLM backend {llm_config.backend!r} (expected 'vllm', 'openai' or 'scripted')")


@dataclass(frozen=True)
class RoleBackends:
    """The backend of each LLM stage: evolving, answering, judging (equality and validity checks)."""

    evolve: LLMBackend
    respond: LLMBackend
    judge: LLMBackend

    @classmethod
    def single(cls, backend: LLMBackend) -> RoleBackends:
        """One backend for every stage."""
        return cls(backend, backend, backend)

    def distinct(self) -> list[LLMBackend]:
        """Each backend once, in stage order (stages with equal settings share one)."""
        return list({id(getattr(self, stage)): getattr(self, stage) for stage in ROLES}.values())

    def start(self) -> list[str]:
        """Start every backend that has an engine to start (``start()``: vLLM); returns their model names."""
        started = []
        for backend in self.distinct():
            start = getattr(backend, "start", None)
            if callable(start):
                start()
                started.append(backend.model_name)
        return started

    def model_names(self) -> dict[str, str]:
        """Stage -> the model name that stage's backend reports."""
        return {stage: getattr(self, stage).model_name for stage in ROLES}


def role_backends(llm_config: LLMConfig, env: EnvSettings | None = None, streaming: bool = False) -> RoleBackends:
    """The backends of the three stages; stages whose resolved settings are equal share one backend object."""
    built: dict[str, LLMBackend] = {}
    by_stage: dict[str, LLMBackend] = {}
    for stage in ROLES:
        resolved = llm_config.for_role(stage)
        key = resolved.model_dump_json()
        if key not in built:
            built[key] = get_backend(resolved, env, streaming)
        by_stage[stage] = built[key]
    return RoleBackends(**by_stage)
