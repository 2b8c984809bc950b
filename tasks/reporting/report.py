"""What users read in the Prefect UI: per-round tables and the final summary with text plots."""

from __future__ import annotations

from tasks.core.summaries import IngestSummary, MixSummary, RoundSummary, totals
from tasks.core.text import md_table

BAR_WIDTH = 40


def round_table(summary: RoundSummary) -> list[dict[str, object]]:
    """Rows of the per-round table artifact."""
    rows: list[dict[str, object]] = [
        {"metric": "pool in", "value": summary.pool_in},
        {"metric": "evolved", "value": summary.evolved},
        {"metric": "carried", "value": summary.carried},
    ]
    rows += [{"metric": f"rejected: {reason}", "value": n} for reason, n in summary.rejected.items()]
    rows += [{"metric": f"evolved by {op}", "value": n} for op, n in summary.operations.items()]
    rows += [
        {"metric": "prompt tokens", "value": summary.prompt_tokens},
        {"metric": "completion tokens", "value": summary.completion_tokens},
        {"metric": "wall seconds", "value": summary.wall_seconds},
        {"metric": "shard seconds (sum)", "value": summary.shard_seconds},
        {"metric": "shards reused", "value": summary.shards_reused},
    ]
    return rows


def bar_chart(title: str, values: dict[str, float]) -> str:
    """A horizontal bar chart as a fenced text block (renders anywhere Markdown does)."""
    if not values:
        return f"**{title}**: nothing to show\n"
    top = max(values.values()) or 1
    width = max(len(k) for k in values)
    lines = [f"{k.ljust(width)} | {'█' * max(1 if v else 0, round(BAR_WIDTH * v / top))} {v:g}"
             for k, v in values.items()]
    return f"**{title}**\n\n```\n" + "\n".join(lines) + "\n```\n"


def seeds_line(ingest: IngestSummary) -> str:
    """What became of the seed file's rows, and where the rejected ones are."""
    line = f"seeds: {ingest.read} read, {ingest.accepted} accepted"
    if ingest.rejected:  # duplicates among them (reason ``duplicate``)
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(ingest.rejected.items()))
        line += f", {sum(ingest.rejected.values())} rejected ({reasons}); quarantined rows: {ingest.rejected_uri}"
    return line


def final_markdown(run_uri: str, data_key: str, ingest: IngestSummary, rounds: list[RoundSummary],
                   mix: MixSummary, lengths: dict[str, float], exports: dict[str, str]) -> str:
    """The run's final summary."""
    parts = [
        f"# Evol-Instruct run `{run_uri}`\n",
        f"Data key `{data_key}`; final rows: **{mix.final}**.\n",
        seeds_line(ingest).capitalize() + ".\n",
        "\n".join(md_table(["round", "pool in", "evolved", "carried", "tokens"],
                           [[r.round, r.pool_in, r.evolved, r.carried, r.prompt_tokens + r.completion_tokens]
                            for r in rounds])) + "\n",
        bar_chart("Evolved rows per round", {f"round {r.round}": r.evolved for r in rounds}),
        bar_chart("Evolved rows per operation", totals(rounds, "operations")),
        bar_chart("Rejections by reason", totals(rounds, "rejected")),
        bar_chart("Mean instruction length (words) by round", lengths),
        "**Exports**\n\n" + "".join(f"- {k}: `{v}`\n" for k, v in exports.items()),
    ]
    return "\n".join(parts)


def run_links_markdown(run_id: str, run_uri: str, rounds: int, files: dict[str, str], ui_url: str | None) -> str:
    """The artifact a deployment's top-level run shows: links to the artifacts its ``evol-instruct`` subflow and
    round subflows made (the UI lists an artifact under the flow run that made it), and the run's files."""
    from tasks.reporting.monitor import artifact_key

    keys = [(artifact_key(run_id, "summary"), "the run's summary and plots")]
    for k in range(1, rounds + 1):
        keys += [(artifact_key(run_id, "round", k), f"round {k}: its table"),
                 (artifact_key(run_id, "round", k, "samples"), f"round {k}: evolved and rejected samples"),
                 (artifact_key(run_id, "round", k, "rows"), f"round {k}: the samples' rows in full"),
                 (artifact_key(run_id, "round", k, "progress"), f"round {k}: progress")]
    artifacts = md_table(["artifact", "what"], [[artifact_link(key, ui_url), what] for key, what in keys])
    outputs = md_table(["file", "uri"], [[name, f"`{uri}`"] for name, uri in sorted(files.items())])
    return "\n".join([f"# Run {run_id}", "", f"Outputs under `{run_uri}`. The artifacts below belong to this run's "
                      "subflows.", "", *artifacts, "", *outputs, ""])


def artifact_link(key: str, ui_url: str | None) -> str:
    """A Markdown link to an artifact's page in the UI (``{ui}/artifacts/key/{key}``), or its key without a UI."""
    base = (ui_url or "").rstrip("/")
    return f"[{key}]({base}/artifacts/key/{key})" if base else f"`{key}`"
