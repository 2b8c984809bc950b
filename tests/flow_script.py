"""A scripted model that fails known seeds in known ways, for exact-count tests of rounds and flows."""

from __future__ import annotations

import json
import threading

from tasks.core.text import parent_text
from tasks.llm.base import Completion, Conversation, SamplingParams
from tasks.llm.scripted import given_prompt, is_evolution_prompt, last_user_text

EXTRA = [
    "Additionally, compare two alternative approaches and justify which one you would recommend to a beginner.",
    "Furthermore, list three concrete pitfalls people meet in practice, with one sentence of mitigation each.",
    "Moreover, finish with a one-paragraph summary aimed at a busy manager who has never seen the topic.",
    "Lastly, state every assumption you make and explain how the answer changes if one assumption fails.",
]

# seed index -> how its evolutions fail (every round, unless noted)
PLAN = {
    0: "empty", 1: "empty", 2: "empty", 3: "empty",
    4: "scaffold", 5: "scaffold",
    6: "sorry", 7: "sorry",
    8: "equal", 9: "unparseable",
    10: "truncated",
    11: "duplicate", 12: "duplicate",
    14: "error_once",
}
ROUND1_REJECTED = {
    "duplicate": 2, "empty_evolution": 4, "equality_unparseable": 1, "evolution_truncated": 1, "llm_error": 1,
    "no_information_gain": 1, "scaffolding_copied": 2, "sorry_short_response": 2,
}
ROUND2_REJECTED = {k: v for k, v in ROUND1_REJECTED.items() if k != "llm_error"}


def load_seeds(path: str = "data/demo_seeds.jsonl", n: int = 20) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f][:n]


class PlannedScript:
    """Responds like a capable model except for the seeds in ``PLAN``."""

    def __init__(self, seeds: list[dict], plan: dict[int, str] = PLAN):
        self.parents = [parent_text({"instruction": s["instruction"], "input": s["input"]}) for s in seeds]
        self.plan = plan
        self.errored: set[int] = set()
        self.lock = threading.Lock()

    def seed_of(self, text: str) -> int:
        text = text.strip().lower()
        matches = [i for i, p in enumerate(self.parents) if text.startswith(p.lower())]
        if len(matches) != 1:
            raise AssertionError(f"text does not descend from exactly one seed: {text[:80]!r}")
        return matches[0]

    def __call__(self, conversation: Conversation, params: SamplingParams) -> Completion | str:
        text = last_user_text(conversation)
        if is_evolution_prompt(text):
            given = given_prompt(text)
            return self.evolve(self.seed_of(given), given)
        if params.choices == ("Yes", "No"):  # the rewrite-validity check
            return "Yes"
        if "The Second Prompt:" in text:
            second = text.split("The Second Prompt:", 1)[1].split("Your Judgement", 1)[0]
            behaviour = self.plan.get(self.seed_of(second))
            return {"equal": "Equal", "unparseable": "Maybe"}.get(behaviour, "Not Equal")
        behaviour = self.plan.get(self.seed_of(text))
        if behaviour == "sorry":
            return "Sorry, I can't help with that."
        return "A full answer: " + " ".join(f"point{i}" for i in range(30)) + "."

    def evolve(self, idx: int, given: str) -> Completion | str:
        behaviour = self.plan.get(idx)
        if behaviour == "empty":
            return ""
        if behaviour == "scaffold":
            return given + " Keep to the rewritten prompt exactly."
        if behaviour == "truncated":
            return Completion(text=given + " and then", finish_reason="length", prompt_tokens=5, completion_tokens=9)
        if behaviour == "duplicate":
            return self.parents[17].upper()  # a seed long enough to be a full rewrite of either parent
        if behaviour == "error_once":
            with self.lock:
                first = idx not in self.errored
                self.errored.add(idx)
            if first:
                raise RuntimeError("simulated per-item failure")
        depth = sum(extra in given for extra in EXTRA)
        return f"{given} {EXTRA[depth]}"
