"""The ``evol`` command line."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_models import models_app

app = typer.Typer(help="Evol-Instruct data pipeline: evolve, eliminate, deduplicate, export, train.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)


@app.callback()
def main() -> None:
    """Evol-Instruct data pipeline."""
    # Offline machines log an error for every telemetry attempt of the ephemeral server.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API starts a local server; on a busy 2-core machine that can take over 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _parse_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        target, sep, source = pair.partition("=")
        if not sep or not target or not source:
            fail(f"--map takes TARGET=SOURCE (for example instruction=Instruction), got {pair!r}")
        out[target.strip()] = source.strip()
    return out


@app.command()
def ingest(
    src: str = typer.Argument(..., help="Seed file: .json (array or lines), .jsonl, .csv or .parquet; local or s3://"),
    dest: str = typer.Argument(..., help="Folder for the seed shards (local, s3:// or memory://)"),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Rows per shard"),
    field_map: list[str] = typer.Option([], "--map", help="TARGET=SOURCE field mapping, e.g. instruction=Instruction"),
    rejected: str = typer.Option(None, "--rejected", help="Folder for quarantined rows (default DEST/_rejected)"),
) -> None:
    """Read seed instructions into Parquet shards; bad rows are quarantined with their reason."""
    from tasks.ingest import IngestError, ingest_seeds

    try:
        summary = ingest_seeds(src, dest, rejected, shard_size, _parse_map(field_map))
    except (IngestError, FileNotFoundError) as err:
        fail(str(err))
    console.print(f"ingested {src}")
    table = Table()
    table.add_column("what")
    table.add_column("rows", justify="right")
    table.add_row("read", str(summary.read))
    table.add_row("accepted", str(summary.accepted))
    for reason, count in summary.rejected.items():
        table.add_row(f"rejected: {reason}", str(count))
    console.print(table)
    console.print(f"{len(summary.shards)} shard(s) in {dest}")
    if summary.rejected_uri:
        console.print(f"quarantined rows: {summary.rejected_uri}")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run configuration (YAML), e.g. configs/demo.yaml"),
    rounds: int = typer.Option(None, "--rounds", min=0, help="Override the number of rounds"),
    output_root: str = typer.Option(None, "--output-root", help="Override where runs are written"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show per-round progress"),
) -> None:
    """Run the whole pipeline: ingest, evolve round after round, mix, deduplicate, export."""
    from flows.cli_run import run_command

    run_command(config, rounds, output_root, progress)


@app.command()
def deploy(
    project_dir: Path = typer.Option(Path("."), "--project-dir", help="Folder holding prefect.yaml"),
    config_uri: str = typer.Option(None, "--config-uri",
                                   help="Run config of the nightly deployment: a path in the workers' project "
                                        "folder or s3://... (default: prefect.yaml's)"),
    interval: int = typer.Option(None, "--interval", min=1, help="Also schedule the nightly deployment every N s"),
    cron: str = typer.Option(None, "--cron", help="Also schedule the nightly deployment on this cron string"),
) -> None:
    """Create the work pools prefect.yaml uses (process pools) and register its deployments on PREFECT_API_URL."""
    from flows.cli_deploy import deploy_command

    deploy_command(project_dir.resolve(), config_uri, interval, cron)


if __name__ == "__main__":
    app()
