"""The equality check (the paper's first elimination rule): does the evolution bring new information? The judge
model answers the pack's ``equality`` template with one forced choice, "Equal" or "Not Equal"; a judge without
constrained decoding has its free text parsed strictly."""

from __future__ import annotations

from typing import Literal

from prompts import PromptPack
from tasks.core.config import SamplingParams
from tasks.llm.base import Completion, Conversation

# The equality check's forced choice, and what each answer means.
EQUALITY_CHOICES: tuple[str, ...] = ("Equal", "Not Equal")
EQUALITY_VERDICTS: dict[str, Literal["equal", "not_equal"]] = {"Equal": "equal", "Not Equal": "not_equal"}

_EQUALITY_EDGE = " \t\r\n\"'`*_#.,;:!?()[]{}<>~=|-\u201c\u201d\u2018\u2019"


def parse_equality(text: str | None) -> Literal["equal", "not_equal"] | None:
    """The equality check's verdict, parsed strictly: exactly "Equal" or "Not Equal", else None.

    Surrounding whitespace, quotes, markdown and punctuation ("**Equal**", "Not equal.") are ignored,
    case is ignored and inner whitespace runs are folded; anything else ("Equal or Not Equal",
    "Not equal because ...", "Unequal", "") is unparseable."""
    if text is None:
        return None
    return {"equal": "equal", "not equal": "not_equal"}.get(" ".join(text.strip(_EQUALITY_EDGE).split()).lower())


def equality_reason(parsed: str | None) -> str | None:
    """The reject reason for a parsed equality verdict: None when the evolution brought something new."""
    reasons = {"not_equal": None, "equal": "no_information_gain", None: "equality_unparseable"}
    if parsed not in reasons:
        raise ValueError(f"unknown equality verdict {parsed!r}")
    return reasons[parsed]


def equality_request(pack: PromptPack, parent: str, evolved: str, sampling: SamplingParams,
                     paper: bool = False) -> tuple[Conversation, SamplingParams]:
    """The judge's question for one evolution: the pack's messages and the sampling with the forced choice; with
    ``paper``, asked as the paper asks it: its words, and a free answer, parsed strictly by ``parse_equality``."""
    params = sampling if paper else sampling.model_copy(update={"choices": EQUALITY_CHOICES})
    return pack.equality_messages(parent, evolved, paper=paper)[0], params


def equality_result(check: Completion) -> str | None:
    """The reject reason the judge's answer gives (None: the evolution passes; ``llm_error``: no answer)."""
    if not check.ok:
        return "llm_error"
    return equality_reason(EQUALITY_VERDICTS[check.text] if check.constrained else parse_equality(check.text))
