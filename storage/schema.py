"""Explicit Arrow schemas for everything the pipeline writes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

# One instruction record: a seed, an evolved candidate (kept or rejected), with its lineage.
RECORD_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("root_id", pa.string(), nullable=False),
    pa.field("parent_id", pa.string()),
    pa.field("round", pa.int32(), nullable=False),
    pa.field("operation", pa.string(), nullable=False),
    pa.field("instruction", pa.string(), nullable=False),
    pa.field("input", pa.string(), nullable=False),
    # tasks.core.text.content_key(instruction, input), set when the record is created: exact dedup groups by
    # it and near dedup shingles it
    pa.field("content_key", pa.string(), nullable=False),
    pa.field("response", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reject_reason", pa.string()),
    pa.field("duplicate_of", pa.string()),
    pa.field("model", pa.string()),
    pa.field("prompt_sha", pa.string()),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("completion_tokens", pa.int64(), nullable=False),
    pa.field("finish_reason", pa.string()),
    pa.field("response_prompt_sha", pa.string()),
    pa.field("response_finish_reason", pa.string()),
    pa.field("raw_evolution", pa.string()),
    pa.field("equality_raw", pa.string()),
    # JSON text: the seed's source file and line, and every source field not used (same in every descendant)
    pa.field("meta", pa.string()),
    pa.field("equality_method", pa.string()),  # "constrained" (forced choice) or "text" (strict parse)
    pa.field("equality_margin", pa.float64()),  # log-probability margin of a constrained verdict
    pa.field("validity_raw", pa.string()),  # the rewrite-validity check's answer ("Yes"/"No")
    pa.field("validity_method", pa.string()),
    pa.field("validity_margin", pa.float64()),
    pa.field("respond_model", pa.string()),  # the answering stage's model ("model" is the evolving stage's)
    pa.field("judge_model", pa.string()),  # the judging stage's model (equality and validity checks)
])

# One row's scores (the scoring stage, ``scores/``): complexity among its root's variants and quality of its
# response, each the expectation over the choices 1..6 (``*_probs``: their probabilities) or, from a backend without
# log-probabilities, the chosen score (``*_method``: "expectation" or "chosen"; null: not scored), and its embedding.
SCORE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("root_id", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        pa.field("complexity", pa.float64()),
        pa.field("complexity_probs", pa.list_(pa.float64())),
        pa.field("complexity_method", pa.string()),
        pa.field("quality", pa.float64()),
        pa.field("quality_probs", pa.list_(pa.float64())),
        pa.field("quality_method", pa.string()),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("score_model", pa.string()),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("completion_tokens", pa.int64(), nullable=False),
    ]
)

# Response evolution (``score.evolve_responses``): each candidate response of a row, the original first, then one
# rewrite per operation, with its template's sha, its status (``ok``; ``llm_error``, ``empty``, ``truncated``,
# ``unchanged``: not scored) and its quality score.
RESPONSE_VARIANT = pa.struct([
    pa.field("operation", pa.string(), nullable=False),  # "original" or the rewriting operation
    pa.field("response", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("prompt_sha", pa.string()),
    pa.field("quality", pa.float64()),
    pa.field("quality_probs", pa.list_(pa.float64())),
    pa.field("quality_method", pa.string()),
])
# The kept response (the best scored candidate; the original on a tie), which candidate it is and its template's sha
# (null: the original), and every candidate; ``quality`` is the kept response's. Only with response evolution, so a
# run without it writes the score shards it wrote before.
RESPONSE_EVOLUTION_FIELDS = [
    pa.field("response", pa.string()),
    pa.field("response_operation", pa.string()),
    pa.field("response_prompt_sha", pa.string()),
    pa.field("response_variants", pa.list_(RESPONSE_VARIANT)),
]


def score_schema(evolve_responses: bool) -> pa.Schema:
    """The score shards' schema: ``SCORE_SCHEMA``, with response evolution's fields when ``evolve_responses``."""
    return pa.schema([*SCORE_SCHEMA, *RESPONSE_EVOLUTION_FIELDS]) if evolve_responses else SCORE_SCHEMA


# A row of input that could not be used, kept with where it came from and why.
REJECTED_INPUT_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("line", pa.int64(), nullable=False),
    pa.field("field", pa.string()),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
    pa.field("duplicate_of", pa.string()),
    pa.field("raw", pa.string(), nullable=False),
])

# What a record row leaves out: None where the schema allows it, else no tokens counted.
RECORD_DEFAULTS = {**{f.name: None for f in RECORD_SCHEMA if f.nullable}, "prompt_tokens": 0, "completion_tokens": 0}


def records_table(rows: list[dict], schema: pa.Schema = RECORD_SCHEMA) -> pa.Table:
    """Rows (dicts) as a table of ``schema``; missing optional fields take their defaults."""
    defaults = RECORD_DEFAULTS if schema is RECORD_SCHEMA else {}
    columns = {f.name: [row.get(f.name, defaults.get(f.name)) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def count_values(column: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """How often each non-null value occurs in a column, by value."""
    counts = pc.value_counts(column.drop_null())
    return dict(sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)))


def require_columns(table: pa.Table | Mapping[str, object], names: Iterable[str], what: str) -> None:
    """``ValueError`` naming the columns ``what`` (a table, or columns by name) lacks, and the ones it has."""
    have = table.column_names if isinstance(table, pa.Table) else list(table)
    missing = [name for name in names if name not in have]
    if missing:
        raise ValueError(f"{what} has no column {', '.join(missing)} (its columns: {', '.join(have) or 'none'})")
