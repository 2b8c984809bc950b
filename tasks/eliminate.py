"""Elimination evolving: the text rules (one DuckDB query), the strict equality parse, the reason names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa

from storage import duck_connect
from storage.schema import require_columns
from tasks.core.config import EliminationConfig
from tasks.validity import VALIDITY_REASONS

# The text rules in the order they are checked; the first that matches is the row's reason.
TEXT_RULE_REASONS: tuple[str, ...] = (
    "llm_error",
    "empty_evolution",
    "evolution_truncated",
    "scaffolding_copied",
    "empty_response",
    "response_truncated",
    "sorry_short_response",
    "stopwords_only_response",
)
# The equality check's forced choice, and what each answer means.
EQUALITY_CHOICES: tuple[str, ...] = ("Equal", "Not Equal")
EQUALITY_VERDICTS: dict[str, Literal["equal", "not_equal"]] = {"Equal": "equal", "Not Equal": "not_equal"}

REJECT_REASONS: tuple[str, ...] = TEXT_RULE_REASONS + VALIDITY_REASONS + (
    "no_information_gain",  # the equality check said "Equal"
    "equality_unparseable",  # the equality check said neither "Equal" nor "Not Equal"
    "duplicate",  # exact duplicate of an existing instruction (dedup)
    "near_duplicate",  # MinHash near duplicate (dedup)
)

DEFAULT_STOP_WORDS: tuple[str, ...] = tuple("""
a about above after again against all also am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each few for
from further had has hasn't have haven't having he her here hers herself him himself his how i i'd i'll i'm i've if
in into is isn't it it's its itself just let's may me might more most must my myself no nor not now of off on once
only or other our ours ourselves out over own same shall she should shouldn't so some such than that that's the
their theirs them themselves then there there's these they they're this those through to too under until up us
very was wasn't we we're were weren't what when where which while who whom why will with won't would wouldn't yes
you you're your yours yourself yourselves
""".split())

# Python's str.isspace() set, so "blank" and "words" agree with str.strip() and str.split().
_WS_CLASS = (r"\t\n\x{0b}\x{0c}\r\x{1c}-\x{1f} \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}"
             r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}")
_BLANK_RE = f"[{_WS_CLASS}]*"
_WORD_RE = f"[^{_WS_CLASS}]+"
# A token: letters/digits, with apostrophes (straight or curly) allowed inside.
_APOS = r"\x{27}\x{2019}"
_TOKEN_PY = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")

_EQUALITY_EDGE = " \t\r\n\"'`*_#.,;:!?()[]{}<>~=|-\u201c\u201d\u2018\u2019"


def parse_equality(text: str | None) -> Literal["equal", "not_equal"] | None:
    """The equality check's verdict, parsed strictly: exactly "Equal" or "Not Equal", else None.

    Surrounding whitespace, quotes, markdown and punctuation ("**Equal**", "Not equal.") are ignored,
    case is ignored and inner whitespace runs are folded; anything else ("Equal or Not Equal",
    "Not equal because ...", "Unequal", "") is unparseable.
    """
    if text is None:
        return None
    core = " ".join(text.strip(_EQUALITY_EDGE).split()).lower()
    if core == "equal":
        return "equal"
    if core == "not equal":
        return "not_equal"
    return None


def equality_reason(parsed: str | None) -> str | None:
    """The reject reason for a parsed equality verdict: None when the evolution brought something new."""
    if parsed == "not_equal":
        return None
    if parsed == "equal":
        return "no_information_gain"
    if parsed is None:
        return "equality_unparseable"
    raise ValueError(f"unknown equality verdict {parsed!r}")


def _regex_literal(word: str, fold_apostrophes: bool = True) -> str:
    """A word as an RE2 pattern matching any case of it; anything but ASCII letters and digits escaped."""
    parts = []
    for ch in word:
        if fold_apostrophes and ch in "'\u2019":
            parts.append(f"[{_APOS}]")
            continue
        forms = sorted({c for c in (ch, ch.lower(), ch.upper()) if len(c) == 1})
        escaped = "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}" for c in forms)
        parts.append(escaped if len(forms) == 1 else f"[{escaped}]")
    return "".join(parts)


def stopwords_only_pattern(stop_words: Sequence[str]) -> str:
    """An RE2 pattern that fully matches a text, in any case, whose tokens are all stop words.

    Tokens are maximal runs of letters and digits with inner apostrophes; everything else separates
    them. Each stop word must end where a token ends: at the end, before a separator, or before an
    apostrophe that is not followed by a letter or digit.
    """
    words = sorted({w.lower() for w in stop_words if _TOKEN_PY.fullmatch(w.lower())}, key=lambda w: (-len(w), w))
    sep = r"[^\pL\pN]"
    if not words:
        return f"{sep}*"
    alternatives = "|".join(_regex_literal(w) for w in words)
    word_end = rf"(?:$|[^\pL\pN{_APOS}]{sep}*|[{_APOS}](?:$|{sep}+))"
    return rf"{sep}*(?:(?:{alternatives}){word_end})*"


def _contains_any(column: str, name: str, words: Sequence[str], params: dict[str, object]) -> str:
    """SQL: ``column`` contains one of ``words``, in any case; the pattern travels as parameter ``name``.

    (A case-folded RE2 pattern scans faster than ``lower()`` plus ``contains()`` per word.)
    """
    words = [w for w in words if w]
    if not words:
        return "false"
    params[name] = "|".join(_regex_literal(w, fold_apostrophes=False) for w in words)
    return f"regexp_matches({column}, ${name})"


def text_rule_reasons(
    candidates: pa.Table, cfg: EliminationConfig, scaffolding_phrases: Sequence[str]
) -> list[str | None]:
    """One reject reason (or None: passes) per candidate row, in row order, from one DuckDB query.

    Columns used: ``instruction``, ``response``, ``finish_reason``, ``response_finish_reason`` and
    ``error``; a missing optional column counts as all null. The rules and their order are
    ``TEXT_RULE_REASONS``; word lists travel as query parameters, never inside the SQL text.
    """
    n = candidates.num_rows
    if n == 0:
        return []
    require_columns(candidates, ("instruction", "response"), "the candidates table")
    columns = {}
    for name in ("instruction", "response", "finish_reason", "response_finish_reason", "error"):
        columns[name] = candidates.column(name) if name in candidates.column_names else pa.nulls(n, pa.string())
    columns["row_index"] = pa.array(np.arange(n, dtype=np.int64))
    rows = pa.table(columns)

    phrases = cfg.scaffolding_phrases if cfg.scaffolding_phrases is not None else scaffolding_phrases
    stop_words = cfg.stop_words if cfg.stop_words is not None else DEFAULT_STOP_WORDS
    params: dict[str, object] = {
        "max_words": cfg.sorry_max_words,
        "stop_pattern": stopwords_only_pattern(stop_words),
    }
    scaffolding = _contains_any("instruction", "scaffolding_pattern", phrases, params)
    sorry = _contains_any("response", "sorry_pattern", cfg.sorry_words, params)
    codes = {reason: i for i, reason in enumerate(TEXT_RULE_REASONS)}
    query = f"""
        SELECT row_index, CASE
            WHEN error IS NOT NULL THEN {codes['llm_error']}
            WHEN instruction IS NULL OR regexp_full_match(instruction, '{_BLANK_RE}') THEN {codes['empty_evolution']}
            WHEN finish_reason = 'length' THEN {codes['evolution_truncated']}
            WHEN {scaffolding} THEN {codes['scaffolding_copied']}
            WHEN response IS NULL OR regexp_full_match(response, '{_BLANK_RE}') THEN {codes['empty_response']}
            WHEN response_finish_reason = 'length' THEN {codes['response_truncated']}
            WHEN {sorry} AND len(regexp_extract_all(response, '{_WORD_RE}')) < $max_words
                THEN {codes['sorry_short_response']}
            WHEN regexp_full_match(response, $stop_pattern) THEN {codes['stopwords_only_response']}
        END AS code
        FROM (
            SELECT row_index, CAST(instruction AS VARCHAR) AS instruction, CAST(response AS VARCHAR) AS response,
                   CAST(finish_reason AS VARCHAR) AS finish_reason, CAST(error AS VARCHAR) AS error,
                   CAST(response_finish_reason AS VARCHAR) AS response_finish_reason
            FROM candidates
        )
    """
    con = duck_connect()
    try:
        con.register("candidates", rows)
        found = con.execute(f"SELECT row_index, code FROM ({query}) WHERE code IS NOT NULL", params).fetchnumpy()
    finally:
        con.close()
    full = np.full(n, len(TEXT_RULE_REASONS), dtype=np.int64)
    full[np.asarray(found["row_index"], dtype=np.int64)] = np.asarray(found["code"], dtype=np.int64)
    lookup = np.array([*TEXT_RULE_REASONS, None], dtype=object)
    return lookup[full].tolist()
