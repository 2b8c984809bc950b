"""Elimination evolving: the text rules (per row, Python regexes) and the names of every reject reason."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pyarrow as pa

from storage.schema import require_columns
from tasks.core.config import EliminationConfig
from tasks.core.elimination import EVOLUTION_RULES, RESPONSE_RULES, RULE_NAMES
from tasks.judge.validity import VALIDITY_REASONS

# The text rules in the order they are checked; the first that matches is the row's reason.
TEXT_RULE_REASONS: tuple[str, ...] = ("llm_error", *EVOLUTION_RULES, *RESPONSE_RULES)
RULE_FIELDS: tuple[str, ...] = ("instruction", "response", "finish_reason", "response_finish_reason", "error")

REJECT_REASONS: tuple[str, ...] = TEXT_RULE_REASONS + VALIDITY_REASONS + (
    "no_information_gain",  # the equality check said "Equal"
    "equality_unparseable",  # the equality check said neither "Equal" nor "Not Equal"
    "duplicate",  # exact duplicate of an existing instruction (dedup)
    "near_duplicate",  # MinHash near duplicate (dedup)
)

# English function words. Not "yes" nor "no": a bare yes or no is a correct answer to a classification task.
DEFAULT_STOP_WORDS: tuple[str, ...] = tuple("""
a about above after again against all also am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each few for
from further had has hasn't have haven't having he her here hers herself him himself his how i i'd i'll i'm i've if
in into is isn't it it's its itself just let's may me might more most must my myself nor not now of off on once
only or other our ours ourselves out over own same shall she should shouldn't so some such than that that's the
their theirs them themselves then there there's these they they're this those through to too under until up us
very was wasn't we we're were weren't what when where which while who whom why will with won't would wouldn't you
you're your yours yourself yourselves
""".split())

# A token: letters/digits, with apostrophes (straight or curly) allowed inside.
_TOKEN_PY = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")

def _lowered(words: Sequence[str]) -> tuple[str, ...]:
    """Words to look for in lower-cased text (empty ones dropped)."""
    return tuple(w.lower() for w in words if w)


def _stop_words(words: Sequence[str]) -> frozenset[str]:
    """The stop words that are tokens, lower-cased, curly apostrophes straightened."""
    return frozenset(w for w in (w.lower().replace("\u2019", "'") for w in words) if _TOKEN_PY.fullmatch(w))


def text_rule_reason(instruction: str | None, response: str | None, finish_reason: str | None,
                     response_finish_reason: str | None, error: str | None, max_words: int,
                     scaffolding: tuple[str, ...], sorry: tuple[str, ...], stop_words: frozenset[str],
                     enabled: frozenset[str] = frozenset(RULE_NAMES)) -> str | None:
    """The first of ``TEXT_RULE_REASONS`` in ``enabled`` (``llm_error`` always) that applies to one row, or None.

    Phrases and words (lower-cased) are looked for in the lower-cased text; blank and words are Python's
    (``str.strip``, ``str.split``); tokens are ``_TOKEN_PY``'s, with curly apostrophes straightened. A blank
    instruction or response ends the checks of its text, whether or not its rule is on."""
    if error is not None:
        return "llm_error"
    if instruction is None or not instruction.strip():
        return "empty_evolution" if "empty_evolution" in enabled else None
    if finish_reason == "length" and "evolution_truncated" in enabled:
        return "evolution_truncated"
    if scaffolding and "scaffolding_copied" in enabled and any(p in instruction.lower() for p in scaffolding):
        return "scaffolding_copied"
    if response is None or not response.strip():
        return "empty_response" if "empty_response" in enabled else None
    if response_finish_reason == "length" and "response_truncated" in enabled:
        return "response_truncated"
    low = response.lower()
    if "sorry_short_response" in enabled and any(w in low for w in sorry) and len(response.split()) < max_words:
        return "sorry_short_response"
    tokens = _TOKEN_PY.finditer(low.replace("\u2019", "'"))
    if "stopwords_only_response" in enabled and all(t.group() in stop_words for t in tokens):
        return "stopwords_only_response"
    return None


def text_rule_reasons(candidates: pa.Table | Mapping[str, Sequence[str | None]], cfg: EliminationConfig,
                      scaffolding_phrases: Sequence[str]) -> list[str | None]:
    """One reject reason (or None: passes) per candidate row, in row order (``text_rule_reason``).

    ``candidates``: a table, or its columns as lists by name. Columns used: ``RULE_FIELDS``; a missing optional
    column counts as all null."""
    require_columns(candidates, ("instruction", "response"), "the candidates table")
    phrases = cfg.scaffolding_phrases if cfg.scaffolding_phrases is not None else scaffolding_phrases
    scaffolding, sorry = _lowered(phrases), _lowered(cfg.sorry_words)
    stop_words = _stop_words(cfg.stop_words if cfg.stop_words is not None else DEFAULT_STOP_WORDS)
    if isinstance(candidates, pa.Table):
        candidates = {name: candidates.column(name).to_pylist() for name in candidates.column_names}
    n = len(candidates["instruction"])
    columns = [candidates.get(name, [None] * n) for name in RULE_FIELDS]
    enabled = cfg.enabled_rules()
    return [text_rule_reason(*fields, cfg.sorry_max_words, scaffolding, sorry, stop_words, enabled)
            for fields in zip(*columns, strict=True)]
