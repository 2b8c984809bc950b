"""The ``evol`` command line."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from flows.cli_common import Debug, console, err_console, fail
from flows.cli_models import models_app
from flows.cli_plan import plan
from flows.cli_run import run
from flows.cli_server import server_command
from flows.cli_train import train_command

app = typer.Typer(help="Evol-Instruct data pipeline: evolve, eliminate, deduplicate, export, train.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(models_app, name="models")


@app.callback()
def main(debug: Debug = False) -> None:
    """Evol-Instruct data pipeline."""
    from tasks.core.runlog import install_redaction

    install_redaction()
    # Offline machines log an error for every telemetry attempt of the ephemeral server.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API starts a local server; on a busy 2-core machine that can take over 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


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
    src: str = typer.Argument(..., help="Seed file: .json, .jsonl, .csv or .parquet (.gz, .zst, .bz2 too); local or s3://"),
    dest: str = typer.Argument(..., help="Folder for the seed shards (local, s3:// or memory://)"),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Rows per shard"),
    field_map: list[str] = typer.Option([], "--map", help="TARGET=SOURCE, SOURCE a field path: "
                                        "instruction=Instruction, input=instances.0.input"),
    rejected: str | None = typer.Option(None, "--rejected",
                                        help="Folder for quarantined rows (default DEST/_rejected)"),
    csv_header: str = typer.Option("auto", "--csv-header", help="CSV: auto (a header names a known or mapped "
                                   "field), yes or no"),
    max_rejected_share: float = typer.Option(0.5, "--max-rejected-share", min=0.0, max=1.0,
                                             help="Fail when more than this share of the rows is rejected"),
    debug: Debug = False,
) -> None:
    """Read seed instructions into Parquet shards; bad rows are quarantined with their reason. When no row is
    accepted or too many are rejected, no seed shard is kept (the quarantined rows are, to read why)."""
    from tasks.ingest.seeds import IngestError, check_ingest_summary, discard_seed_shards, ingest_seeds

    header = {"auto": "auto", "yes": True, "true": True, "no": False, "false": False}.get(csv_header.lower())
    if header is None:
        fail(f"--csv-header takes auto, yes or no, got {csv_header!r}")
    try:
        summary = ingest_seeds(src, dest, rejected, shard_size, _parse_map(field_map), csv_header=header)
    except (IngestError, OSError) as err:
        fail(str(err))
    console.print(f"ingested {src}", soft_wrap=True)
    table = Table()
    table.add_column("what")
    table.add_column("rows", justify="right")
    table.add_row("read", str(summary.read))
    table.add_row("accepted", str(summary.accepted))
    for reason, count in summary.rejected.items():
        table.add_row(f"rejected: {reason}", str(count))
    console.print(table)
    try:
        check_ingest_summary(summary, max_rejected_share, setting="--max-rejected-share")
    except IngestError as err:  # no stage marker here to say it failed: a kept shard would look good
        discard_seed_shards(summary)
        fail(f"{err}; no seed shard kept in {dest}")
    console.print(f"{len(summary.shards)} shard(s) in {dest}", soft_wrap=True)
    if summary.rejected_uri:
        console.print(f"quarantined rows: {summary.rejected_uri}", soft_wrap=True)


app.command()(run)
app.command()(plan)


@app.command()
def worker(
    scheduler: str = typer.Argument(..., help="The Dask scheduler, e.g. tcp://10.0.0.1:8786 (`dask scheduler`)"),
    name: str | None = typer.Option(None, "--name", help="The worker's name in the cluster, e.g. gpu0"),
    cpus: str | None = typer.Option(None, "--cpus", help="Pin the worker and its engine to these CPUs (0-3,6)"),
    gpu: str | None = typer.Option(None, "--gpu", help="The GPU ids it sees (CUDA_VISIBLE_DEVICES), e.g. 0"),
    preload: list[str] = typer.Option([], "--preload", help="A module to import in the worker at start (one that "
                                      "registers a backend, say; repeatable)"),
    warm: str | None = typer.Option(None, "--warm", help="A run config whose engines to start before any shard"),
    nanny: bool = typer.Option(True, "--nanny/--no-nanny", help="A nanny process restarts the worker if it dies"),
) -> None:
    """Start one shard worker: it takes one shard at a time from the cluster's runs and keeps its engine warm for
    its whole life. One per GPU (or per CPU slice); runs reach it with `orchestration.cluster` or EVOL_CLUSTER."""
    from tasks.runtime.worker import worker_plan

    try:
        plan = worker_plan(scheduler, name, cpus, gpu, preload, warm, nanny)
    except ValueError as err:
        fail(str(err))
    if plan.cpus:
        os.sched_setaffinity(0, plan.cpus)  # kept across exec: the worker, its engine and their children
    err_console.print(f"evol worker {name or ''} -> {scheduler} (cpus {cpus or 'all'}, gpu {gpu or '-'})",
                      soft_wrap=True, highlight=False)
    os.execve(plan.argv[0], plan.argv, plan.env)


app.command("train")(train_command)
app.command("server")(server_command)


@app.command("runs")
def runs_command(
    output_root: str = typer.Argument("runs", help="Where runs are written (a config's output_root)"),
) -> None:
    """List the runs under an output root: status, rounds done, rows, started."""
    from tasks.reporting.run_index import list_runs

    try:
        runs = list_runs(output_root)
    except (FileNotFoundError, OSError) as err:
        fail(str(err))
    table = Table(title=f"runs under {output_root}")
    for col in ("run", "status", "rounds", "rows", "started (UTC)"):
        table.add_column(col, justify="right" if col in ("rounds", "rows") else "left")
    for r in runs:
        table.add_row(r.name, r.status, f"{r.rounds_done}/{r.rounds if r.rounds is not None else '?'}",
                      "-" if r.rows is None else str(r.rows), r.started or "-")
    console.print(table)
    for r in runs:
        if r.status == "failed":
            console.print(f"{r.name}: the last attempt failed: {r.error}", soft_wrap=True, highlight=False)
    if not runs:
        console.print(f"no runs under {output_root}", soft_wrap=True)


@app.command("show")
def show_command(
    run_name: str = typer.Argument(..., help="A run's name under --output-root, or the run folder's URI"),
    output_root: str = typer.Option("runs", "--output-root", help="Where runs are written"),
) -> None:
    """Print a run's dataset card (its export/README.md)."""
    from storage.uri import join_uri
    from tasks.reporting.run_index import run_card, run_info

    uri = run_name if ("/" in run_name or "://" in run_name) else join_uri(output_root, run_name)
    try:
        card = run_card(uri)
        info = run_info(uri)
    except (FileNotFoundError, OSError) as err:
        fail(str(err))
    if info is not None and info.status == "failed":  # on stderr: the card itself stays clean on stdout
        err_console.print(f"warning: the last attempt of {uri} failed ({info.error}); this card is an earlier "
                          "attempt's", soft_wrap=True, highlight=False, markup=False)
    print(card, end="" if card.endswith("\n") else "\n")


