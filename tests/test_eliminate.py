"""The elimination rules over text (per row), their order, their settings, and the equality parse."""

from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa
import pytest

from tasks.core.config import EliminationConfig
from tasks.judge.equality import equality_reason, parse_equality
from tasks.judge.rules import _TOKEN_PY, DEFAULT_STOP_WORDS, REJECT_REASONS, TEXT_RULE_REASONS, text_rule_reasons

PACK_PHRASES = ["given prompt", "rewritten prompt", "#rewritten prompt#", "created prompt", "#created prompt#"]
GOOD = {"instruction": "Explain how a hash map works.", "response": "The answer is 42.", "finish_reason": "stop",
        "response_finish_reason": "stop", "error": None}


def reasons(rows: list[dict], cfg: EliminationConfig | None = None, phrases=PACK_PHRASES) -> list[str | None]:
    full = [{**GOOD, **row} for row in rows]
    table = pa.table({name: [row[name] for row in full] for name in GOOD})
    return text_rule_reasons(table, cfg or EliminationConfig(), phrases)


def reason(cfg: EliminationConfig | None = None, **row) -> str | None:
    return reasons([row], cfg)[0]


def words(n: int, filler: str = "banana") -> str:
    return " ".join([filler] * n)


@pytest.mark.parametrize(("row", "expected"), [
    ({}, None),
    ({"error": "server said 500"}, "llm_error"),
    ({"error": ""}, "llm_error"),
    ({"instruction": None}, "empty_evolution"),
    ({"instruction": ""}, "empty_evolution"),
    ({"instruction": " \n\t\u3000\u00a0 "}, "empty_evolution"),
    ({"finish_reason": "length"}, "evolution_truncated"),
    ({"finish_reason": None}, None),
    ({"response": None}, "empty_response"),
    ({"response": "  \n "}, "empty_response"),
    ({"response_finish_reason": "length"}, "response_truncated"),
    ({"response": "I'm sorry, I can't"}, "sorry_short_response"),
    ({"response": "SORRY about that: here it is anyway"}, "sorry_short_response"),
    ({"response": "Sorry"}, "sorry_short_response"),
    ({"response": "sorry " + words(99)}, None),
    ({"response": "sorry " + words(78)}, "sorry_short_response"),  # 79 words
    ({"response": "sorry " + words(79)}, None),  # exactly 80 words is not "under 80"
    ({"response": "sorry\n\n" + "\t".join(["banana"] * 78)}, "sorry_short_response"),
    ({"response": "The, and of!"}, "stopwords_only_response"),
    ({"response": "..."}, "stopwords_only_response"),
    ({"response": "It's the"}, "stopwords_only_response"),
    ({"response": "\u2018Don\u2019t\u2019 \u2014 THE\u2026"}, "stopwords_only_response"),
    ({"response": "The answer is 42."}, None),
    ({"response": "the dogs"}, None),
    ({"response": "thee"}, None),
    ({"response": "the's"}, None),
    ({"response": "the \u00fcber"}, None),
    ({"response": "\u4f60\u597d"}, None),
    ({"response": "No."}, None),  # a correct answer to a yes/no question
    ({"response": "Yes"}, None),
    ({"response": "7"}, None),
])
def test_each_rule_keeps_and_drops(row, expected):
    assert reason(**row) == expected


@pytest.mark.parametrize("phrase", PACK_PHRASES)
def test_each_scaffolding_phrase_is_caught_case_insensitively(phrase):
    text = f"Here is the {phrase.upper()}: write a sonnet about rain."
    assert reason(instruction=text) == "scaffolding_copied"
    assert reason(instruction=f"Write a sonnet about rain ({phrase.title()}).") == "scaffolding_copied"


def test_scaffolding_needs_the_phrase_not_its_words():
    assert reason(instruction="Given a prompt, rewrite it in French.") is None
    assert reason(instruction="The prompt given to the model was created yesterday.") is None


