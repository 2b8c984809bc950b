"""Exports of the final data: Parquet (canonical), Alpaca JSON, chat ``messages`` JSONL, a dataset card."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from prefect import task
from pydantic import BaseModel

from storage import RunLayout, StorageSettings, read_shard
from storage.shards import write_file_atomic
from tasks.core.config import RunConfig
from tasks.core.text import parent_text
from tasks.mix import MixSummary
from tasks.round import RoundSummary

EXPORT_COLUMNS = [
    "id", "root_id", "parent_id", "round", "operation", "instruction", "input", "response", "model",
    "prompt_sha", "response_prompt_sha", "prompt_tokens", "completion_tokens", "finish_reason", "meta",
]


class ExportSummary(BaseModel):
    """Where the exports are, with their row count and hashes."""

    rows: int
    files: dict[str, str]  # kind -> URI
    sha256: dict[str, str]  # kind -> SHA-256 of the file


def export_table(final_uri: str, settings: StorageSettings | None = None) -> pa.Table:
    """The final data with the exported columns (no wall-clock fields, so exports are reproducible)."""
    return read_shard(final_uri, settings).select(EXPORT_COLUMNS)


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


def dataset_card(config: RunConfig, fingerprint: str, model: str, template_shas: dict[str, str],
                 rounds: list[RoundSummary], mix: MixSummary) -> str:
    """A Markdown dataset card: counts per round and operation, rejections, config, model, prompts."""
    lines = [f"# Evol-Instruct data: {config.name or fingerprint}", "",
             f"- fingerprint: `{fingerprint}`", f"- model: `{model}`", f"- prompt pack: `{config.prompt_pack}`",
             f"- rows: {mix.final}", "", "## Rounds", "",
             "| round | pool in | evolved | carried | prompt tokens | completion tokens |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.round} | {r.pool_in} | {r.evolved} | {r.carried} | {r.prompt_tokens} | {r.completion_tokens} |"
              for r in rounds]
    reasons: dict[str, int] = {}
    for r in rounds:
        for reason, n in r.rejected.items():
            reasons[reason] = reasons.get(reason, 0) + n
    lines += ["", "## Rejections by reason", "", "| reason | rows |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in sorted(reasons.items())]
    lines += ["", "## Final data", "", "| round | rows |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in mix.by_round.items()]
    lines += ["", "| operation | rows |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in mix.by_operation.items()]
    lines += ["", f"Dropped while mixing: {mix.no_response} without a response, {mix.exact_duplicates} exact "
              f"duplicates, {mix.near_duplicates} near duplicates, {mix.sampled_out} sampled out.", "",
              "## Prompt templates", "", "| template | sha |", "| --- | --- |"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(template_shas.items())]
    lines += ["", "## Configuration", "", "```yaml",
              yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True).rstrip(), "```", ""]
    return "\n".join(lines)


def export_final(layout: RunLayout, config: RunConfig, fingerprint: str, model: str,
                 template_shas: dict[str, str], rounds: list[RoundSummary], mix: MixSummary,
                 settings: StorageSettings | None = None) -> ExportSummary:
    """Write every export under ``{run}/export/``."""
    table = export_table(mix.final_uri, settings)
    payloads = {
        "parquet": ("data.parquet", to_parquet_bytes(table)),
        "alpaca": ("alpaca.json", to_alpaca_bytes(table)),
        "messages": ("messages.jsonl", to_messages_bytes(table)),
        "card": ("README.md", dataset_card(config, fingerprint, model, template_shas, rounds, mix).encode()),
    }
    files, hashes = {}, {}
    for kind, (name, data) in payloads.items():
        uri = layout.file("export", name)
        hashes[kind] = write_file_atomic(uri, data, settings)
        files[kind] = uri
    return ExportSummary(rows=table.num_rows, files=files, sha256=hashes)


@task(name="export", retries=1, retry_delay_seconds=5)
def export_final_task(layout: RunLayout, config: RunConfig, fingerprint: str, model: str,
                      template_shas: dict[str, str], rounds: list[RoundSummary], mix: MixSummary) -> ExportSummary:
    """Write the exports of the final data."""
    return export_final(layout, config, fingerprint, model, template_shas, rounds, mix)
