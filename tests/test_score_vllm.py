"""Scores and embeddings from the real vLLM CPU engine on the bundled model (slow: one small test)."""

from __future__ import annotations

import math

import pytest

from prompts import load_pack
from tasks.core.config import ScoreConfig
from tasks.llm.vllm_backend import VLLMBackend
from tasks.score.rows import score_rows

ROWS = [
    {"id": "s", "root_id": "s", "round": 0, "instruction": "Name a colour.", "input": "",
     "response": "Blue."},
    {"id": "e", "root_id": "s", "round": 1, "input": "",
     "instruction": "Name a colour, and explain how the eye perceives it, in two sentences.",
     "response": "Blue. The eye's short-wavelength cones respond to it most strongly."},
]


@pytest.fixture(scope="module")
def backend(model_dir):
    """One engine for the module, the one tests/test_llm_vllm.py started when both run in one test process (their
    engine group, tests/conftest.py): the prompts of both tests fit in 1024 tokens."""
    return VLLMBackend(str(model_dir), {"max_model_len": 1024})


def test_vllm_scores_are_expectations_over_exactly_the_six_choices(backend):
    rows = score_rows(ROWS, load_pack("general"), backend, ScoreConfig())
    for row in rows:
        for kind in ("complexity", "quality"):
            probs = row[f"{kind}_probs"]
            assert row[f"{kind}_method"] == "expectation"
            assert len(probs) == 6 and all(p > 0 for p in probs) and sum(probs) == pytest.approx(1.0)
            assert row[kind] == pytest.approx(sum(p * k for p, k in zip(probs, range(1, 7), strict=True)))
        # the pooling runner on the same model: one unit vector of the model's width per row
        assert len(row["embedding"]) == 576 and math.sqrt(sum(x * x for x in row["embedding"])) == pytest.approx(1.0)
    assert rows[0]["embedding"] != rows[1]["embedding"]


def test_vllm_response_evolution_keeps_a_best_response_and_scores_the_variants_as_expectations(backend):
    spec = ScoreConfig(embeddings=False, evolve_responses={
        "operations": ["helpfulness", "depth"], "sampling": {"temperature": 0.0, "max_tokens": 96}})
    rows = score_rows(ROWS, load_pack("general"), backend, spec)
    scored = 0
    for source, row in zip(ROWS, rows, strict=True):
        variants = row["response_variants"]
        assert [v["operation"] for v in variants] == ["original", "helpfulness", "depth"]
        assert variants[0]["response"] == source["response"] and variants[0]["status"] == "ok"
        assert row["response_operation"] in ("original", "helpfulness", "depth") and row["response"].strip()
        for v in variants:
            if v["status"] != "ok":  # a rewrite that can't be used is recorded, not scored
                assert v["quality"] is None and v["status"] in ("llm_error", "empty", "truncated", "unchanged")
                continue
            scored += 1
            assert v["quality_method"] == "expectation" and 1.0 <= v["quality"] <= 6.0
            assert sum(v["quality_probs"]) == pytest.approx(1.0)
            assert v["quality"] == pytest.approx(sum(p * k for p, k in zip(v["quality_probs"], range(1, 7),
                                                                           strict=True)))
        best = max((v for v in variants if v["quality"] is not None), key=lambda v: v["quality"])
        assert (row["quality"], row["response"]) == (best["quality"], best["response"])
    print(f"variants scored: {scored} of 6; kept: {[r['response_operation'] for r in rows]}")
