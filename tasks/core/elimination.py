"""The elimination rules by name, and the named profiles that switch them on (``elimination.profile``).

Every rule that can reject an evolution has a name (its reject reason) and can be switched on or off by
``elimination.rules``; a profile is the set a run starts from:

- ``paper``: exactly the paper's failure cases (WizardLM, Xu et al. 2023, section 3.3): no information gain
  (the judge's free "Equal" / "Not Equal" answer, parsed strictly, as the paper asks it), a short answer with
  "sorry", an answer of stop words and punctuation only, scaffolding words copied from the prompt; plus what
  can't be used at all: an empty or cut-off output (and exact duplicates, which dedup always drops).
- ``default``: the paper's, the rewrite-validity rules that meet the project's targets on its public corpus
  of real instructions and real parent -> evolution pairs (``tests/data/rules_corpus.jsonl``: each rule
  rejects at most 0.5% of it, all together at most 1%, code- and data-bearing rows none), and the judge's
  yes/no validity question.
- ``small-model``: every rule: the default's and the guards for tiny local models (``SMALL_MODEL_GUARDS``,
  the demo's), which cost real data: ``copies_parent`` rejects a real rewrite that adds only "using recursion",
  where a real model's equality judge is the check; a tiny model's judge lets its near-copies through.

``llm_error`` (the backend failed) and ``duplicate`` are not rules to switch: there is nothing to keep."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Rules over the evolution's own text (the evolution is not answered when one rejects it).
EVOLUTION_RULES: tuple[str, ...] = ("empty_evolution", "evolution_truncated", "scaffolding_copied")
# The rewrite-validity rules over text, in the order they are checked, then the judge's yes/no question.
VALIDITY_TEXT_RULES: tuple[str, ...] = (
    "degenerate_evolution", "unfinished_evolution", "scaffolding_fragment", "copies_prompt", "copies_parent",
    "answers_parent", "continues_parent", "shorter_than_parent",
)
# Validity rules for tiny models only: they miss the targets on the public corpus (profile small-model).
SMALL_MODEL_GUARDS: frozenset[str] = frozenset({"copies_parent"})
VALIDITY_JUDGE_RULE = "not_an_instruction"
# Rules over the answer.
RESPONSE_RULES: tuple[str, ...] = ("empty_response", "response_truncated", "sorry_short_response",
                                   "stopwords_only_response")
EQUALITY_RULE = "no_information_gain"
RULE_NAMES: tuple[str, ...] = (EVOLUTION_RULES + VALIDITY_TEXT_RULES + (VALIDITY_JUDGE_RULE,) + RESPONSE_RULES
                               + (EQUALITY_RULE,))

Profile = Literal["paper", "default", "small-model"]
_PAPER = frozenset(EVOLUTION_RULES + RESPONSE_RULES + (EQUALITY_RULE,))
PROFILES: dict[str, frozenset[str]] = {
    "paper": _PAPER,
    "default": _PAPER | (frozenset(VALIDITY_TEXT_RULES) - SMALL_MODEL_GUARDS) | {VALIDITY_JUDGE_RULE},
    "small-model": frozenset(RULE_NAMES),
}


class EliminationConfig(BaseModel):
    """Which elimination rules run (a named profile, each rule switchable) and their thresholds and word lists."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # as every part of the run's config

    profile: Profile = "default"  # paper | default | small-model (tasks/core/elimination.py)
    rules: dict[str, bool] = Field(default_factory=dict)  # a rule by name on or off, over the profile's set
    equality_check: bool | None = None  # the judge's Equal / Not Equal question; None: the profile's
    validity_check: bool | None = None  # the validity rules (true: but the small-model guards) and the judge's yes/no
    shorter_than_parent_ratio: float = Field(0.5, gt=0.0, le=1.0)  # an in-depth rewrite under this share fails
    sorry_max_words: int = Field(80, ge=1)
    sorry_words: tuple[str, ...] = ("sorry",)
    stop_words: tuple[str, ...] | None = None  # None: the built-in English list
    scaffolding_phrases: tuple[str, ...] | None = None  # None: the prompt pack's list

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, value: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(value) - set(RULE_NAMES))
        if unknown:
            raise ValueError(f"unknown elimination rule(s) {unknown}: the rules are {list(RULE_NAMES)}")
        return value

    def enabled_rules(self) -> frozenset[str]:
        """The rules this run applies: the profile's, then the two checks' switches, then ``rules``."""
        on = set(PROFILES[self.profile])
        validity = {*VALIDITY_TEXT_RULES, VALIDITY_JUDGE_RULE}
        for flag, names in ((self.equality_check, {EQUALITY_RULE}), (self.validity_check, validity)):
            if flag is not None:
                on = on | (names - SMALL_MODEL_GUARDS) if flag else on - names
        on |= {name for name, flag in self.rules.items() if flag}
        on -= {name for name, flag in self.rules.items() if not flag}
        return frozenset(on)

    def uses(self, rule: str) -> bool:
        return rule in self.enabled_rules()

    @property
    def paper_equality(self) -> bool:
        """Ask the equality question as the paper does: in its words, answered in free text and parsed strictly (the
        other profiles force the choice between "Equal" and "Not Equal" where the backend can)."""
        return self.profile == "paper"
