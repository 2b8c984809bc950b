"""The rewrite-validity check: an evolution must be a rewritten instruction, not an answer, a continuation or junk.

A forced-choice judge accepts anything that is offered to it, so what a strict text parse of a free answer did by
accident is done here on purpose: cheap rules over the text (each with its own reject reason, checked in the order
of ``VALIDITY_RULE_REASONS``), then a constrained yes/no question to the judge model (``not_an_instruction``)."""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from prompts import PromptPack
from tasks.core.config import SamplingParams
from tasks.core.elimination import VALIDITY_TEXT_RULES
from tasks.judge.shapes import ends_a_list, has_open_fence, prose_lines, starts_with_code
from tasks.llm.base import Completion, Conversation

# Reasons of the rules over text, in the order they are checked; the LLM check's reason comes after them.
# degenerate_evolution: no words, or a loop of repeated words or lines; unfinished_evolution: under three words,
# or it breaks off mid-sentence; scaffolding_fragment: leftover pieces of the prompt's headings ("#", "#Label#");
# copies_prompt: a run of words from the evolution prompt; copies_parent: the parent with a word or two changed;
# answers_parent: an answer instead of a rewrite; continues_parent: picks up where the parent stopped;
# shorter_than_parent: an in-depth rewrite far shorter.
VALIDITY_RULE_REASONS: tuple[str, ...] = VALIDITY_TEXT_RULES
LLM_VALIDITY_REASON = "not_an_instruction"  # the judge model says the text is not an instruction
VALIDITY_UNPARSEABLE = "validity_unparseable"  # free text from a judge without constrained decoding, neither yes nor no
VALIDITY_REASONS: tuple[str, ...] = VALIDITY_RULE_REASONS + (LLM_VALIDITY_REASON, VALIDITY_UNPARSEABLE)
VALIDITY_CHOICES: tuple[str, ...] = ("Yes", "No")

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
# A heading fragment: "#Label#" (not "C#", a markdown header nor two colours "#ff0000 and #fff"), a lone run of
# "#", or a label word glued to "#".
_FRAGMENT = re.compile(
    r"#[A-Za-z](?:[A-Za-z ]{0,40}[A-Za-z])?#"  # "#Rewritten Prompt#", "#The Given Prompt#", "#Answer#"
    r"|(?:^|\s)#+(?=\s*$)"  # a "#" run ending the text or standing alone on a line
    r"|\b(?:prompt|instruction)\s*#",  # "Prompt#", "Instruction #"
    re.IGNORECASE | re.MULTILINE,
)
# How answers open: assent, a report of the result, the assistant speaking of itself.
_ANSWER_OPENERS = re.compile(
    r"""\A\W*(?:
        (?:sure|certainly|of\s+course|absolutely|okay|yes
          | the\s+(?:answer|result|solution|response)\s+(?:is|are|was))\b
      | (?:answer|solution|response|output|result)\s*:
    )""",
    re.IGNORECASE | re.VERBOSE,
)
# Openers that also begin real requests ("I have this code: ... why does it fail?", "I am applying for ... Please
# help", "Here is my code: ... Why?", "As an AI language model, can you ..."): an answer only when the text asks
# nothing (``_REQUEST``).
_STATEMENT_OPENERS = re.compile(r"\A\W*(?:i|i'm|i've|i'll|i\s+would|it\s+is|it's|here\s+(?:is|are)|here's"
                                r"|as\s+an\s+ai)\b", re.IGNORECASE)
# What makes a text a request: a question, "please", "help me", "teach me", "can you", "I need", "I want".
_REQUEST = re.compile(r"\?|\bplease\b|\b(?:help|teach|tell|show|give)\s+me\b|\b(?:can|could|would|will)\s+you\b"
                      r"|\bi\s+(?:need|want)\b|\bassist\b", re.IGNORECASE)
