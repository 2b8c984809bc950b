"""Scoring the rows of one shard (Deita, Liu et al. 2023): each row's complexity among every variant of its root (its
seed and its evolutions from every round, shown at once), each answered row's quality, both a forced choice of
"1".."6" recorded as the expectation over the choices' probabilities; and each row's embedding."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from prompts import PromptPack
from tasks.core.config import SCORE_CHOICES, ScoreConfig
from tasks.core.text import parent_text
from tasks.llm.base import Completion, Conversation, LLMBackend


def expected_score(completion: Completion) -> tuple[float | None, list[float] | None, str | None]:
    """A forced choice of 1..6 as (score, the six choices' probabilities, method).

    With the choices' log-probabilities (``expectation``): the probabilities are those log-probabilities
    normalised over the six choices (a choice absent from them counts as probability 0) and the score is their
    expectation. Without them (``chosen``): the chosen score, no distribution. A failed item gives no score; a free
    answer that is not one digit 1..6 gives ``unparseable``."""
    if not completion.ok:
        return None, None, None
    logprobs = completion.choice_logprobs if completion.constrained else None
    if logprobs:
        values = [logprobs.get(c, -math.inf) for c in SCORE_CHOICES]
        top = max(values)
        weights = [math.exp(v - top) for v in values]
        probs = [w / sum(weights) for w in weights]
        return sum(p * int(c) for p, c in zip(probs, SCORE_CHOICES, strict=True)), probs, "expectation"
    chosen = completion.text.strip()
    return (float(chosen), None, "chosen") if chosen in SCORE_CHOICES else (None, None, "unparseable")


def root_variants(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each root's rows, its seed first, then its evolutions by round (and id)."""
    by_root: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_root[row["root_id"]].append(row)
    return {root: sorted(v, key=lambda r: (r["round"], r["id"])) for root, v in by_root.items()}


def score_requests(rows: list[dict[str, Any]], pack: PromptPack,
                   spec: ScoreConfig) -> tuple[list[Conversation], list[tuple[int, str]]]:
    """The scoring conversations of a shard's rows and, for each, (row index, ``complexity`` or ``quality``)."""
    conversations: list[Conversation] = []
    targets: list[tuple[int, str]] = []
    if spec.complexity:
        variants = root_variants(rows)
        for i, row in enumerate(rows):
            family = variants[row["root_id"]]
            position = next(j for j, v in enumerate(family) if v["id"] == row["id"])
            conversations.append(pack.score_messages("complexity", questions=[parent_text(v) for v in family],
                                                     target=position + 1))
            targets.append((i, "complexity"))
    if spec.quality:
        for i, row in enumerate(rows):
            if (row.get("response") or "").strip():
                conversations.append(pack.score_messages("quality", question=parent_text(row),
                                                         response=row["response"]))
                targets.append((i, "quality"))
    return conversations, targets


def score_rows(rows: list[dict[str, Any]], pack: PromptPack, backend: LLMBackend, spec: ScoreConfig,
               embedder: LLMBackend | None = None) -> list[dict[str, Any]]:
    """One score row (``storage.schema.SCORE_SCHEMA``) per row, in order: every scoring request in one batch, then
    the embeddings of the rows' instructions (with their inputs) when ``spec.embeddings``, from ``embedder`` (None:
    ``backend``)."""
    conversations, targets = score_requests(rows, pack, spec)
    params = spec.sampling.model_copy(update={"choices": SCORE_CHOICES})
    completions = backend.generate(conversations, params) if conversations else []
    out = [{"id": r["id"], "root_id": r["root_id"], "round": r["round"], "score_model": backend.model_name,
            "prompt_tokens": 0, "completion_tokens": 0} for r in rows]
    for (i, kind), completion in zip(targets, completions, strict=True):
        score, probs, method = expected_score(completion)
        out[i].update({kind: score, f"{kind}_probs": probs, f"{kind}_method": method})
        out[i]["prompt_tokens"] += completion.prompt_tokens
        out[i]["completion_tokens"] += completion.completion_tokens
    if spec.embeddings and rows:
        embedder = embedder or backend
        embed = getattr(embedder, "embed", None)
        if embed is None:
            raise TypeError(f"the backend {embedder!r} gives no embeddings: set score.embeddings to false, or score "
                            "with a backend that has them (vllm, openai, scripted)")
        for row, vector in zip(out, embed([parent_text(r) for r in rows]), strict=True):
            row["embedding"] = vector
    return out
