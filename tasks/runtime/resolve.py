"""Resolve a run once at its start: the prompt pack's template shas, each LLM role's model identity, the seeds'
content hash, and from them the stage keys (``tasks.core.context``)."""

from __future__ import annotations

from prompts import load_pack
from storage import StorageSettings
from tasks.core.config import ROLES, EnvSettings, RunConfig
from tasks.core.context import (
    READER_VERSION,
    EvolveSpec,
    RunContext,
    ScoreSpec,
    check_recompute,
    run_layout,
    seeds_content_sha,
    stage_key,
)
from tasks.core.options import without_unset_options
from tasks.mix.benchmarks import read_benchmarks


def build_context(config: RunConfig, recompute: tuple[str, ...] = (), env: EnvSettings | None = None,
                  settings: StorageSettings | None = None) -> RunContext:
    """Resolve a config once: pack, model identity, seeds hash, stage keys."""
    from tasks.llm.models import model_identity

    check_recompute(recompute, config.rounds)
    env = env or EnvSettings()
    template_shas = load_pack(config.prompt_pack).template_shas()
    model = {}
    for role in ROLES:  # each role's own model: a judge changed alone redoes the shards it judged
        llm = config.llm.for_role(role)
        model[role] = {**model_identity(llm.backend, llm.model, llm.engine_args, env.llm.models_dir),
                        "structured_outputs": llm.structured_outputs}
    seeds_sha = seeds_content_sha(config.seeds, settings)
    evolve = EvolveSpec.of(config).model_copy(update={"template_shas": template_shas})
    # the model enters the key through its identity; the rest of `llm` (per-role overrides) through `model`
    spec = evolve.model_dump(mode="json", exclude={"llm", "streaming", "template_shas"})
    score, score_key = ScoreSpec.of(config), ""
    if score is not None:
        llm, embedding_model = score.llm, score.score.embedding_model
        pack, evolving = load_pack(config.prompt_pack), score.score.evolve_responses
        identity = model_identity(llm.backend, llm.model, llm.engine_args, env.llm.models_dir)
        # unset, the embeddings' model and response evolution stay out of the key: the key a score shard had before
        # the options existed
        embedder = [model_identity(llm.backend, embedding_model, llm.engine_args, env.llm.models_dir)] \
            if embedding_model is not None else []
        responses = [pack.response_shas(evolving.operations)] if evolving is not None else []
        score_key = stage_key("score", pack.scoring_shas(), identity, llm.structured_outputs,
                              without_unset_options({"score": score.score.model_dump(mode="json")})["score"],
                              *embedder, *responses)
    decontaminate = config.mix.decontaminate  # read once now: a missing file or field stops the run before it starts
    benchmarks = read_benchmarks(decontaminate.files, settings) if decontaminate is not None else []
    return RunContext(
        score=score, score_key=score_key,
        config=config, layout=run_layout(config), template_shas=template_shas, model=model, seeds_sha=seeds_sha,
        evolve=evolve, evolve_key=stage_key("evolve", template_shas, model, spec), recompute=tuple(recompute),
        benchmark_shas=tuple(b.sha256 for b in benchmarks),
        ingest_key=stage_key("ingest", seeds_sha, config.field_map, config.ingest.csv_header, config.shard_size,
                               READER_VERSION))