# A phrase loop on a line: a run of 2 to 4 words, the first with a letter, said three times back to back.
_PHRASE_LOOP = re.compile(r"\b((?=[^\W\d_])(?:\w+\W+){2,4}?)(?:\1){2,}", re.IGNORECASE)
# Words a finished sentence does not end with; a text ending in one (no closing mark) was cut off.
_DANGLING = frozenset(
    "a an the to of in on at for from with by into about as and or but nor if than that which who whose "
    "your my our their its this these those is are was were be make".split()
)
MIN_WORDS = 3
_CODE_START = re.compile(r"\A[A-Za-z_][\w.]*\s*[(=\[]")  # "f(x) = ...", "x = 3", "np.array([...])"
_CONTINUATION_OPENERS = re.compile(r"\A(?:[,;:)\]}]|\.\.\.|(?:and|or|but|so|then|because)\b)", re.IGNORECASE)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def is_degenerate(text: str) -> bool:
    """No word with a letter, or a loop in the prose (``prose_lines``: code, tables, markup and fenced blocks
    repeat their lines by nature): one word over half of 12+ words, a line repeated three times (list markers
    ignored), or a phrase of 2 to 4 words said three times in a row."""
    if not any(any(ch.isalpha() for ch in w) for w in words(text)):
        return True
    lines = prose_lines(text)
    tokens = [w.lower() for line in lines for w in words(line)]
    if len(tokens) >= 12 and max(tokens.count(w) for w in set(tokens)) > len(tokens) / 2:
        return True
    return any(lines.count(line) >= 3 for line in set(lines)) or any(_PHRASE_LOOP.search(line) for line in lines)


def is_unfinished(text: str) -> bool:
    """Under ``MIN_WORDS`` words, a fenced block that never closes, or the last line breaks off on a word no sentence
    ends with ("the", "in"), unless it is a list's last item or option ("D) None of these")."""
    tokens = words(text)
    if len(tokens) < MIN_WORDS or has_open_fence(text):
        return True
    return text.rstrip()[-1:].isalpha() and tokens[-1].lower() in _DANGLING and not ends_a_list(text)


def has_scaffolding_fragment(text: str) -> bool:
    """Leftover heading pieces: ``#Label#``, a lone ``#`` run (a markdown header keeps its text), ``Prompt#``."""
    return _FRAGMENT.search(text) is not None


MAX_CHANGED_WORDS = 2  # a rewrite that changes no more words than this is its parent


def copies_parent(text: str, parent: str, max_changed: int = MAX_CHANGED_WORDS) -> bool:
    """The text is the parent with at most ``max_changed`` words added, removed or replaced (case, spacing and
    punctuation ignored): "What is 37 multiplied by 24 ?" for "What is 37 multiplied by 24?". A guard for tiny
    models, whose equality judge lets such copies through; a real model's rewrite may add as little as "using
    recursion", so profile ``default`` leaves this to the equality judge."""
    old, new = [w.lower() for w in words(parent)], [w.lower() for w in words(text)]
    if not old:
        return False
    changes = SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in changes if tag != "equal") <= max_changed


def answers_parent(text: str) -> bool:
    """The text opens the way answers do ("Sure", "The answer is"), or as a statement ("It's 37 times 24.",
    "I would ...", "Here is ...", "As an AI ...") and asks nothing: a first-person request ("I am applying for
    ... Please help") is not an answer."""
    stripped = text.strip()
    # A text that opens with code opens where its prose does ("```python ...``` Here's how you can ...").
    lead = stripped if not starts_with_code(stripped) else next(iter(prose_lines(stripped)), "")
    if _ANSWER_OPENERS.match(lead):
        return True
    return _STATEMENT_OPENERS.match(lead) is not None and _REQUEST.search(stripped) is None


def continues_parent(text: str, parent: str, kind: str = "in_depth") -> bool:
    """The text picks up mid-sentence: it opens with a joining word or mark, or, for an in-depth rewrite, in lower
    case after a parent that does not (a formula or a call such as "f(x) = ..." is not prose)."""
    stripped = text.strip()
    if not stripped:
        return False
    if _CONTINUATION_OPENERS.match(stripped):
        return True
    if kind != "in_depth" or _CODE_START.match(stripped):
        return False
    first, parent_first = stripped[0], parent.strip()[:1]
    return first.isalpha() and first.islower() and not (parent_first.isalpha() and parent_first.islower())


