"""The shapes of an instruction's text that the rules must read as data, not as prose: fenced blocks, code
listings, tables and markup (where repetition is normal), and lists of options (which end where their last
option ends)."""

from __future__ import annotations

import re

from tasks.core.text import normalize_text

_FENCE = re.compile(r"^\s*(```|~~~)")
# A line of code, a table or markup: indented, ending in code punctuation, a table row (a "|" or a tab), a tag,
# a comment or a preprocessor line.
_DATA_LINE = re.compile(r"^[ \t]|[;{}()\[\]]\s*$|[|\t]|^\s*(?:<|//|/\*|\*/|#\S)")
# A list item's marker at the start of a line: "- ", "* ", "1. ", "2) ", "(b) ", "c. ".
_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\(?(?:\d{1,2}|[A-Za-z])[.)])\s+")
# An option inside a line: "A) ...", "(B) ...", "c. ..." after the line's start or a space.
_OPTION = re.compile(r"(?:^|\s)\(?([A-Ha-h])[.)]\s+\S")


def prose_lines(text: str) -> list[str]:
    """The text's lines of prose, normalised (``normalize_text``) and without list markers: every line but the
    blank ones, those inside fenced blocks, and lines of code, tables or markup (``_DATA_LINE``)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or not line.strip() or _DATA_LINE.search(line):
            continue
        lines.append(normalize_text(_ITEM.sub("", line, count=1)))
    return [line for line in lines if any(ch.isalpha() for ch in line)]


def has_open_fence(text: str) -> bool:
    """A fenced block opens and never closes (an odd number of fence lines): the text broke off inside it."""
    return sum(1 for line in text.splitlines() if _FENCE.match(line)) % 2 == 1


def starts_with_code(text: str) -> bool:
    """The text's first line opens a fenced block or is a line of code, a table or markup."""
    first = text.lstrip("\n").split("\n", 1)[0]
    return bool(_FENCE.match(first) or _DATA_LINE.search(first))


def ends_a_list(text: str) -> bool:
    """The text ends on a list's last item: its last line is an item after another item ("- Ham mayo"), or it
    holds two or more options in order ("A) 01, 56 ... D) None of these")."""
    lines = [line for line in text.rstrip().splitlines() if line.strip()]
    if not lines:
        return False
    if len(lines) >= 2 and _ITEM.match(lines[-1]) and _ITEM.match(lines[-2]):
        return True
    letters = [m.lower() for m in _OPTION.findall(lines[-1])]
    return len(letters) >= 2 and all(ord(b) == ord(a) + 1 for a, b in zip(letters, letters[1:], strict=False))