@app.command()
def push(
    run_name: str = typer.Argument(..., help="A run's name under --output-root, or the run folder's URI"),
    repo_id: str = typer.Argument(..., help="The Hugging Face dataset repo: user/name or org/name"),
    output_root: str = typer.Option("runs", "--output-root", help="Where runs are written"),
    private: bool = typer.Option(False, "--private", help="Create the repo private (when it does not exist yet)"),
    endpoint: str | None = typer.Option(None, "--endpoint", help="Hub endpoint (default: HF_ENDPOINT, else the Hub)"),
    message: str | None = typer.Option(None, "--message", "-m", help="Commit message"),
) -> None:
    """Upload a run's export (data files, dataset card, plots) to a Hugging Face dataset repo, creating it if needed.
    The token is huggingface_hub's: HF_TOKEN, or `hf auth login`."""
    from storage.uri import join_uri
    from tasks.export.push import push_export

    uri = run_name if ("/" in run_name or "://" in run_name) else join_uri(output_root, run_name)
    try:
        pushed = push_export(uri, repo_id, private=private, endpoint=endpoint, message=message)
    except OSError as err:  # the hub's HTTP errors are OSErrors too
        fail(str(err))
    console.print(f"pushed {len(pushed.files)} files to {pushed.repo_url}: {pushed.commit_url}")


@app.command()
def deploy(
    project_dir: Path = typer.Option(Path("."), "--project-dir", help="Folder holding prefect.yaml"),
    config_uri: str | None = typer.Option(None, "--config-uri",
                                   help="Run config of the nightly deployment: a path in the workers' project "
                                        "folder or s3://... (default: prefect.yaml's)"),
    interval: int | None = typer.Option(None, "--interval", min=1,
                                        help="Also schedule the nightly deployment every N s"),
    cron: str | None = typer.Option(None, "--cron", help="Also schedule the nightly deployment on this cron string"),
) -> None:
    """Create the work pools prefect.yaml uses (process pools) and register its deployments on PREFECT_API_URL."""
    from flows.cli_deploy import deploy_command

    deploy_command(project_dir.resolve(), config_uri, interval, cron)


if __name__ == "__main__":
    app()
