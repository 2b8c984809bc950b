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


def test_vllm_scores_are_expectations_over_exactly_the_six_choices(model_dir):
    backend = VLLMBackend(str(model_dir), {"max_model_len": 1024})
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
