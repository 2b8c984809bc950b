"""A measured sample for the estimate (``evol plan --measure N``): round 1 of N seeds through the run's own
backends and elimination, every call counted by kind (evolve, validity, respond, equality) and timed."""

from __future__ import annotations

import time
from typing import Any

from prompts import load_pack
from tasks.context import RunContext
from tasks.estimate import CALLS, CallFigures, Figures
from tasks.llm.base import Completion, Conversation, LLMBackend, SamplingParams
from tasks.llm.factory import StageBackends, stage_backends
from tasks.validity import VALIDITY_CHOICES


class CallLog:
    """Calls, prompt and completion tokens and seconds, by kind of call."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[float]] = {kind: [0, 0, 0, 0.0] for kind in CALLS}

    def add(self, kind: str, completions: list[Completion], seconds: float) -> None:
        entry = self.by_kind[kind]
        entry[0] += len(completions)
        entry[1] += sum(c.prompt_tokens for c in completions)
        entry[2] += sum(c.completion_tokens for c in completions)
        entry[3] += seconds


class CountingBackend:
    """A stage's backend that records each call in a :class:`CallLog` (judge calls by their choices)."""

    def __init__(self, backend: LLMBackend, stage: str, log: CallLog):
        self.backend, self.stage, self.log = backend, stage, log
        self.model_name = backend.model_name

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[Completion]:
        kind = self.stage
        if self.stage == "judge":
            kind = "validity" if params.choices == VALIDITY_CHOICES else "equality"
        started = time.perf_counter()
        out = self.backend.generate(conversations, params)
        self.log.add(kind, out, time.perf_counter() - started)
        return out


def measured_figures(ctx: RunContext, rows: list[dict[str, Any]]) -> Figures:
    """Run round 1 of ``rows`` (a few seeds) and take the per-call figures and the speed from it; engines
    start before the clock does."""
    from tasks.evolve import evolve_rows

    backends = stage_backends(ctx.evolve.llm)
    for backend in {id(b): b for b in (backends.evolve, backends.respond, backends.judge)}.values():
        getattr(backend, "engine", None)  # a local engine starts on first use: start it now
    log = CallLog()
    counting = StageBackends(*(CountingBackend(getattr(backends, s), s, log) for s in ("evolve", "respond", "judge")))
    evolve_rows(rows, 1, ctx.evolve, counting, load_pack(ctx.config.prompt_pack))
    calls = {kind: CallFigures(per_row=n / len(rows), prompt=prompt / n if n else 0.0,
                               completion=completion / n if n else 0.0)
             for kind, (n, prompt, completion, _) in log.by_kind.items()}
    seconds = sum(e[3] for e in log.by_kind.values())
    completion = sum(e[2] for e in log.by_kind.values())
    return Figures(source=f"measured on {len(rows)} seeds", calls=calls,
                   tokens_per_second=completion / seconds if seconds > 0 else None,
                   speed_source=f"measured on {len(rows)} seeds, engine start excluded")
