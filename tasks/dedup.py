"""Dedup: exact on the normalised content key, in DuckDB. Near duplicates: ``tasks.near_dedup``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from storage import StorageSettings, duck_connect, read_parquet_sql
from storage.duck import sql_list
from tasks.core.text import normalize_sql

# Text without a tab, newline, vertical tab, form feed, carriage return, double space or space at either end
# normalises to lower(text): the regexp_replace and trim, most of the cost, only run where they change something.
_NEEDS_FOLDING = r"^ |[\t\n\x0b\x0c\r]|  | $"


def _normalized_sql(column: str) -> str:
    return (f"CASE WHEN regexp_matches({column}, '{_NEEDS_FOLDING}') THEN {normalize_sql(column)} "
            f"ELSE lower({column}) END")


_INPUT = "coalesce(\"input\", '')"
# Must equal tasks.core.text.content_key: the instruction, plus a newline and the input when it is not blank.
KEY_SQL = (f"CASE WHEN {_INPUT} = '' OR {_normalized_sql(_INPUT)} = '' THEN {_normalized_sql('instruction')} "
           f"ELSE {_normalized_sql('instruction')} || chr(10) || {_normalized_sql(_INPUT)} END")

_EMPTY_DUPLICATES = pa.schema([pa.field("id", pa.string()), pa.field("duplicate_of", pa.string())])


def find_exact_duplicates(
    candidate_uris: list[str], reference_uris: list[str], settings: StorageSettings | None = None
) -> pa.Table:
    """Evolved candidates whose content key already exists: ``id``, ``duplicate_of``, ordered by id.

    A candidate duplicates a reference row (seeds, pool, earlier rounds; the earliest round, then the
    smallest id, when several share the key) or, failing that, an earlier candidate by id: the first
    by ``id`` (then file and row) survives. Rows whose status is not ``evolved`` are ignored.
    """
    if not candidate_uris:
        return _EMPTY_DUPLICATES.empty_table()
    cand_src = f"read_parquet({sql_list(candidate_uris)}, filename = true, file_row_number = true)"
    if reference_uris:
        ref_cte = (f"SELECT k, arg_min(id, {{'round': round, 'id': id}}) AS ref_id FROM "
                   f"(SELECT id, round, {KEY_SQL} AS k FROM {read_parquet_sql(reference_uris)}) GROUP BY k")
    else:
        ref_cte = "SELECT NULL::VARCHAR AS k, NULL::VARCHAR AS ref_id WHERE false"
    query = f"""
        WITH ref AS ({ref_cte}),
        cand AS (
            SELECT id, {KEY_SQL} AS k, filename, file_row_number FROM {cand_src} WHERE status = 'evolved'
        ),
        ranked AS (
            SELECT id, k, filename, file_row_number, first_value(id) OVER w AS first_id, row_number() OVER w AS rn
            FROM cand WINDOW w AS (PARTITION BY k ORDER BY id, filename, file_row_number)
        )
        SELECT ranked.id AS id, coalesce(ref.ref_id, ranked.first_id)::VARCHAR AS duplicate_of
        FROM ranked LEFT JOIN ref ON ranked.k = ref.k
        WHERE ref.ref_id IS NOT NULL OR ranked.rn > 1
        ORDER BY ranked.id, ranked.filename, ranked.file_row_number
    """
    con = duck_connect(*candidate_uris, *reference_uris, settings=settings)
    try:
        return con.sql(query).to_arrow_table().cast(_EMPTY_DUPLICATES)
    finally:
        con.close()


def exact_dedup_table(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Drop rows whose content key an earlier row (in row order) already has.

    Returns ``(kept, dropped)``: kept rows unchanged and in order; dropped rows in order with
    ``duplicate_of`` (set, or added) holding the ``id`` of the first row with that key.
    """
    n = table.num_rows
    source = pa.table({
        "instruction": table.column("instruction"),
        "input": table.column("input") if "input" in table.column_names else pa.nulls(n, pa.string()),
        "row_index": pa.array(np.arange(n, dtype=np.int64)),
    })
    con = duck_connect()
    try:
        con.register("source", source)
        found = con.execute(f"""
            SELECT row_index, first_index FROM (
                SELECT unnest(rows) AS row_index, first_index FROM (
                    SELECT min(row_index) AS first_index, list(row_index) AS rows
                    FROM source GROUP BY {KEY_SQL} HAVING count(*) > 1
                )
            ) WHERE row_index <> first_index ORDER BY row_index
        """).fetchnumpy()
    finally:
        con.close()
    dropped_rows = np.asarray(found["row_index"], dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    keep[dropped_rows] = False
    dropped = table.take(pa.array(dropped_rows))
    duplicate_of = table.column("id").take(pa.array(np.asarray(found["first_index"], dtype=np.int64)))
    if "duplicate_of" in dropped.column_names:
        position = dropped.column_names.index("duplicate_of")
        field = dropped.schema.field(position)
        dropped = dropped.set_column(position, field, duplicate_of.cast(field.type))
    else:
        dropped = dropped.append_column("duplicate_of", duplicate_of)
    return table.filter(pa.array(keep)), dropped


__all__ = ["KEY_SQL", "exact_dedup_table", "find_exact_duplicates"]
