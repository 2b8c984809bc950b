"""What users read in the Prefect UI: per-round tables and the final summary with text plots."""

from __future__ import annotations

from storage import RunLayout, StorageSettings, duck_connect, list_committed_shards, read_parquet_sql
from tasks.mix import MixSummary
from tasks.round import RoundSummary

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
        {"metric": "shard seconds (sum)", "value": summary.seconds},
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


def instruction_length_by_round(layout: RunLayout, rounds: int,
                                settings: StorageSettings | None = None) -> dict[str, float]:
    """Mean instruction length in words: the seeds, then each round's evolutions."""
    out: dict[str, float] = {}
    for k in range(0, rounds + 1):
        uris = list_committed_shards(layout.stage_dir(k, "pool" if k == 0 else "evolved"), settings)
        if not uris:
            continue
        con = duck_connect(*uris, settings=settings)
        mean = con.execute(
            f"SELECT avg(len(string_split(trim(instruction), ' '))) FROM {read_parquet_sql(uris)}"
        ).fetchone()[0]
        out["seeds" if k == 0 else f"round {k}"] = round(mean or 0.0, 1)
    return out


def final_markdown(run_uri: str, fingerprint: str, rounds: list[RoundSummary], mix: MixSummary,
                   lengths: dict[str, float], exports: dict[str, str]) -> str:
    """The run's final summary."""
    reasons: dict[str, float] = {}
    operations: dict[str, float] = {}
    for r in rounds:
        for k, v in r.rejected.items():
            reasons[k] = reasons.get(k, 0) + v
        for k, v in r.operations.items():
            operations[k] = operations.get(k, 0) + v
    parts = [
        f"# Evol-Instruct run `{fingerprint}`\n",
        f"Outputs: `{run_uri}`; final rows: **{mix.final}**.\n",
        "| round | pool in | evolved | carried | tokens |\n| --- | --- | --- | --- | --- |\n"
        + "".join(f"| {r.round} | {r.pool_in} | {r.evolved} | {r.carried} | "
                  f"{r.prompt_tokens + r.completion_tokens} |\n" for r in rounds),
        bar_chart("Evolved rows per round", {f"round {r.round}": r.evolved for r in rounds}),
        bar_chart("Evolved rows per operation", operations),
        bar_chart("Rejections by reason", dict(sorted(reasons.items()))),
        bar_chart("Mean instruction length (words) by round", lengths),
        "**Exports**\n\n" + "".join(f"- {k}: `{v}`\n" for k, v in exports.items()),
    ]
    return "\n".join(parts)
