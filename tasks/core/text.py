"""Text normalisation, defined once: the ``content_key`` a record gets when it is created, which ids, exact
dedup (grouping by the column) and near dedup (shingling it) all use."""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# Where normalize_text differs from lower() on ASCII text: what str.split() treats as whitespace (\t-\r,
# \x1c-\x1f) other than a single inner space.
_FOLDS = r"[\t-\r\x1c-\x1f]|  |^ | $"


def normalize_text(text: str) -> str:
    """Lower case, every run of whitespace (``str.isspace``: Unicode too) folded to one space, trimmed."""
    return " ".join(text.lower().split())


def content_key(instruction: str, input_text: str = "") -> str:
    key = normalize_text(instruction)
    norm_input = normalize_text(input_text or "")
    return f"{key}\n{norm_input}" if norm_input else key


def content_keys(instructions: pa.Array | pa.ChunkedArray, inputs: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``content_key`` of every row: Arrow lower-cases ASCII text that needs no folding, Python does the rest."""
    instr, inp = (pc.fill_null((c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c).cast(pa.string()), "")
                  for c in (instructions, inputs))
    keys = pc.if_else(pc.equal(inp, ""), pc.ascii_lower(instr),
                      pc.binary_join_element_wise(pc.ascii_lower(instr), pc.ascii_lower(inp), "\n"))
    odd = pc.invert(pc.and_(pc.and_(pc.string_is_ascii(instr), pc.string_is_ascii(inp)),
                            pc.invert(pc.or_(pc.match_substring_regex(instr, _FOLDS),
                                             pc.match_substring_regex(inp, _FOLDS)))))
    if not pc.any(odd).as_py():
        return keys
    pairs = zip(instr.filter(odd).to_pylist(), inp.filter(odd).to_pylist(), strict=True)
    return pc.replace_with_mask(keys, odd, pa.array([content_key(a, b) for a, b in pairs], pa.string()))


def record_id(instruction: str, input_text: str = "") -> str:
    return hashlib.sha256(content_key(instruction, input_text).encode("utf-8")).hexdigest()[:16]


def has_lone_surrogate(text: str) -> bool:
    """True when text holds bytes that were not valid UTF-8 (decoded with ``surrogateescape``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parent_text(row: dict[str, Any]) -> str:
    """An instruction as the model sees it: the instruction, then its input when there is one."""
    return f"{row['instruction']}\n{row['input']}".strip() if row.get("input") else row["instruction"]


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{' --- |' * len(header)}",
            *(f"| {' | '.join(str(v) for v in row)} |" for row in rows)]
