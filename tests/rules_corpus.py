"""The rules measured on the project's public corpus (``tests/data/rules_corpus.jsonl``): each text rule on its own.

Good rows are real instructions from public sources (each row names its source and licence): how many of them
a rule rejects are its false rejections. Bad rows are known failures, each labelled with the rule meant to
catch it. The judges are left out (as if the validity judge said "valid" and the equality judge "Not Equal"):
only the rules over text are measured. A row with a parent is a parent -> evolution pair, checked against its
parent and the evolution prompt of its pack (``pack``: the row's, else ``general``); a row without a parent is
checked as a new instruction (in-breadth, against an empty parent); response rules run only where the row has a
response. ``duplicate`` is the exact dedup against the parent (a copied parent).

``python -m tests.rules_corpus [profile]`` prints the table published in docs/method.md.
"""

from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from prompts import PromptPack, load_pack
from tasks.core.config import EliminationConfig
from tasks.core.elimination import EVOLUTION_RULES, RESPONSE_RULES, VALIDITY_TEXT_RULES
from tasks.core.text import content_key
from tasks.judge.rules import DEFAULT_STOP_WORDS, _stop_words, text_rule_reason
from tasks.judge.validity import validity_rule_reason

CORPUS = Path(__file__).parent / "data" / "rules_corpus.jsonl"
TEXT_RULES: tuple[str, ...] = EVOLUTION_RULES + VALIDITY_TEXT_RULES + RESPONSE_RULES + ("duplicate",)
DATA_SHAPES = frozenset({"code", "data", "table", "html", "xml", "braces"})


def load_corpus(path: Path = CORPUS) -> list[dict]:
    """The corpus rows, in file order."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@functools.cache
def _pack(name: str) -> PromptPack:
    return load_pack(name)


def rejecting_rules(row: dict, cfg: EliminationConfig) -> set[str]:
    """Every enabled text rule that rejects the row, each checked on its own."""
    pack = _pack(row.get("pack", "general"))
    enabled = cfg.enabled_rules() | {"duplicate"}
    parent, text, response = row["parent"] or "", row["instruction"], row["response"]
    op = "add_constraints" if row["kind"] == "in_depth" else "in_breadth"
    prompt = "\n".join(m["content"] for m in pack.evolve_messages(op, parent)[0])
    scaffolding = tuple(p.lower() for p in (cfg.scaffolding_phrases or pack.scaffolding_phrases))
    stop = _stop_words(cfg.stop_words if cfg.stop_words is not None else DEFAULT_STOP_WORDS)
    sorry = tuple(w.lower() for w in cfg.sorry_words)
    found = set()
    for rule in TEXT_RULES:
        if rule not in enabled or (rule in RESPONSE_RULES and response is None):
            continue
        if rule == "duplicate":
            hit = row["parent"] is not None and content_key(text) == content_key(parent)
        elif rule in VALIDITY_TEXT_RULES:
            hit = validity_rule_reason(text, parent, row["kind"], cfg.shorter_than_parent_ratio, prompt,
                                       enabled=frozenset({rule})) == rule
        else:
            hit = text_rule_reason(text, response, "stop", "stop", None, cfg.sorry_max_words, scaffolding, sorry,
                                   stop, frozenset({rule})) == rule
        if hit:
            found.add(rule)
    return found


@dataclass(frozen=True)
class Measure:
    """What the rules did on the corpus: false rejections of good rows, catches of bad rows."""

    good: int
    bad: int
    false_rejections: Counter  # rule -> good rows it rejects
    rejected_good: tuple[str, ...]  # ids of good rows some rule rejects
    rejected_data: tuple[str, ...]  # ids of code- or data-bearing good rows some rule rejects
    caught_by_label: Counter  # rule -> bad rows labelled with it that it rejects
    labelled: Counter  # rule -> bad rows labelled with it
    caught: int  # bad rows some rule rejects

    def table(self) -> str:
        """The per-rule table (markdown)."""
        lines = [f"| rule | false rejections (of {self.good} good rows) | known failures caught |",
                 "| --- | --- | --- |"]
        for rule in TEXT_RULES:
            fr, lab = self.false_rejections[rule], self.labelled[rule]
            caught = f"{self.caught_by_label[rule]} of {lab}" if lab else "-"
            lines.append(f"| `{rule}` | {fr} ({100 * fr / self.good:.1f}%) | {caught} |")
        n = len(self.rejected_good)
        lines.append(f"| all rules | {n} ({100 * n / self.good:.1f}%) | {self.caught} of {self.bad} |")
        return "\n".join(lines)


def measure(cfg: EliminationConfig, rows: list[dict] | None = None) -> Measure:
    """Run every enabled text rule over the corpus."""
    rows = load_corpus() if rows is None else rows
    fr, caught_by_label, labelled = Counter(), Counter(), Counter()
    rejected_good, rejected_data, caught = [], [], 0
    for row in rows:
        hits = rejecting_rules(row, cfg)
        if row["set"] == "good":
            fr.update(hits)
            if hits:
                rejected_good.append(row["id"])
                if DATA_SHAPES & set(row["shapes"]):
                    rejected_data.append(row["id"])
        else:
            labelled[row["expect"]] += 1
            caught_by_label[row["expect"]] += row["expect"] in hits
            caught += bool(hits)
    good = sum(r["set"] == "good" for r in rows)
    return Measure(good, len(rows) - good, fr, tuple(rejected_good), tuple(rejected_data), caught_by_label,
                   labelled, caught)


if __name__ == "__main__":
    result = measure(EliminationConfig(profile=sys.argv[1] if len(sys.argv) > 1 else "default"))
    print(result.table())
    print("rejected good rows:", ", ".join(result.rejected_good) or "none")
