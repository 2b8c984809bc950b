"""Which evolution operation a row gets in a round: weights from the pack or the config, a seeded hash draw."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from prompts import PromptPack
from tasks.core.text import parent_text


def resolve_weights(pack: PromptPack, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The weight of every operation of ``pack``, in the pack's order.

    Without overrides, the pack's default weights (uniform in the bundled packs). With overrides (the run's
    ``operation_weights``), they replace the defaults entirely: an operation not named in them gets weight 0,
    so ``{"deepening": 1}`` means "only deepening". Unknown operation names, negative or non-finite weights,
    and weights that are all zero are errors.
    """
    valid = list(pack.operations)
    if overrides is None:
        return {name: spec.weight for name, spec in pack.operations.items()}
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown operation(s) {', '.join(unknown)} for prompt pack '{pack.name}'; valid: {', '.join(valid)}"
        )
    weights = {name: float(overrides.get(name, 0.0)) for name in valid}
    _check_weights(weights)
    return weights


def _check_weights(weights: Mapping[str, float]) -> None:
    bad = sorted(name for name, w in weights.items() if not math.isfinite(w) or w < 0)
    if bad:
        raise ValueError(f"operation weights must be finite and >= 0: {', '.join(bad)}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError("at least one operation weight must be > 0")


def uniform_draw(run_seed: int, row_id: str, round_index: int) -> float:
    """A uniform float in [0, 1) that depends only on (run seed, row id, round)."""
    key = f"{run_seed}\x1f{row_id}\x1f{round_index}".encode()
    # 53 bits: exactly what a float holds, so the value is exact and strictly below 1.
    bits = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 11
    return bits / float(1 << 53)


def choose_operation(run_seed: int, row_id: str, round_index: int, weights: Mapping[str, float]) -> str:
    """The operation for one row in one round, drawn with probability proportional to its weight.

    Deterministic: the draw is a hash of (run seed, row id, round), never a global RNG, so a rerun (or a
    retried shard) chooses the same operation. Operations are taken in sorted name order, so the result does
    not depend on the mapping's order. An operation with weight 0 is never chosen.
    """
    _check_weights(weights)
    names = sorted(weights)
    total = math.fsum(weights[name] for name in names)
    target = uniform_draw(run_seed, row_id, round_index) * total
    cumulative = 0.0
    for name in names:
        cumulative += weights[name]
        if weights[name] > 0 and target < cumulative:
            return name
    # Rounding can leave target a hair above the running sum; the draw then belongs to the last live operation.
    return next(name for name in reversed(names) if weights[name] > 0)


def choose_variant(run_seed: int, row_id: str, round_index: int, count: int) -> int:
    """Which of an operation's ``count`` variants a row gets (0 when it has none): a seeded hash draw, like
    :func:`choose_operation`, but independent of it."""
    if count <= 1:
        return 0
    return int(uniform_draw(run_seed, f"{row_id}\x1fvariant", round_index) * count)


def evolve_prompts(rows: list[dict[str, Any]], round_index: int, pack: PromptPack, run_seed: int,
                   operation_weights: Mapping[str, float] | None, prefill: bool) -> tuple[
        list[str], list[int], list[str], list[tuple[list[dict[str, str]], str]]]:
    """Each row's operation, variant, parent text and evolution prompt (messages, template sha) in a round."""
    weights = resolve_weights(pack, operation_weights)
    ops = [choose_operation(run_seed, row["id"], round_index, weights) for row in rows]
    variants = [choose_variant(run_seed, row["id"], round_index, len(pack.operations[op].variants))
                for row, op in zip(rows, ops, strict=True)]
    parents = [parent_text(row) for row in rows]
    rendered = [pack.evolve_messages(op, parent, "", prefill=prefill, variant=v)
                for op, parent, v in zip(ops, parents, variants, strict=True)]
    return ops, variants, parents, rendered
