"""The vectorised ingest path: a block parsed by Arrow, validated column-wise; ids hashed by DuckDB.

It takes a block only when the result is certain to be what the row-by-row path gives: every column
is a recognised (or mapped, top-level) target field of string type, no target is ambiguous (``input``
and ``context`` both present), and every row is good. Anything else (a bad row, an extra field that
must go to ``meta``, a nested record) sends the block to the row-by-row path. Text that Arrow and
Python could treat differently (non-ASCII, unusual whitespace) is normalised by Python, row by row.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.text import record_id
from tasks.ingest_fields import RECOGNISED, TARGET_FIELDS

_EDGE_SPACE = r"^[\t-\r\x1c-\x1f ]|[\t-\r\x1c-\x1f ]$"  # what str.strip() removes from ASCII text
_NEEDS_FOLDING = r"[\t-\r\x1c-\x1f]|  "  # where normalize_text differs from lower() on stripped ASCII text


def target_columns(names: list[str], field_map: dict[str, str]) -> dict[str, str | None] | None:
    """target -> the one column that holds it (or None); None when a column is not a target or a target is
    ambiguous."""
    out: dict[str, str | None] = {}
    for target in TARGET_FIELDS:
        if target in field_map:
            matches = [field_map[target]] if field_map[target] in names else []
        else:
            matches = [n for n in names if n.lower() in RECOGNISED[target]]
        if len(matches) > 1:
            return None
        out[target] = matches[0] if matches else None
    if set(names) - {c for c in out.values() if c}:
        return None
    return out


def _strings(column: pa.ChunkedArray | None, n: int) -> pa.Array | None:
    if column is None:
        return pa.nulls(n, pa.string())
    if pa.types.is_null(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.combine_chunks().cast(pa.string())
    return None


def _python_where(values: pa.Array, odd: pa.Array, fn) -> pa.Array:
    """``values`` with the rows flagged ``odd`` replaced by ``fn`` of them, computed in Python."""
    if not pc.any(odd).as_py():
        return values
    replacements = [fn(v) for v in values.filter(odd).to_pylist()]
    return pc.replace_with_mask(values, odd, pa.array(replacements, pa.string()))


def _strip(values: pa.Array) -> pa.Array:
    odd = pc.or_(pc.invert(pc.string_is_ascii(values)), pc.match_substring_regex(values, _EDGE_SPACE))
    return _python_where(values, odd, str.strip)


def fast_extract(table: pa.Table, field_map: dict[str, str]) -> pa.Table | None:
    """``instruction``, ``input``, ``response`` exactly as the row-by-row path makes them, or None for that path."""
    columns = target_columns(table.column_names, field_map)
    if columns is None or columns["instruction"] is None:
        return None
    n = table.num_rows
    arrays = {t: _strings(table[c] if c else None, n) for t, c in columns.items()}
    if any(a is None for a in arrays.values()) or arrays["instruction"].null_count:
        return None
    instructions = _strip(arrays["instruction"])
    if pc.any(pc.equal(instructions, "")).as_py():
        return None  # an empty instruction: the row-by-row path reports it
    inputs = _strip(pc.fill_null(arrays["input"], ""))
    return pa.table({"instruction": instructions, "input": inputs, "response": arrays["output"]})


def record_ids(table: pa.Table, con: duckdb.DuckDBPyConnection) -> pa.Array:
    """``record_id`` of every row's (instruction, input), as ``tasks.core.text`` computes it.

    DuckDB hashes ASCII text that needs no whitespace folding (its ``lower`` is then Python's); Python
    computes the key of every other row.
    """
    rows = table.select(["instruction", "input"])  # noqa: F841 (DuckDB reads it by name)
    # the pattern inlined: DuckDB compiles a constant regex once, a parameter once per row
    out = con.sql(f"""
        SELECT strlen(instruction) = length(instruction) AND strlen(input) = length(input)
                   AND NOT regexp_matches(instruction, '{_NEEDS_FOLDING}')
                   AND NOT regexp_matches(input, '{_NEEDS_FOLDING}') AS simple,
               left(sha256(CASE WHEN input = '' THEN lower(instruction)
                                ELSE lower(instruction) || chr(10) || lower(input) END), 16) AS id
        FROM rows""").to_arrow_table()
    ids = out["id"].combine_chunks()
    odd = pc.invert(out["simple"].combine_chunks())
    if pc.any(odd).as_py():
        instr, inp = table["instruction"].combine_chunks(), table["input"].combine_chunks()
        pairs = zip(instr.filter(odd).to_pylist(), inp.filter(odd).to_pylist(), strict=True)
        ids = pc.replace_with_mask(ids, odd, pa.array([record_id(a, b) for a, b in pairs], pa.string()))
    return ids


def meta_column(source_json: str, lines: pa.Array) -> pa.Array:
    """The ``meta`` text of rows that hold nothing but their target fields (see ``ingest_fields.meta_json``)."""
    return pc.binary_join_element_wise(f'{{"source": {source_json}, "line": ', lines.cast(pa.string()),
                                       ', "fields": {}}', "")
