"""Replay the elimination rules over text on a finished run's candidates: which rule takes each one, by reason.

To compare two versions of the rules on the same model output, run it once per checkout (a `git worktree` of the
older commit on ``PYTHONPATH``); both read the same run folder and the same prompt pack (the run's own):

    .venv/bin/python bench/replay_rules.py runs/demo --profile small-model
    git worktree add /tmp/old COMMIT && PYTHONPATH=/tmp/old .venv/bin/python bench/replay_rules.py runs/demo

Each candidate goes through the rules in the pipeline's order: the evolution's own text rules, the rules over the
evolution and its parent (``validity_rule_reason``), then the text rules over the stored answer. What a replay cannot
see is left out of both sides alike: the judges (`not_an_instruction`, equality), `copies_prompt` (the prompt's
text is not stored) and a stop string that cut the rewrite (`unfinished_evolution`'s "broke off").
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa

# The reasons the pipeline decides on the evolution alone, before any answer (tasks/evolve/steps.py's set); written
# here so that both checkouts compared are replayed in the same order.
EVOLUTION_REASONS = ("llm_error", "empty_evolution", "evolution_truncated", "scaffolding_copied")


def _rules():
    """(text_rule_reasons, validity_rule_reason, EliminationConfig) of the checkout on the path, old layout or new."""
    try:
        from tasks.core.elimination import EliminationConfig
        from tasks.judge.rules import text_rule_reasons
        from tasks.judge.validity import validity_rule_reason
    except ImportError:  # the layout before the rules moved to tasks/judge (commit fcefd35 and older)
        from tasks.eliminate import text_rule_reasons
        from tasks.validity import validity_rule_reason

        from tasks.core.config import EliminationConfig
    return text_rule_reasons, validity_rule_reason, EliminationConfig


def replay(run: Path, profile: str | None, by_id: dict[str, str] | None = None) -> Counter:
    text_rule_reasons, validity_rule_reason, EliminationConfig = _rules()
    from prompts.pack import load_pack

    config = json.loads((run / "config.json").read_text())
    pack = load_pack(config.get("prompt_pack", "general"))
    fields = set(EliminationConfig.model_fields)
    cfg = EliminationConfig(**({"profile": profile} if profile and "profile" in fields else {}))
    rows = duckdb.sql(f"""
        select c.*, p.instruction as parent
        from read_parquet('{run}/round=*/candidates/*.parquet', hive_partitioning=false) c
        join read_parquet('{run}/round=*/pool/*.parquet', hive_partitioning=true) p
          on c.parent_id = p.id and p.round = c.round - 1
        order by c.round, c.id""").to_arrow_table()
    unanswered = rows.set_column(rows.column_names.index("response"), "response", pa.nulls(rows.num_rows, pa.string()))
    early = text_rule_reasons(unanswered, cfg, pack.scaffolding_phrases)
    late = text_rule_reasons(rows, cfg, pack.scaffolding_phrases)
    has_switches = "enabled" in inspect.signature(validity_rule_reason).parameters
    enabled = {"enabled": cfg.enabled_rules()} if has_switches else {}
    reasons: Counter = Counter()
    for row, early_reason, late_reason in zip(rows.to_pylist(), early, late, strict=True):
        if early_reason in EVOLUTION_REASONS:  # the evolution's own rules, before any answer
            reason = early_reason
        else:
            reason = validity_rule_reason(row["instruction"] or "", row["parent"],
                                          pack.operations[row["operation"]].kind, cfg.shorter_than_parent_ratio,
                                          **enabled)
            if reason is None and row["response"] is None:
                reason = "passes, no answer to check (the run's judge took it)"
            reason = reason or late_reason or "passes"
        reasons[reason] += 1
        if by_id is not None:
            by_id[row["id"]] = reason
    return reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run's folder (runs/demo)")
    parser.add_argument("--profile", help="elimination profile (checkouts that have profiles)")
    parser.add_argument("--by-id", type=Path, help="also write each candidate's reason to this JSON file (to diff)")
    args = parser.parse_args()
    by_id: dict[str, str] = {}
    reasons = replay(args.run, args.profile, by_id)
    if args.by_id:
        args.by_id.write_text(json.dumps(by_id, indent=1, sort_keys=True))
    total = sum(reasons.values())
    passed = sum(n for reason, n in reasons.items() if reason.startswith("passes"))
    print(f"{total} candidates, {total - passed} rejected by the rules over text "
          f"({'profile ' + args.profile if args.profile else 'default rules'}, rules from {_rules()[0].__module__})")
    for reason, n in reasons.most_common():
        print(f"  {reason}: {n}")


if __name__ == "__main__":
    sys.exit(main())
