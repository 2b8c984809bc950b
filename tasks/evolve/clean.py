"""Cleaning of an evolved instruction: strip the scaffolding echoes a model wraps around its answer.

Only the edges are touched: a leading label (``#Rewritten Prompt#:``, ``**New prompt:**``, ...), quotes or
backticks around the whole text, and outer whitespace. Scaffolding words inside the text are left alone:
eliminating such an evolution is a rule of the elimination stage, not a repair made here.
"""

from __future__ import annotations

import re

_EMPHASIS = r"(?:\*\*|__|\*|_)"
# A label: optional markdown header, optional emphasis, optional "#...#" wrapping, the label words, and
# then a colon, or the end of its line. "Here is the rewritten prompt:" is the chatty variant of the same.
_LABEL_RE = re.compile(
    rf"""
    \A
    (?:\#{{1,6}}[ \t]+)?
    {_EMPHASIS}?[ \t]*
    (?:(?:here\s+is|here's|below\s+is)\s+(?:the|a|my)\s+)?
    (?P<open>\#)?[ \t]*
    (?P<words>(?:rewritten|created|new)[ \t]+(?:prompt|instruction))
    [ \t]*(?P<close>\#)?
    [ \t]*{_EMPHASIS}?
    [ \t]*(?P<colon>:)?
    [ \t]*{_EMPHASIS}?
    [ \t]*
    (?P<end>\r?\n|\Z)?
    """,
    re.IGNORECASE | re.VERBOSE,
)
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}
# A fence with no language tag around everything is the model's wrapping; with a tag it is likely real code.
_BARE_FENCE_RE = re.compile(r"\A```[ \t]*\n(?P<body>.*)\n[ \t]*```\Z", re.DOTALL)


def strip_label(text: str) -> str:
    """Remove one leading scaffolding label; text that only starts with similar words is returned unchanged."""
    match = _LABEL_RE.match(text)
    if match is None:
        return text
    is_label = match["colon"] or (match["open"] and match["close"]) or match["end"] is not None
    if not is_label:
        return text
    return text[match.end() :].lstrip()


def strip_wrapping(text: str) -> str:
    """Remove quotes, backticks or a bare code fence that wrap the whole text (and nothing inside it)."""
    fence = _BARE_FENCE_RE.match(text)
    if fence is not None and "```" not in fence["body"]:
        return fence["body"].strip()
    if len(text) >= 2 and text[0] in _QUOTE_PAIRS and text[-1] == _QUOTE_PAIRS[text[0]]:
        opening, closing = text[0], text[-1]
        inner = text[1:-1]
        # A quote of the same kind inside means the outer pair may not belong together ('"a" and "b"').
        if opening not in inner and closing not in inner:
            return inner.strip()
    return text


def clean_evolved_instruction(text: str) -> str:
    """The evolved instruction without the labels, wrapping quotes and outer whitespace a model added.

    Rules are applied from the outside in until nothing changes, so ``**Rewritten Prompt:** "Do X."`` and
    ``"Rewritten Prompt: Do X."`` both give ``Do X.``. Code blocks, tables and the text itself are kept.
    """
    current = text.strip()
    for _ in range(8):  # each pass removes a layer; a handful covers any real output
        cleaned = strip_wrapping(strip_label(current)).strip()
        if cleaned == current:
            break
        current = cleaned
    return current


def _label_core(text: str) -> str:
    return " ".join(text.casefold().strip(" \t\r\n:").split())


def split_stops(stops: tuple[str, ...] | list[str],
                labels: list[str | None]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The stop strings for the engine, and those to apply after generation (a part of an output label).

    A model often opens its output with the label it was asked for (``#Rewritten Prompt#:``); as an engine stop
    string such a label would cut the output to nothing. Those stops are applied by :func:`cut_at_stops`,
    which skips a leading label.
    """
    cores = [_label_core(label) for label in labels if label]
    deferred = tuple(s for s in stops if _label_core(s) and any(_label_core(s) in core for core in cores))
    return tuple(s for s in stops if s not in deferred), deferred


def breaks_off(cut_text: str) -> bool:
    """Text cut at a stop string in the middle of a line that does not end a sentence there: "To create a new
    #Created Prompt#, I need ..." cut to "To create a new" (a label on a line of its own, or after a full stop,
    ends the rewrite)."""
    line = cut_text.rstrip(" \t")
    return bool(line) and not line.endswith("\n") and line[-1] not in ".?!:;)]}\"'`*"


def cut_at_stops(text: str, stops: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """``text`` cut at the first stop string that follows some content (leading labels are not content), and
    whether it was cut. Matching ignores case."""
    if not stops:
        return text, False
    body = text.lstrip()
    while True:  # skip any leading labels: they are not content
        rest = strip_label(body).lstrip()
        if rest == body:
            break
        body = rest
    start = len(text) - len(body)
    folded = text.casefold()
    cuts = []
    for stop in stops:
        pos = folded.find(stop.casefold(), start)
        while pos != -1 and not text[start:pos].strip():
            pos = folded.find(stop.casefold(), pos + 1)
        if pos != -1:
            cuts.append(pos)
    if not cuts:
        return text, False
    return text[: min(cuts)], True