@pytest.mark.parametrize(("row", "expected"), [
    ({"error": "boom", "instruction": "", "finish_reason": "length", "response": None}, "llm_error"),
    ({"instruction": "  ", "finish_reason": "length"}, "empty_evolution"),
    ({"finish_reason": "length", "instruction": "the given prompt"}, "evolution_truncated"),
    ({"instruction": "#Rewritten Prompt#: x", "response": None}, "scaffolding_copied"),
    ({"response": None, "response_finish_reason": "length"}, "empty_response"),
    ({"response": "sorry", "response_finish_reason": "length"}, "response_truncated"),
    ({"response": "The sorry of it."}, "sorry_short_response"),
])
def test_first_matching_rule_wins(row, expected):
    assert reason(**row) == expected


def test_thresholds_and_word_lists_are_configurable():
    ten = "sorry " + words(9)
    assert reason(response=ten) == "sorry_short_response"
    assert reason(EliminationConfig(sorry_max_words=5), response=ten) is None
    assert reason(EliminationConfig(sorry_max_words=11), response=ten) == "sorry_short_response"
    apologize = EliminationConfig(sorry_words=("I apologize", "UNFORTUNATELY"))
    assert reason(apologize, response="I Apologize, no.") == "sorry_short_response"
    assert reason(apologize, response="unfortunately not") == "sorry_short_response"
    assert reason(apologize, response="Sorry, no.") is None
    assert reason(EliminationConfig(sorry_words=()), response="Sorry, no.") is None
    fruit = EliminationConfig(stop_words=("banana", "apple", "it's"))
    assert reason(fruit, response="Banana, APPLE; it's banana!") == "stopwords_only_response"
    assert reason(fruit, response="the and of") is None
    assert reason(EliminationConfig(stop_words=()), response="the and of") is None
    assert reason(EliminationConfig(stop_words=()), response="?!") == "stopwords_only_response"


def test_config_scaffolding_phrases_override_the_pack():
    cfg = EliminationConfig(scaffolding_phrases=("#Instruction#",))
    assert reason(cfg, instruction="Given prompt: the #INSTRUCTION# is ...") == "scaffolding_copied"
    assert reason(cfg, instruction="The given prompt asks for ...") is None
    assert reasons([{"instruction": "The given prompt"}], EliminationConfig(scaffolding_phrases=()))[0] is None
    assert reasons([{"instruction": "The given prompt"}], phrases=[])[0] is None


def test_word_lists_are_parameters_not_sql():
    evil = "'; DROP TABLE candidates; --"
    cfg = EliminationConfig(scaffolding_phrases=(evil,), sorry_words=("o'brien", evil),
                            stop_words=("o'clock", "a.b", "(", "the"))
    assert reason(cfg, instruction=f"x {evil} y") == "scaffolding_copied"
    assert reason(cfg, response="O'Brien says hi") == "sorry_short_response"
    assert reason(cfg, response="O'clock, the!") == "stopwords_only_response"
    assert reason(cfg, response="a.b") is None  # "a.b" is not a token: "a" and "b" are, and aren't stop words


def test_stopword_rule_matches_python_tokenisation():
    rng = random.Random(7)
    stop = set(DEFAULT_STOP_WORDS)
    pieces = ["the", "The", "it's", "don\u2019t", "of", "and", "apple", "42", "s", "'", "\u2019", " ", "  ", ",", ".",
              "!", "-", "\n", "\u00e9t\u00e9", "thee", "''", "i", "I'M"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 7))) for _ in range(3000)]
    got = reasons([{"response": t} for t in texts], EliminationConfig(sorry_words=()))
    for text, found in zip(texts, got, strict=True):
        if not text.strip():
            assert found == "empty_response"
            continue
        tokens = _TOKEN_PY.findall(text.lower().replace("\u2019", "'"))
        expected = "stopwords_only_response" if all(t in stop for t in tokens) else None
        assert found == expected, (text, tokens)


