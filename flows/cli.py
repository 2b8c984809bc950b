"""The ``evol`` command line."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Evol-Instruct data pipeline: evolve, eliminate, deduplicate, export, train.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def main() -> None:
    """Evol-Instruct data pipeline."""


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _parse_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        target, sep, source = pair.partition("=")
        if not sep or not target or not source:
            _fail(f"--map takes TARGET=SOURCE (for example instruction=Instruction), got {pair!r}")
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
        _fail(str(err))
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


if __name__ == "__main__":
    app()
