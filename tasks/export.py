"""Exports of the final data: Parquet (canonical), Alpaca JSON, chat ``messages`` JSONL, a dataset card with
its plots (``export/plots/*.png``)."""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from prefect import task
from prefect.states import Completed
from pydantic import BaseModel

from storage import RunLayout, StorageSettings, read_shard, resolve
from storage.shards import write_file_atomic
from tasks.context import content_key
from tasks.core.config import STAGES, RunConfig
from tasks.core.text import md_table, parent_text
from tasks.estimate import Estimate, estimate_markdown
from tasks.mix import MixSummary
from tasks.plots import PLOTS, plot_kind, run_plots
from tasks.round import RoundSummary, totals

EXPORT_COLUMNS = [
    "id", "root_id", "parent_id", "round", "operation", "instruction", "input", "response", "model",
    "prompt_sha", "response_prompt_sha", "prompt_tokens", "completion_tokens", "finish_reason", "meta",
]


# Settings that do not shape the data: kept out of the card, so changing them leaves the exports as they are.
CARD_EXCLUDES = {"orchestration", "train", "output_root"}


class ExportSummary(BaseModel):
    """Where the exports are, with their row count and hashes."""

    rows: int
    files: dict[str, str]  # kind -> URI
    sha256: dict[str, str]  # kind -> SHA-256 of the file
    reused: bool = False


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


def _model_lines(config: RunConfig) -> list[str]:
    """One line when every stage uses the same model, else one line per stage (evolve, respond, judge)."""
    stages = {stage: config.llm.for_stage(stage) for stage in STAGES}
    names = {stage: f"{c.backend}:{c.model}" for stage, c in stages.items()}
    if len(set(names.values())) == 1:
        return [f"- model: `{names['evolve']}` (evolve, respond, judge)"]
    return [f"- {stage} model: `{name}`" for stage, name in names.items()]


def dataset_card(config: RunConfig, data_key: str, template_shas: dict[str, str],
                 rounds: list[RoundSummary], mix: MixSummary, estimate: Estimate | None = None,
                 lengths: dict[str, float] | None = None) -> str:
    """A Markdown dataset card: counts per round and operation, rejections, instruction lengths, the plots
    (``plots/*.png`` next to it), the estimate made when the run started beside the actual tokens, config,
    model, prompts.

    It holds no wall-clock figures, so the same data (and estimate) always gives the same card."""
    lines = [f"# Evol-Instruct data: {config.name or data_key}", "",
             f"- data key: `{data_key}`", *_model_lines(config), f"- prompt pack: `{config.prompt_pack}`",
             f"- rows: {mix.final}", "", "## Rounds", ""]
    lines += md_table(["round", "pool in", "evolved", "carried", "prompt tokens", "completion tokens"],
                      [[r.round, r.pool_in, r.evolved, r.carried, r.prompt_tokens, r.completion_tokens]
                       for r in rounds])
    rejected = totals(rounds, "rejected")
    lines += ["", "## Rejections by reason", "",
              *(md_table(["reason", "rows"], rejected.items()) if rejected else ["No evolution was rejected."])]
    lines += ["", "## Plots", ""]
    for name, title in PLOTS.items():
        lines += [f"![{title}](plots/{name})", ""]
    lines += md_table(["instructions", "mean length (words)"], [[k, f"{v:g}"] for k, v in (lengths or {}).items()])
    lines += ["", "## Final data", "", *md_table(["round", "rows"], mix.by_round.items())]
    lines += ["", *md_table(["operation", "rows"], mix.by_operation.items())]
    lines += ["", f"Dropped while mixing: {mix.no_response} without a response, "
              f"{mix.near_duplicates} near duplicates, {mix.sampled_out} sampled out.", ""]
    lines += estimate_markdown(estimate, rounds) if estimate is not None else []
    lines += ["## Prompt templates", "",
              *md_table(["template", "sha"], [[k, f"`{v}`"] for k, v in sorted(template_shas.items())])]
    lines += ["", "## Configuration", "", "```yaml",
              yaml.safe_dump(config.model_dump(mode="json", exclude=CARD_EXCLUDES), sort_keys=True).rstrip(),
              "```", ""]
    return "\n".join(lines)


def export_key(mix: MixSummary, card: bytes) -> str:
    """What the exports depend on: the final shard and the dataset card."""
    return content_key("export", mix.final_sha256, hashlib.sha256(card).hexdigest())


def export_final(layout: RunLayout, config: RunConfig, data_key: str,
                 template_shas: dict[str, str], rounds: list[RoundSummary], mix: MixSummary, force: bool = False,
                 settings: StorageSettings | None = None, estimate: Estimate | None = None,
                 lengths: dict[str, float] | None = None) -> ExportSummary:
    """Write every export under ``{run}/export/`` (the plots under ``export/plots/``), then ``_export.json``;
    reused when the final shard and the card are what the last export was made from and every file still has
    its recorded SHA-256. ``lengths``: mean instruction length by round (``tasks.report``), for the card and
    its plot."""
    card = dataset_card(config, data_key, template_shas, rounds, mix, estimate, lengths).encode()
    key = export_key(mix, card)
    marker_uri = layout.file("export", "_export.json")
    if not force:
        reused = reusable_export(marker_uri, key, settings)
        if reused is not None:
            return reused
    table = export_table(mix.final_uri, mix.final_sha256, settings)
    payloads = {
        "parquet": ("data.parquet", to_parquet_bytes(table)),
        "alpaca": ("alpaca.json", to_alpaca_bytes(table)),
        "messages": ("messages.jsonl", to_messages_bytes(table)),
        "card": ("README.md", card),
        **{plot_kind(name): (f"plots/{name}", png) for name, png in run_plots(rounds, lengths or {}).items()},
    }
    files, hashes = {}, {}
    for kind, (name, data) in payloads.items():
        uri = layout.file("export", *name.split("/"))
        hashes[kind] = write_file_atomic(uri, data, settings)
        files[kind] = uri
    summary = ExportSummary(rows=table.num_rows, files=files, sha256=hashes)
    write_file_atomic(marker_uri, json.dumps({"key": key, "summary": summary.model_dump()}).encode(), settings)
    return summary


def reusable_export(marker_uri: str, key: str, settings: StorageSettings | None) -> ExportSummary | None:
    fs, path = resolve(marker_uri, settings)
    try:
        record = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    if record.get("key") != key:
        return None
    summary = ExportSummary.model_validate(record["summary"])
    for kind, uri in summary.files.items():
        file_fs, file_path = resolve(uri, settings)
        try:
            if hashlib.sha256(file_fs.cat_file(file_path)).hexdigest() != summary.sha256[kind]:
                return None
        except FileNotFoundError:
            return None
    return summary.model_copy(update={"reused": True})


@task(name="export", retries=1, retry_delay_seconds=5)
def export_final_task(layout: RunLayout, config: RunConfig, data_key: str,
                      template_shas: dict[str, str], rounds: list[RoundSummary], mix: MixSummary,
                      force: bool = False, estimate: Estimate | None = None,
                      lengths: dict[str, float] | None = None) -> ExportSummary:
    """Write the exports of the final data and the card's plots (or reuse them)."""
    summary = export_final(layout, config, data_key, template_shas, rounds, mix, force, estimate=estimate,
                           lengths=lengths)
    return Completed(data=summary, name="Reused") if summary.reused else summary
