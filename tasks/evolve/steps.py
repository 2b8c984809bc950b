"""One pool row's way through a round, written once as a generator of steps, for every driver.

A row asks for an evolution, then the text rules, the validity judge, an answer, the text rules again and the
equality judge, each only when the row's previous step leaves it standing. ``row_steps`` yields each step
(an ``Ask`` of a backend or a ``Rules`` check) and receives its result; a driver decides when steps run: the
batch driver runs each stage for every row of a shard at once, the streaming driver lets each row move on as
soon as its own step is done. The decisions live here only, so both drivers give the same candidates.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal

from prompts import PromptPack
from tasks.core.config import SamplingParams
from tasks.core.context import EvolveSpec
from tasks.core.elimination import EQUALITY_RULE, VALIDITY_JUDGE_RULE
from tasks.core.text import content_key, record_id
from tasks.evolve.clean import breaks_off, clean_evolved_instruction, cut_at_stops, split_stops
from tasks.evolve.operations import evolve_prompts
from tasks.judge.equality import equality_request, equality_result
from tasks.judge.validity import validity_request, validity_result, validity_rule_reason
from tasks.llm.base import Completion, Conversation

# Reasons decided from the evolution alone: such candidates are not answered.
EVOLUTION_REASONS = frozenset({"llm_error", "empty_evolution", "evolution_truncated", "scaffolding_copied"})

StepName = Literal["evolve", "early_rules", "validity", "respond", "late_rules", "equality"]
# The order of the stages in a row's life; the batch driver runs them in this order.
STEP_ORDER: tuple[StepName, ...] = ("evolve", "early_rules", "validity", "respond", "late_rules", "equality")
ROLE = {"evolve": "evolve", "validity": "judge", "respond": "respond", "equality": "judge"}


@dataclass(frozen=True)
class Ask:
    """Ask the stage's backend to complete one conversation; the row receives the ``Completion``."""

    stage: StepName
    conversation: Conversation
    params: SamplingParams

    @property
    def role(self) -> str:
        """Which of the run's backends answers: ``evolve``, ``respond`` or ``judge``."""
        return ROLE[self.stage]


@dataclass(frozen=True)
class Rules:
    """Check the text rules (``text_rule_reasons``) on one row's fields; the row receives the reason or None."""

    stage: StepName
    fields: dict[str, Any]


Step = Ask | Rules
RowSteps = Generator[Step, Any, dict[str, Any]]


@dataclass(frozen=True)
class ShardPlan:
    """What every row of a shard shares: the prompts chosen for it, the stop strings, the lineage's names."""

    rows: list[dict[str, Any]]
    round_index: int
    spec: EvolveSpec
    pack: PromptPack
    ops: list[str]
    parents: list[str]
    rendered: list[tuple[Conversation, str]]
    engine_stops: tuple[str, ...]
    label_stops: tuple[str, ...]
    models: dict[str, str]
    rules: frozenset[str]  # the elimination rules that run (elimination.enabled_rules())

    @classmethod
    def of(cls, rows: list[dict[str, Any]], round_index: int, spec: EvolveSpec, pack: PromptPack,
           models: dict[str, str]) -> ShardPlan:
        ops, variants, parents, rendered = evolve_prompts(rows, round_index, pack, spec.random_seed,
                                                          spec.operation_weights, spec.prefill)
        # A stop string that is part of an output label would cut a label the model repeats to nothing: those
        # stops are applied after generation, past the label.
        engine_stops, label_stops = split_stops(spec.sampling.evolve.stop,
                                                [pack.label(op, v) for op, v in zip(ops, variants, strict=True)])
        return cls(rows, round_index, spec, pack, ops, parents, rendered, tuple(engine_stops), tuple(label_stops),
                   models, spec.elimination.enabled_rules())

    def steps(self) -> list[RowSteps]:
        """One step generator per row, in row order."""
        return [row_steps(self, i) for i in range(len(self.rows))]


def _fields(instruction: str, finish: str | None, evolved: Completion, answer: Completion | None) -> dict[str, Any]:
    return {"instruction": instruction, "response": answer.text if answer is not None and answer.ok else None,
            "finish_reason": finish, "response_finish_reason": answer.finish_reason if answer is not None else None,
            "error": evolved.error or (answer.error if answer is not None else None)}


