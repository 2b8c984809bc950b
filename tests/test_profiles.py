"""Elimination profiles and rule switches: which rules a config runs, and how a row's steps obey them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prompts import load_pack
from tasks.core.config import EliminationConfig, SamplingParams
from tasks.core.elimination import PROFILES, RULE_NAMES, SMALL_MODEL_GUARDS, VALIDITY_TEXT_RULES
from tasks.judge.equality import EQUALITY_CHOICES, equality_request
from tasks.judge.validity import validity_rule_reason

PAPER = {"empty_evolution", "evolution_truncated", "scaffolding_copied", "empty_response", "response_truncated",
         "sorry_short_response", "stopwords_only_response", "no_information_gain"}


def test_profiles():
    assert PROFILES["paper"] == PAPER
    assert PROFILES["small-model"] == set(RULE_NAMES) and len(RULE_NAMES) == 17
    assert SMALL_MODEL_GUARDS == {"copies_parent"}
    assert PROFILES["default"] == PAPER | set(VALIDITY_TEXT_RULES) - SMALL_MODEL_GUARDS | {"not_an_instruction"}
    assert PROFILES["small-model"] - PROFILES["default"] == SMALL_MODEL_GUARDS
    assert EliminationConfig().profile == "default" and EliminationConfig().enabled_rules() == PROFILES["default"]


def test_small_model_rejects_what_default_keeps():
    """The tiny-model guard on a real evolution and on a known failure of the bundled model, both from the
    public corpus: a real rewrite that adds two words ("using recursion") and a copy of the parent with a space
    added. Default keeps both (the equality judge decides); small-model rejects both."""
    from tests.rules_corpus import load_corpus, rejecting_rules

    rows = {r["id"]: r for r in load_corpus()}
    real, copy = rows["pair-code-07"], rows["bad-45"]
    assert real["set"] == "good" and real["instruction"] == real["parent"][:-1] + " using recursion."
    assert copy["instruction"] == "What is 37 multiplied by 24 ?"
    for row in (real, copy):
        assert rejecting_rules(row, EliminationConfig()) == set()
        assert rejecting_rules(row, EliminationConfig(profile="small-model")) == {"copies_parent"}
        assert validity_rule_reason(row["instruction"], row["parent"], row["kind"], 0.5, enabled=frozenset(
            PROFILES["small-model"])) == "copies_parent"
    # switching the validity check on does not bring the guard into default; the rule's own switch does
    assert not EliminationConfig(validity_check=True).uses("copies_parent")
    assert EliminationConfig(rules={"copies_parent": True}).uses("copies_parent")


def test_each_rule_has_a_switch_over_the_profile_and_the_judges_keep_theirs():
    cfg = EliminationConfig(profile="paper", rules={"answers_parent": True, "sorry_short_response": False})
    assert cfg.enabled_rules() == PAPER - {"sorry_short_response"} | {"answers_parent"}
    assert not EliminationConfig(validity_check=False).enabled_rules() & {*VALIDITY_TEXT_RULES, "not_an_instruction"}
    assert EliminationConfig(profile="paper", validity_check=True).uses("degenerate_evolution")
    assert not EliminationConfig(equality_check=False).uses("no_information_gain")
    # an explicit rule wins over a judge's switch
    assert EliminationConfig(validity_check=False, rules={"answers_parent": True}).enabled_rules() & set(
        VALIDITY_TEXT_RULES) == {"answers_parent"}
    with pytest.raises(ValidationError, match="unknown elimination rule"):
        EliminationConfig(rules={"answer_parent": False})
    with pytest.raises(ValidationError):
        EliminationConfig(profile="strict")


def test_a_switched_off_validity_rule_lets_its_rows_through():
    parent = "Write a haiku about a lighthouse standing alone on a cliff during a storm at night."
    assert validity_rule_reason("It's a haiku about a lighthouse.", parent, "in_depth", 0.5) == "answers_parent"
    rest = frozenset(VALIDITY_TEXT_RULES) - {"answers_parent"}
    assert validity_rule_reason("It's a haiku about a lighthouse.", parent, "in_depth", 0.5, enabled=rest) == (
        "shorter_than_parent")
    assert validity_rule_reason("#", parent, "in_depth", 0.5, enabled=frozenset()) is None


def test_the_paper_profile_asks_equality_in_free_text():
    pack, params = load_pack("general"), SamplingParams(max_tokens=8)
    assert EliminationConfig(profile="paper").paper_equality and not EliminationConfig().paper_equality
    ours, forced = equality_request(pack, "Name a colour.", "Name a warm colour.", params)
    assert forced.choices == EQUALITY_CHOICES and "Here are two instructions to an AI assistant." in ours[-1]["content"]
    papers, free = equality_request(pack, "Name a colour.", "Name a warm colour.", params, paper=True)
    assert free.choices is None
    assert papers[-1]["content"].strip().endswith(
        "Here are two Instructions to ChatGPT AI, do you think they are equal to each other, which meet the following "
        "requirements:\n1. They have same constraints and requirments.\n2. They have same depth and breadth of the "
        "inquiry.\nThe First Prompt: Name a colour.\nThe Second Prompt: Name a warm colour.\nYour Judgement (Just "
        "answer: Equal or Not Equal. No need to explain the reason.):")
