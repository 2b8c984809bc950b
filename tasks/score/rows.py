"""Scoring the rows of one shard (Deita, Liu et al. 2023): each row's complexity among every variant of its root (its
seed and its evolutions from every round, shown at once), each answered row's quality (with response evolution: of
its response and each rewrite of it, the best kept), both a forced choice of "1".."6" recorded as the expectation
over the choices' probabilities; and each row's embedding."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from prompts import PromptPack
from tasks.core.config import ScoreConfig
from tasks.core.options import SCORE_CHOICES
from tasks.core.text import parent_text
from tasks.llm.base import Completion, Conversation, LLMBackend
from tasks.score.responses import Candidate, evolve_responses, has_response, response_record


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


def score_requests(rows: list[dict[str, Any]], pack: PromptPack, spec: ScoreConfig,
                   candidates: dict[int, list[Candidate]] | None = None
                   ) -> tuple[list[Conversation], list[tuple[int, str, int]]]:
    """The scoring conversations of a shard's rows and, for each, (row index, ``complexity`` or ``quality``, the
    candidate scored: 0 for the row's own response); with ``candidates`` (response evolution), the quality of each
    answered row's candidates that can be used (status ``ok``)."""
    conversations: list[Conversation] = []
    targets: list[tuple[int, str, int]] = []
    if spec.complexity:
        variants = root_variants(rows)
        for i, row in enumerate(rows):
            family = variants[row["root_id"]]
            position = next(j for j, v in enumerate(family) if v["id"] == row["id"])
            conversations.append(pack.score_messages("complexity", questions=[parent_text(v) for v in family],
                                                     target=position + 1))
            targets.append((i, "complexity", 0))
    if spec.quality:
        for i, row in enumerate(rows):
            responses = [c.response if c.status == "ok" else None for c in candidates.get(i, [])] \
                if candidates is not None else [row["response"] if has_response(row) else None]
            for j, response in enumerate(responses):
                if response is not None:
                    conversations.append(pack.score_messages("quality", question=parent_text(row), response=response))
                    targets.append((i, "quality", j))
    return conversations, targets


def score_rows(rows: list[dict[str, Any]], pack: PromptPack, backend: LLMBackend, spec: ScoreConfig,
               embedder: LLMBackend | None = None) -> list[dict[str, Any]]:
    """One score row (``storage.schema.score_schema``) per row, in order: with ``spec.evolve_responses`` first every
    rewrite in one batch (``tasks.score.responses``), then every scoring request in one batch, then the embeddings of
    the rows' instructions (with their inputs) when ``spec.embeddings``, from ``embedder`` (None: ``backend``)."""
    candidates, tokens = evolve_responses(rows, pack, backend, spec.evolve_responses) \
        if spec.evolve_responses is not None else (None, [(0, 0)] * len(rows))
    conversations, targets = score_requests(rows, pack, spec, candidates)
    params = spec.sampling.model_copy(update={"choices": SCORE_CHOICES})
    completions = backend.generate(conversations, params) if conversations else []
    out = [{"id": r["id"], "root_id": r["root_id"], "round": r["round"], "score_model": backend.model_name,
            "prompt_tokens": t[0], "completion_tokens": t[1]} for r, t in zip(rows, tokens, strict=True)]
    for (i, kind, j), completion in zip(targets, completions, strict=True):
        score, probs, method = expected_score(completion)
        if candidates is not None and kind == "quality":
            candidates[i][j].quality, candidates[i][j].quality_probs, candidates[i][j].quality_method = \
                score, probs, method
        else:
            out[i].update({kind: score, f"{kind}_probs": probs, f"{kind}_method": method})
        out[i]["prompt_tokens"] += completion.prompt_tokens
        out[i]["completion_tokens"] += completion.completion_tokens
    for i, found in (candidates or {}).items():
        out[i].update(response_record(found))
    if spec.embeddings and rows:
        embedder = embedder or backend
        embed = getattr(embedder, "embed", None)
        if embed is None:
            raise TypeError(f"the backend {embedder!r} gives no embeddings: set score.embeddings to false, or score "
                            "with a backend that has them (vllm, openai, scripted)")
        for row, vector in zip(out, embed([parent_text(r) for r in rows]), strict=True):
            row["embedding"] = vector
    return out
