"""Exports of the final data: Parquet (canonical), Alpaca JSON, chat ``messages`` JSONL, a dataset card with
its plots (``export/plots/*.png``)."""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from storage import RunLayout, StorageSettings, join_uri, read_shard, resolve
from storage.shards import write_file_atomic
from storage.stages import load_marker, moved_folder_problem, write_marker
from tasks.core.config import RunConfig
from tasks.core.context import stage_key
from tasks.core.stage import Stage, state
from tasks.core.summaries import Estimate, ExportSummary, MixSummary, RoundSummary
from tasks.core.text import parent_text
from tasks.export.card import DATA_FILES, dataset_card
from tasks.export.plots import plot_kind, run_plots
from tasks.export.scores import ScoreBins

EXPORT_COLUMNS = [
    "id", "root_id", "parent_id", "round", "operation", "instruction", "input", "response", "model",
    "prompt_sha", "response_prompt_sha", "prompt_tokens", "completion_tokens", "finish_reason", "meta",
]


def export_table(final_uri: str, sha256: str, settings: StorageSettings | None = None) -> pa.Table:
    """The final data with the exported columns (no wall-clock fields, so exports are reproducible)."""
    return read_shard(final_uri, settings, expected={"sha256": sha256}).select(EXPORT_COLUMNS)


def to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def to_alpaca_bytes(table: pa.Table) -> bytes:
    rows = [{"instruction": r["instruction"], "input": r["input"], "output": r["response"],
             "meta": json.loads(r["meta"]) if r["meta"] else None}
            for r in table.select(["instruction", "input", "response", "meta"]).to_pylist()]
    return json.dumps(rows, ensure_ascii=False, indent=1).encode("utf-8")


def to_messages_bytes(table: pa.Table) -> bytes:
    lines = []
    for r in table.select(["id", "instruction", "input", "response"]).to_pylist():
        messages = [{"role": "user", "content": parent_text(r)}, {"role": "assistant", "content": r["response"]}]
        lines.append(json.dumps({"id": r["id"], "messages": messages}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def export_key(mix: MixSummary, card: bytes) -> str:
    """What the exports depend on: the final shard and the dataset card."""
    return stage_key("export", mix.final_sha256, hashlib.sha256(card).hexdigest())


def export_final(layout: RunLayout, config: RunConfig, data_key: str,
                 template_shas: dict[str, str], rounds: list[RoundSummary], mix: MixSummary, force: bool = False,
                 settings: StorageSettings | None = None, estimate: Estimate | None = None,
                 lengths: dict[str, float] | None = None, seeds_source: str | None = None,
                 scores: ScoreBins | None = None) -> ExportSummary:
    """Write every export under ``{run}/export/`` (the plots under ``export/plots/``), then ``_export.json``;
    reused when the final shard and the card are what the last export was made from and every file still has
    its recorded SHA-256. ``lengths``: mean instruction length by round (``tasks.export.card``), for the card and
    its plot; ``seeds_source``: the path the seed rows were read from, for the card; ``scores``: a scored run's
    score bins (``tasks.export.scores``), for the card and the score plots (the card holds every count the plots
    show, so its hash covers them)."""
    card = dataset_card(config, data_key, template_shas, rounds, mix, estimate, lengths, seeds_source,
                        scores).encode()
    key = export_key(mix, card)
    found = None if force else EXPORT.done(layout.export_marker(), key, settings)
    if found is not None:
        discard_staging(layout.file("export"), settings)  # an export killed while staging: its files go
        return found
    table = export_table(mix.final_uri, mix.final_sha256, settings)
    payloads = {
        "parquet": (DATA_FILES["default"], to_parquet_bytes(table)),
        "alpaca": ("alpaca.json", to_alpaca_bytes(table)),
        "messages": ("messages.jsonl", to_messages_bytes(table)),
        "card": ("README.md", card),
        **{plot_kind(name): (f"plots/{name}", png) for name, png in run_plots(rounds, lengths or {}, scores).items()},
    }
    files, hashes = publish_together(layout.file("export"), layout.export_marker(), payloads, settings)
    summary = ExportSummary(rows=table.num_rows, files=files, sha256=hashes)
    write_marker(layout.export_marker(), {"key": key, "summary": summary.model_dump()}, settings)
    return summary


def publish_together(export_dir: str, marker_uri: str, payloads: dict[str, tuple[str, bytes]],
                     settings: StorageSettings | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Replace the export's files as one set: each is written to ``.staging/`` first; once all are there, the
    marker and the old files go, then the staged files move in. A kill while staging leaves the old set whole; one
    while moving leaves some new files and no marker: never two sets side by side. Returns (kind -> URI, kind ->
    SHA-256); the caller writes the new marker."""
    staging = discard_staging(export_dir, settings)
    fs, staging_path = resolve(staging, settings)
    export_path, marker_path = resolve(export_dir, settings)[1], resolve(marker_uri, settings)[1]
    hashes = {kind: write_file_atomic(join_uri(staging, name), data, settings)
              for kind, (name, data) in payloads.items()}
    if fs.exists(marker_path):
        fs.rm_file(marker_path)
    for old in fs.find(export_path):
        if not old.startswith(staging_path + "/"):
            fs.rm_file(old)
    files = {}
    for kind, (name, _) in payloads.items():
        target = f"{export_path}/{name}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.mv(f"{staging_path}/{name}", target)
        files[kind] = join_uri(export_dir, *name.split("/"))
    discard_staging(export_dir, settings)
    return files, hashes


def discard_staging(export_dir: str, settings: StorageSettings | None = None) -> str:
    """Remove ``{export_dir}/.staging`` (what an export killed while staging left) if there; returns its URI."""
    staging = join_uri(export_dir, ".staging")
    fs, path = resolve(staging, settings)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    return staging


def read_export(marker_uri: str, key: str, settings: StorageSettings | None = None,
                problems: list[str] | None = None) -> dict | None:
    """The export marker written under ``key``, when every file it names is in its run folder and still has its
    recorded SHA-256; why not is appended to ``problems``."""
    problems = [] if problems is None else problems
    record = load_marker(marker_uri, key, settings, problems)
    if record is None:
        return None
    summary = record["summary"]
    moved = moved_folder_problem(marker_uri, list(summary["files"].values()))
    if moved:
        problems.append(moved)
        return None
    for kind, uri in summary["files"].items():
        file_fs, file_path = resolve(uri, settings)
        try:
            changed = hashlib.sha256(file_fs.cat_file(file_path)).hexdigest() != summary["sha256"][kind]
        except FileNotFoundError:
            problems.append(f"export {uri} is missing: writing the exports again")
            return None
        if changed:
            problems.append(f"export {uri} differs from the file recorded (its SHA-256 changed): "
                            "writing the exports again")
            return None
    return record


EXPORT = Stage("export", ExportSummary, RunLayout.export_marker, read=read_export)


@task(name="export", retries=1, retry_delay_seconds=5)
def export_final_task(layout: RunLayout, config: RunConfig, data_key: str,
                      template_shas: dict[str, str], rounds: list[RoundSummary], mix: MixSummary,
                      force: bool = False, estimate: Estimate | None = None,
                      lengths: dict[str, float] | None = None, seeds_source: str | None = None,
                      scores: ScoreBins | None = None) -> ExportSummary:
    """Write the exports of the final data and the card's plots (or reuse them)."""
    return state(export_final(layout, config, data_key, template_shas, rounds, mix, force, estimate=estimate,
                              lengths=lengths, seeds_source=seeds_source, scores=scores))
