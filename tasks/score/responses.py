"""Response evolution (EvolQuality: Liu et al. 2023; distilabel's ``EvolQuality``): each answered row's response
rewritten once by each configured operation (the prompt pack's ``response_evolution`` templates), in one batch; the
quality scorer then scores the rewrites that can be used together with the original (``tasks.score.rows``) and the
best is kept, every candidate recorded on the row's score row with its status and score."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from prompts import PromptPack
from tasks.core.options import ORIGINAL_RESPONSE, ResponseEvolutionConfig
from tasks.core.text import parent_text
from tasks.llm.base import Completion, LLMBackend

# Headings a model may repeat before its rewrite (the bundled templates end with the first): cut from its start.
REWRITE_LABELS = ("#Rewritten Response#:", "Rewritten Response:")


@dataclass
class Candidate:
    """One candidate response of a row: the original or a rewrite (``operation``), with its ``status`` (``ok``: it is
    scored; ``llm_error``, ``empty``, ``truncated``, ``unchanged``: it is not) and, once scored, its quality."""

    operation: str
    response: str | None
    status: str = "ok"
    prompt_sha: str | None = None
    quality: float | None = None
    quality_probs: list[float] | None = None
    quality_method: str | None = None


def has_response(row: dict[str, Any]) -> bool:
    return bool((row.get("response") or "").strip())


def rewrite_text(completion: Completion, original: str) -> tuple[str | None, str]:
    """A rewrite's text and status: the model's text less a repeated heading, unless it failed (``llm_error``), is
    blank (``empty``), was cut off at ``max_tokens`` (``truncated``, its text kept to read) or repeats the original
    (``unchanged``)."""
    if not completion.ok:
        return None, "llm_error"
    text = completion.text.strip()
    for label in REWRITE_LABELS:
        if text.lower().startswith(label.lower()):
            text = text[len(label):].strip()
    if not text:
        return None, "empty"
    if completion.finish_reason == "length":
        return text, "truncated"
    return text, "unchanged" if text == original.strip() else "ok"


def evolve_responses(rows: list[dict[str, Any]], pack: PromptPack, backend: LLMBackend,
                     spec: ResponseEvolutionConfig) -> tuple[dict[int, list[Candidate]], list[tuple[int, int]]]:
    """Every answered row's candidates (by row index: the original, then one rewrite per operation, in the config's
    order), each rewrite asked in one batch with ``spec.sampling``; and each row's rewrite (prompt, completion)
    tokens."""
    answered = [i for i, row in enumerate(rows) if has_response(row)]
    requests = [(i, op, *pack.rewrite_messages(op, parent_text(rows[i]), rows[i]["response"]))
                for i in answered for op in spec.operations]
    completions = backend.generate([messages for _, _, messages, _ in requests], spec.sampling) if requests else []
    candidates = {i: [Candidate(ORIGINAL_RESPONSE, rows[i]["response"])] for i in answered}
    tokens = [(0, 0)] * len(rows)
    for (i, op, _, sha), completion in zip(requests, completions, strict=True):
        text, status = rewrite_text(completion, rows[i]["response"])
        candidates[i].append(Candidate(op, text, status, sha))
        tokens[i] = (tokens[i][0] + completion.prompt_tokens, tokens[i][1] + completion.completion_tokens)
    return candidates, tokens


def best_candidate(candidates: list[Candidate]) -> Candidate:
    """The candidate with the highest quality; on a tie the first (the original before any rewrite, then the
    operations in the config's order); the original when none has a score."""
    scored = [c for c in candidates if c.quality is not None]
    return max(scored, key=lambda c: c.quality) if scored else candidates[0]


def response_record(candidates: list[Candidate]) -> dict[str, Any]:
    """A score row's response evolution fields (``storage.schema.RESPONSE_EVOLUTION_FIELDS``), its ``quality`` the
    kept response's."""
    best = best_candidate(candidates)
    return {"response": best.response, "response_operation": best.operation, "response_prompt_sha": best.prompt_sha,
            "response_variants": [asdict(c) for c in candidates], "quality": best.quality,
            "quality_probs": best.quality_probs, "quality_method": best.quality_method}
