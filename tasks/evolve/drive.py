"""Drivers of the rows' steps (``tasks.evolve_steps``): stage by stage in batches, or streamed row by row.

- ``drive_batch``: every row's evolution in one backend call, then the text rules over the whole shard, then every
  validity judgement in one call, and so on: a barrier at each stage.
- ``drive_streaming``: each row takes its next step as soon as its previous one is done, on the process's
  streaming loop (``tasks.llm.aio``); the rows of every shard of the process are in flight together. Text rules
  are checked in small batches (one DuckDB query costs about the same for one row or hundreds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from tasks.core.config import EliminationConfig
from tasks.evolve.steps import STEP_ORDER, Ask, RowSteps, ShardPlan, Step
from tasks.judge.rules import text_rule_reasons
from tasks.llm.base import Completion, LLMBackend
from tasks.llm.factory import RoleBackends

RowDone = Callable[[dict[str, Any]], None]  # called with each row's candidate as soon as it is made
RULE_FIELDS = ("instruction", "response", "finish_reason", "response_finish_reason", "error")


def _advance(gen: RowSteps, result: Any) -> tuple[Step | None, dict[str, Any] | None]:
    """Send a step's result; the row's next step, or its candidate when it is done."""
    try:
        return gen.send(result), None
    except StopIteration as done:
        return None, done.value


def _rule_table(fields: list[dict[str, Any]]) -> pa.Table:
    return pa.table({name: [f[name] for f in fields] for name in RULE_FIELDS})


def _scaffolding(plan: ShardPlan) -> tuple[str, ...]:
    return tuple(plan.spec.elimination.scaffolding_phrases or plan.pack.scaffolding_phrases)


def drive_batch(plan: ShardPlan, stages: RoleBackends, on_row: RowDone | None = None) -> list[dict[str, Any]]:
    """Run the shard's rows stage by stage: the rows at the earliest stage go together, in one call per stage."""
    gens = plan.steps()
    pending: dict[int, Step] = {i: next(gen) for i, gen in enumerate(gens)}
    out: list[dict[str, Any] | None] = [None] * len(gens)
    while pending:
        stage = min((step.stage for step in pending.values()), key=STEP_ORDER.index)
        group = sorted(i for i, step in pending.items() if step.stage == stage)
        steps = [pending[i] for i in group]
        if isinstance(steps[0], Ask):
            backend: LLMBackend = getattr(stages, steps[0].role)
            results: list[Any] = backend.generate([s.conversation for s in steps], steps[0].params)
        else:
            results = text_rule_reasons(_rule_table([s.fields for s in steps]), plan.spec.elimination,
                                        _scaffolding(plan))
        for i, result in zip(group, results, strict=True):
            step, done = _advance(gens[i], result)
            if step is None:
                del pending[i]
                out[i] = done
                if on_row is not None:
                    on_row(done)
            else:
                pending[i] = step
    return [c for c in out if c is not None]


async def ask(backend: LLMBackend, step: Ask) -> Completion:
    """One completion from a backend: its ``acomplete`` when it streams, else a one-item batch in a thread."""
    acomplete = getattr(backend, "acomplete", None)
    if acomplete is not None:
        return await acomplete(step.conversation, step.params)
    return (await asyncio.to_thread(backend.generate, [step.conversation], step.params))[0]


class RuleBatcher:
    """Checks the text rules of rows that arrive one by one, in batches: at most one query per ``interval`` s.

    A check that arrives after a quiet spell runs at once; under load the checks that arrive within an interval
    share one query, so the cost stays bounded however many rows are in flight.
    """

    def __init__(self, elimination: EliminationConfig, scaffolding: tuple[str, ...], interval: float = 0.25):
        self.elimination = elimination
        self.scaffolding = scaffolding
        self.interval = interval
        self.queries = 0
        self._queue: list[tuple[dict[str, Any], asyncio.Future[str | None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._last = float("-inf")

    async def check(self, fields: dict[str, Any]) -> str | None:
        """The reject reason of one row's fields, or None."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._queue.append((fields, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queue:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            batch, self._queue = self._queue, []
            self._last = time.monotonic()
            self.queries += 1
            try:
                reasons = await asyncio.to_thread(text_rule_reasons, _rule_table([f for f, _ in batch]),
                                                  self.elimination, self.scaffolding)
            except Exception as err:  # every row of the batch fails with it, as a batch query would
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), reason in zip(batch, reasons, strict=True):
                if not future.done():  # a cancelled row (its shard failed) takes no result
                    future.set_result(reason)


_BATCHERS: dict[str, RuleBatcher] = {}


def rule_batcher(plan: ShardPlan) -> RuleBatcher:
    """The loop's batcher for the plan's rule settings (shards of one run share it); call it on the loop."""
    key = f"{plan.spec.elimination.model_dump_json()}\n{_scaffolding(plan)}"
    if key not in _BATCHERS:
        _BATCHERS[key] = RuleBatcher(plan.spec.elimination, _scaffolding(plan))
    return _BATCHERS[key]


async def _row(gen: RowSteps, stages: RoleBackends, rules: RuleBatcher, on_row: RowDone | None = None
               ) -> dict[str, Any]:
    step, done = _advance(gen, None)
    while step is not None:
        if isinstance(step, Ask):
            result: Any = await ask(getattr(stages, step.role), step)
        else:
            result = await rules.check(step.fields)
        step, done = _advance(gen, result)
    assert done is not None
    if on_row is not None:
        on_row(done)
    return done


async def drive_streaming(plan: ShardPlan, stages: RoleBackends, on_row: RowDone | None = None
                          ) -> list[dict[str, Any]]:
    """Run every row of the shard at once, each at its own pace; a fatal backend error stops them all."""
    rules = rule_batcher(plan)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_row(gen, stages, rules, on_row)) for gen in plan.steps()]
    except BaseExceptionGroup as errors:  # the shard task sees the error itself (BackendError), as in a batch
        raise errors.exceptions[0] from None
    return [t.result() for t in tasks]
