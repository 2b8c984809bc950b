"""Text normalisation shared by ids, exact dedup (Python and DuckDB SQL) and the rules."""

from __future__ import annotations

import hashlib
import re
from typing import Any

# RE2 (DuckDB) and Python agree on this explicit class; ``\s`` differs between them.
_WS = "[ \t\n\r\f\v]+"
_WS_RE = re.compile(_WS)


def normalize_text(text: str) -> str:
    """Lower case, whitespace runs folded to one space, trimmed."""
    return _WS_RE.sub(" ", text.lower()).strip()


def normalize_sql(column: str) -> str:
    """The same normalisation as a DuckDB SQL expression over ``column``."""
    return f"trim(regexp_replace(lower({column}), '{_WS}', ' ', 'g'))"


def content_key(instruction: str, input_text: str = "") -> str:
    """Normalised instruction plus input: what exact dedup compares."""
    key = normalize_text(instruction)
    norm_input = normalize_text(input_text or "")
    return f"{key}\n{norm_input}" if norm_input else key


def record_id(instruction: str, input_text: str = "") -> str:
    """A stable id: the hash of the normalised content."""
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