def is_far_shorter(text: str, parent: str, ratio: float) -> bool:
    """Fewer than ``ratio`` times the parent's words (the paper's in-depth rewrite adds 10 to 20 words)."""
    return len(words(text)) < ratio * len(words(parent))


COPY_WINDOW = 8  # words in a row: long enough that a rewrite does not share it with a prompt by chance


def _windows(text: str, size: int) -> set[tuple[str, ...]]:
    tokens = [w.lower() for w in words(text)]
    return {tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def copies_prompt(text: str, prompt: str, parent: str, window: int = COPY_WINDOW) -> bool:
    """The text repeats ``window`` words in a row from the evolution prompt that are not in the parent."""
    return bool((_windows(text, window) & _windows(prompt, window)) - _windows(parent, window))


def validity_rule_reason(instruction: str, parent: str, kind: str, shorter_ratio: float,
                         prompt: str = "", broke_off: bool = False,
                         enabled: frozenset[str] = frozenset(VALIDITY_RULE_REASONS)) -> str | None:
    """The first rule of ``VALIDITY_RULE_REASONS`` in ``enabled`` that the evolution breaks, or None.

    ``kind`` is the operation's kind: only an in-depth rewrite must keep its parent's length. ``prompt`` is the
    evolution prompt the model was given (its text, the parent included). ``broke_off``: a stop string (the
    engine's, or an output label's after generation) ended the rewrite mid-sentence (``tasks.clean.breaks_off``),
    which makes it unfinished."""
    checks = {
        "degenerate_evolution": lambda: is_degenerate(instruction),
        "unfinished_evolution": lambda: broke_off or is_unfinished(instruction),
        "scaffolding_fragment": lambda: has_scaffolding_fragment(instruction),
        "copies_prompt": lambda: bool(prompt) and copies_prompt(instruction, prompt, parent),
        "copies_parent": lambda: copies_parent(instruction, parent),
        "answers_parent": lambda: answers_parent(instruction),
        "continues_parent": lambda: continues_parent(instruction, parent, kind),
        "shorter_than_parent": lambda: kind == "in_depth" and is_far_shorter(instruction, parent, shorter_ratio),
    }
    return next((name for name in VALIDITY_RULE_REASONS if name in enabled and checks[name]()), None)


def llm_validity_reason(verdict: str | None) -> str | None:
    """The reject reason for the judge's parsed yes/no verdict (``None`` verdict: it answered neither)."""
    reasons = {"Yes": None, "No": LLM_VALIDITY_REASON, None: VALIDITY_UNPARSEABLE}
    if verdict not in reasons:
        raise ValueError(f"unknown validity verdict {verdict!r}")
    return reasons[verdict]


def parse_yes_no(text: str | None) -> str | None:
    """A yes/no answer parsed strictly (for backends without constrained decoding): "Yes", "No" or None."""
    if text is None:
        return None
    core = text.strip(" \t\r\n\"'`*_#.,;:!?()[]").lower()
    return {"yes": "Yes", "no": "No"}.get(core)


def validity_request(pack: PromptPack, parent: str, evolved: str,
                     sampling: SamplingParams) -> tuple[Conversation, SamplingParams]:
    """The judge's yes/no question for one evolution: the pack's messages and the sampling with the forced choice."""
    return pack.validity_messages(parent, evolved)[0], sampling.model_copy(update={"choices": VALIDITY_CHOICES})


def validity_result(check: Completion) -> str | None:
    """The reject reason the judge's answer gives (None: a valid rewrite; ``llm_error``: no answer)."""
    if not check.ok:
        return "llm_error"
    return llm_validity_reason(check.text if check.constrained else parse_yes_no(check.text))
