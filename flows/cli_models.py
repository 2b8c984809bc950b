"""``evol models``: prepare the bundled model."""

from __future__ import annotations

import typer

models_app = typer.Typer(help="Local models: prepare the bundled SmolLM2-135M-Instruct for vLLM.",
                         no_args_is_help=True)


@models_app.command()
def prepare(
    models_dir: str | None = typer.Option(None, "--models-dir",
                                   help="Where prepared models live (default: EVOL_LLM__MODELS_DIR, else models)"),
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