def row_steps(plan: ShardPlan, i: int) -> RowSteps:
    """Row ``i``'s steps; returns its candidate record."""
    spec, pack = plan.spec, plan.pack
    elimination = spec.elimination
    evolved: Completion = yield Ask("evolve", plan.rendered[i][0],
                                    spec.sampling.evolve.model_copy(update={"stop": list(plan.engine_stops)}))
    text, was_cut = cut_at_stops(evolved.text, plan.label_stops) if evolved.ok else (evolved.text, False)
    finish = "stop" if was_cut else evolved.finish_reason
    instruction = clean_evolved_instruction(text) if evolved.ok else ""
    reason = yield Rules("early_rules", _fields(instruction, finish, evolved, None))
    validity = answer = check = None
    if reason in EVOLUTION_REASONS:
        return candidate(plan, i, instruction, finish, reason, evolved, validity, answer, check)
    invalid = validity_rule_reason(instruction, plan.parents[i], pack.operations[plan.ops[i]].kind,
                                   elimination.shorter_than_parent_ratio,
                                   "\n".join(m["content"] for m in plan.rendered[i][0]),
                                   broke_off=(was_cut or evolved.at_stop_string) and breaks_off(text),
                                   enabled=plan.rules)
    if invalid is None and VALIDITY_JUDGE_RULE in plan.rules:
        validity = yield Ask("validity", *validity_request(pack, plan.parents[i], instruction, spec.sampling.validity))
        invalid = validity_result(validity)
    if invalid is not None:
        return candidate(plan, i, instruction, finish, invalid, evolved, validity, answer, check)
    answer = yield Ask("respond", pack.answer_messages(instruction, "")[0], spec.sampling.respond)
    reason = yield Rules("late_rules", _fields(instruction, finish, evolved, answer))
    if reason is None and EQUALITY_RULE in plan.rules:
        check = yield Ask("equality", *equality_request(pack, plan.parents[i], instruction, spec.sampling.equality,
                                                        elimination.paper_equality))
        reason = equality_result(check)
    return candidate(plan, i, instruction, finish, reason, evolved, validity, answer, check)


def _method(completion: Completion | None) -> str | None:
    if completion is None or not completion.ok:
        return None
    return "constrained" if completion.constrained else "text"


def _raw(completion: Completion | None) -> str | None:
    if completion is None:
        return None
    return completion.text if completion.ok else completion.error


def candidate(plan: ShardPlan, i: int, instruction: str, finish: str | None, reason: str | None,
              evolved: Completion, validity: Completion | None, answer: Completion | None,
              check: Completion | None) -> dict[str, Any]:
    """Row ``i``'s candidate record: ``evolved`` or ``rejected`` with its reason, and its whole lineage."""
    row = plan.rows[i]
    done = [c for c in (evolved, validity, answer, check) if c is not None]
    return {
        "id": record_id(f"{row['id']}\n{plan.round_index}\n{instruction}"),
        "root_id": row["root_id"],
        "parent_id": row["id"],
        "round": plan.round_index,
        "operation": plan.ops[i],
        "instruction": instruction,
        "input": "",
        "content_key": content_key(instruction),
        "response": answer.text if answer is not None and answer.ok else None,
        "status": "rejected" if reason else "evolved",
        "reject_reason": reason,
        "model": plan.models["evolve"],
        "respond_model": plan.models["respond"],
        "judge_model": plan.models["judge"],
        "prompt_sha": plan.rendered[i][1],
        "prompt_tokens": sum(c.prompt_tokens for c in done),
        "completion_tokens": sum(c.completion_tokens for c in done),
        "finish_reason": finish,
        "response_prompt_sha": plan.pack.answer_messages("x", "")[1] if answer is not None else None,
        "response_finish_reason": answer.finish_reason if answer is not None else None,
        "raw_evolution": evolved.text if evolved.ok else evolved.error,
        "equality_raw": _raw(check),
        "equality_method": _method(check),
        "equality_margin": check.choice_margin if check is not None else None,
        "validity_raw": _raw(validity),
        "validity_method": _method(validity),
        "validity_margin": validity.choice_margin if validity is not None else None,
        "meta": row.get("meta"),  # the seed's source fields, down the whole lineage
    }
