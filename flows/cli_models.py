"""``evol models``: prepare the bundled model; and the one-line preparation a run or a plan does when it needs it."""

from __future__ import annotations

from typing import Any

import typer

from flows.cli_common import console, fail

models_app = typer.Typer(help="Local models: prepare the bundled SmolLM2-135M-Instruct for vLLM.",
                         no_args_is_help=True)


@models_app.command()
def prepare(
    models_dir: str | None = typer.Option(None, "--models-dir",
                                          help="Where prepared models live (default: EVOL_LLM__MODELS_DIR, else "
                                               "$XDG_CACHE_HOME/evol-instruct/models or "
                                               "~/.cache/evol-instruct/models)"),
) -> None:
    """Convert the bundled GGUF model into a safetensors folder (once) and print the folder."""
    from tasks.core.config import EnvSettings
    from tasks.llm.models import ModelPreparationError, prepare_default_model

    try:
        folder = prepare_default_model(models_dir or EnvSettings().llm.models_dir)
    except ModelPreparationError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(str(folder))


def prepare_for_config(config: Any) -> None:
    """Before a run or a plan: a stage on the bundled vLLM model that is not prepared yet is prepared now, said in
    one line (where, and why) instead of the conversion's progress bars; an error ends the command."""
    from tasks.core.config import ROLES, EnvSettings
    from tasks.llm.models import (
        DEFAULT_MODEL,
        ModelPreparationError,
        implicit_preparation_note,
        is_default_model_prepared,
        prepare_default_model,
    )

    stages = [config.llm.for_role(stage) for stage in ROLES]
    if not any(llm.backend == "vllm" and llm.model == DEFAULT_MODEL for llm in stages):
        return
    models_dir = EnvSettings().llm.models_dir
    if is_default_model_prepared(models_dir):
        return
    console.print(implicit_preparation_note(models_dir), soft_wrap=True, highlight=False)
    try:
        prepare_default_model(models_dir, progress=False)
    except ModelPreparationError as err:
        fail(str(err))
