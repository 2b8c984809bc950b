"""Exact dedup of a round's candidates, in DuckDB, by the ``content_key`` column. Near duplicates:
``tasks.near_dedup``."""

from __future__ import annotations

import pyarrow as pa

from storage import StorageSettings, duck_connect, read_parquet_sql
from storage.duck import sql_list

_EMPTY_DUPLICATES = pa.schema([pa.field("id", pa.string()), pa.field("duplicate_of", pa.string()),
                               pa.field("shard", pa.int64()), pa.field("row", pa.int64())])


def find_exact_duplicates(candidate_uris: list[str], reference_uris: list[str],
                          settings: StorageSettings | None = None) -> pa.Table:
    """Evolved candidates whose content key already exists: ``id``, ``duplicate_of`` and where the candidate is
    (``shard``: its index in ``candidate_uris``, ``row``: its row there), ordered by id.

    A candidate duplicates a reference row (seeds, pool, earlier rounds; the earliest round, then the
    smallest id, when several share the key) or, failing that, an earlier candidate by id: the first
    by ``id`` (then file and row) survives. Rows whose status is not ``evolved`` are ignored."""
    if not candidate_uris:
        return _EMPTY_DUPLICATES.empty_table()
    cand_src = f"read_parquet({sql_list(candidate_uris)}, filename = true, file_row_number = true)"
    if reference_uris:
        ref_cte = (f"SELECT content_key AS k, arg_min(id, {{'round': round, 'id': id}}) AS ref_id "
                   f"FROM {read_parquet_sql(reference_uris)} GROUP BY k")
    else:
        ref_cte = "SELECT NULL::VARCHAR AS k, NULL::VARCHAR AS ref_id WHERE false"
    query = f"""
        WITH ref AS ({ref_cte}),
        ranked AS (
            SELECT id, content_key AS k, filename, file_index, file_row_number, first_value(id) OVER w AS first_id,
                   row_number() OVER w AS rn
            FROM {cand_src} WHERE status = 'evolved'
            WINDOW w AS (PARTITION BY content_key ORDER BY id, filename, file_row_number)
        )
        SELECT ranked.id AS id, coalesce(ref.ref_id, ranked.first_id)::VARCHAR AS duplicate_of,
               ranked.file_index AS shard, ranked.file_row_number AS row
        FROM ranked LEFT JOIN ref ON ranked.k = ref.k
        WHERE ref.ref_id IS NOT NULL OR ranked.rn > 1
        ORDER BY ranked.id, ranked.filename, ranked.file_row_number
    """
    con = duck_connect(*candidate_uris, *reference_uris, settings=settings)
    try:
        return con.sql(query).to_arrow_table().cast(_EMPTY_DUPLICATES)
    finally:
        con.close()
