"""Diversity-aware selection (``tasks.mix.select``) and the scores it ranks by (``tasks.score.rows``): crafted
embeddings, crafted completions; no engine."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from tasks.core.options import SCORE_CHOICES
from tasks.llm.base import Completion
from tasks.mix import select
from tasks.mix.select import diversity_select, rank_order, select_table
from tasks.score.rows import expected_score


def unit(*v: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


# rank order a..f; b is a's near twin (cos 0.995), d is c's (cos 0.95), e is nearly orthogonal to all
# (nearest: c), f is a's twin too
CRAFTED = {"a": unit(1, 0, 0), "b": unit(1, 0.1, 0), "c": unit(0, 1, 0), "d": unit(0, 1, 0.33),
           "e": unit(0, 0.1, 1), "f": unit(1, 0, 0.05)}


def test_selection_on_crafted_embeddings_keeps_exactly_the_expected_rows(monkeypatch):
    vectors = np.array(list(CRAFTED.values()))
    picked = diversity_select(vectors, threshold=0.9, budget=None)
    assert [list(CRAFTED)[i] for i in picked.taken] == ["a", "c", "e"]
    assert {list(CRAFTED)[i]: list(CRAFTED)[picked.nearest[i]] for i in range(6) if picked.nearest[i] >= 0} == {
        "b": "a", "d": "c", "f": "a"}
    # a looser threshold lets d in (0.95 < 0.96), never b or f; a budget of 2 stops after c
    assert [list(CRAFTED)[i] for i in diversity_select(vectors, 0.96, None).taken] == ["a", "c", "d", "e"]
    assert [list(CRAFTED)[i] for i in diversity_select(vectors, 0.9, 2).taken] == ["a", "c"]
    # blocks of two rows decide the same as one block: across blocks and inside one
    monkeypatch.setattr(select, "BLOCK", 2)
    assert [list(CRAFTED)[i] for i in diversity_select(vectors, 0.9, None).taken] == ["a", "c", "e"]


def test_rows_are_ranked_by_complexity_times_quality_and_the_dropped_name_their_nearest():
    ids = ["f", "e", "d", "c", "b", "a"]  # stored out of rank order
    product = {"a": (6.0, 6.0), "b": (5.0, 6.0), "c": (5.0, 5.0), "d": (4.0, 5.0), "e": (2.0, 5.0), "f": (1.0, 2.0)}
    complexity = np.array([product[i][0] for i in ids])
    quality = np.array([product[i][1] for i in ids])
    assert [ids[i] for i in rank_order(complexity, quality, ids)] == ["a", "b", "c", "d", "e", "f"]
    table = pa.table({"id": ids, "instruction": [f"row {i}" for i in ids]})
    scores = pa.table({"id": list(reversed(ids)), "complexity": [product[i][0] for i in reversed(ids)],
                       "quality": [product[i][1] for i in reversed(ids)],
                       "embedding": pa.array([CRAFTED[i] for i in reversed(ids)], pa.list_(pa.float32()))})
    kept, dropped, nearest = select_table(table, scores, threshold=0.9, budget=2)
    assert kept["id"].to_pylist() == ["a", "c"]
    assert dict(zip(dropped["id"].to_pylist(), nearest.to_pylist(), strict=True)) == {
        "b": "a", "d": "c", "e": "c", "f": "a"}


def completion(text: str, logprobs: dict[str, float] | None) -> Completion:
    return Completion(text=text, finish_reason="stop", constrained=logprobs is not None, choice_logprobs=logprobs)


def test_a_score_is_the_expectation_over_the_six_choices_or_the_chosen_one():
    logprobs = {c: math.log(p) for c, p in zip(SCORE_CHOICES, [0.1, 0.1, 0.2, 0.4, 0.1, 0.1], strict=True)}
    score, probs, method = expected_score(completion("4", logprobs))
    assert method == "expectation" and len(probs) == 6 and sum(probs) == pytest.approx(1.0)
    assert score == pytest.approx(1 * 0.1 + 2 * 0.1 + 3 * 0.2 + 4 * 0.4 + 5 * 0.1 + 6 * 0.1)
    # a choice missing from the alternatives counts 0; the others are normalised over the six
    score, probs, _ = expected_score(completion("2", {"1": math.log(0.25), "2": math.log(0.75)}))
    assert probs == pytest.approx([0.25, 0.75, 0, 0, 0, 0]) and score == pytest.approx(1.75)
    assert expected_score(completion("5", None)) == (5.0, None, "chosen")
    assert expected_score(Completion(text="five", finish_reason="stop")) == (None, None, "unparseable")
    assert expected_score(Completion(error="boom")) == (None, None, None)
