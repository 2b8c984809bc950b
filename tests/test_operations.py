"""Operation choice: weights from the pack or the config, a deterministic hash draw per (seed, row, round)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from prompts import load_pack
from tasks.evolve.operations import choose_operation, resolve_weights, uniform_draw

WEIGHTS = {"add_constraints": 1.0, "deepening": 2.0, "concretizing": 0.0, "in_breadth": 3.0, "complicate_input": 0.5}


def test_default_weights_are_the_packs_uniform_ones():
    general = load_pack("general")
    weights = resolve_weights(general, None)
    assert list(weights) == list(general.operations) and set(weights.values()) == {1.0}
    assert set(resolve_weights(load_pack("code"))) == set(load_pack("code").operations)


def test_overrides_replace_the_defaults():
    weights = resolve_weights(load_pack("general"), {"deepening": 2, "in_breadth": 1.5})
    assert weights == {
        "add_constraints": 0.0,
        "deepening": 2.0,
        "concretizing": 0.0,
        "increase_reasoning_steps": 0.0,
        "complicate_input": 0.0,
        "in_breadth": 1.5,
    }


def test_unknown_and_bad_overrides_are_errors():
    pack = load_pack("code")
    with pytest.raises(ValueError, match=r"unknown operation\(s\) deepening, in_breadth .*valid: add_constraints"):
        resolve_weights(pack, {"deepening": 1, "in_breadth": 1, "add_constraints": 1})
    with pytest.raises(ValueError, match="at least one"):
        resolve_weights(pack, {"add_constraints": 0})
    with pytest.raises(ValueError, match="at least one"):
        resolve_weights(pack, {})
    with pytest.raises(ValueError, match=">= 0: erroneous_code"):
        resolve_weights(pack, {"erroneous_code": -1, "add_constraints": 1})
    with pytest.raises(ValueError, match="finite"):
        choose_operation(0, "r", 1, {"a": math.inf})


def test_choice_is_deterministic_and_independent_of_dict_order():
    first = [choose_operation(7, f"row-{i}", 2, WEIGHTS) for i in range(200)]
    again = [choose_operation(7, f"row-{i}", 2, WEIGHTS) for i in range(200)]
    reordered = dict(reversed(list(WEIGHTS.items())))
    assert first == again == [choose_operation(7, f"row-{i}", 2, reordered) for i in range(200)]


def test_choice_changes_with_round_seed_and_row():
    base = [choose_operation(7, f"row-{i}", 1, WEIGHTS) for i in range(200)]
    other_round = [choose_operation(7, f"row-{i}", 2, WEIGHTS) for i in range(200)]
    other_seed = [choose_operation(8, f"row-{i}", 1, WEIGHTS) for i in range(200)]
    assert base != other_round and base != other_seed
    assert uniform_draw(1, "a", 1) != uniform_draw(1, "a", 2) != uniform_draw(2, "a", 2)
    assert uniform_draw(1, "ab", 1) != uniform_draw(1, "a", 11)  # fields are separated, not concatenated


def test_frequencies_follow_the_weights():
    n = 60_000
    counts = Counter(choose_operation(3, f"row-{i}", 1, WEIGHTS) for i in range(n))
    total = sum(WEIGHTS.values())
    assert counts["concretizing"] == 0
    for name, weight in WEIGHTS.items():
        p = weight / total
        sd = math.sqrt(n * p * (1 - p))
        assert abs(counts[name] - n * p) <= 4 * sd + 1e-9, (name, counts[name], n * p)


def test_uniform_pack_weights_cover_every_operation():
    weights = resolve_weights(load_pack("general"))
    n = 12_000
    counts = Counter(choose_operation(0, f"id{i}", 3, weights) for i in range(n))
    p = 1 / len(weights)
    sd = math.sqrt(n * p * (1 - p))
    assert set(counts) == set(weights)
    assert all(abs(c - n * p) <= 4 * sd for c in counts.values())


def test_a_single_live_operation_is_always_chosen():
    weights = {"a": 0.0, "b": 1e-300, "c": 0.0}
    assert {choose_operation(1, f"r{i}", 0, weights) for i in range(500)} == {"b"}
    draws = [uniform_draw(5, f"r{i}", 0) for i in range(2000)]
    assert all(0.0 <= u < 1.0 for u in draws)