def test_order_is_kept_over_a_thousand_rows():
    kinds = [({}, None), ({"error": "e"}, "llm_error"), ({"instruction": " "}, "empty_evolution"),
             ({"finish_reason": "length"}, "evolution_truncated"), ({"instruction": "The Created Prompt"},
             "scaffolding_copied"), ({"response": None}, "empty_response"),
             ({"response_finish_reason": "length"}, "response_truncated"), ({"response": "Sorry!"},
             "sorry_short_response"), ({"response": "The, and of!"}, "stopwords_only_response")]
    rng = random.Random(3)
    picks = [rng.randrange(len(kinds)) for _ in range(1000)]
    rows = [{**kinds[k][0], "instruction": kinds[k][0].get("instruction", f"Task number {i}")}
            for i, k in enumerate(picks)]
    got = reasons(rows)
    assert got == [kinds[k][1] for k in picks]
    assert Counter(got) == Counter(kinds[k][1] for k in picks)
    assert Counter(got)[None] == picks.count(0)


def test_null_typed_and_missing_columns_and_empty_table():
    n = 3
    table = pa.table({"instruction": ["a task", "", None], "response": pa.nulls(n), "error": pa.nulls(n)})
    assert text_rule_reasons(table, EliminationConfig(), PACK_PHRASES) == [
        "empty_response", "empty_evolution", "empty_evolution"]
    assert text_rule_reasons(table.slice(0, 0), EliminationConfig(), PACK_PHRASES) == []
    assert text_rule_reasons(table.to_pydict(), EliminationConfig(), PACK_PHRASES) == [  # columns by name
        "empty_response", "empty_evolution", "empty_evolution"]
    assert text_rule_reasons({"instruction": [], "response": []}, EliminationConfig(), PACK_PHRASES) == []
    with pytest.raises(ValueError, match=r"^the candidates table has no column response \(its columns: instruction\)$"):
        text_rule_reasons(pa.table({"instruction": ["x"]}), EliminationConfig(), PACK_PHRASES)
    with pytest.raises(ValueError, match=r"^the candidates table has no column response \(its columns: instruction\)$"):
        text_rule_reasons({"instruction": ["x"]}, EliminationConfig(), PACK_PHRASES)


@pytest.mark.parametrize(("text", "expected"), [
    ("Equal", "equal"), ("equal", "equal"), ("EQUAL", "equal"), ("Equal.", "equal"), ("**Equal**", "equal"),
    ('"Equal"', "equal"), ("`Equal`", "equal"), (" Equal\n", "equal"), ("#Equal#", "equal"),
    ("Not Equal", "not_equal"), ("not equal.", "not_equal"), (" Not  Equal ", "not_equal"),
    ("NOT EQUAL", "not_equal"), ("**Not Equal**", "not_equal"), ("Not\nEqual", "not_equal"),
    ("Not equal because the second adds a constraint.", None), ("", None), ("   ", None), (None, None),
    ("Equal or Not Equal", None), ("Unequal", None), ("They are equal because...", None), ("Not", None),
    ("Equals", None), ("Equal. Not Equal.", None), ("Answer: Equal", None), ("Not-Equal", None),
])
def test_parse_equality_is_strict(text, expected):
    assert parse_equality(text) == expected


def test_equality_reason_and_reason_names():
    assert equality_reason("equal") == "no_information_gain"
    assert equality_reason(None) == "equality_unparseable"
    assert equality_reason("not_equal") is None
    with pytest.raises(ValueError):
        equality_reason("maybe")
    assert REJECT_REASONS[: len(TEXT_RULE_REASONS)] == TEXT_RULE_REASONS
    for name in ("no_information_gain", "equality_unparseable", "duplicate", "near_duplicate", "not_an_instruction",
                 "validity_unparseable", "answers_parent", "shorter_than_parent"):
        assert name in REJECT_REASONS
    assert len(set(REJECT_REASONS)) == len(REJECT_REASONS) == 22  # 8 text rules, 10 validity, 4 more
    assert 140 <= len(DEFAULT_STOP_WORDS) <= 200 and len(set(DEFAULT_STOP_WORDS)) == len(DEFAULT_STOP_WORDS)
