"""What the round benchmarks share: a backend that records what the pipeline sends to the engine, and one round of
the whole flow on the demo seeds with that backend."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


class RecordingBackend:
    """Passes every batch to the real backend and keeps it, with the time spent inside the real backend (lock waits
    included when shards run in parallel)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.model_name = inner.model_name
        self.batches: list[tuple[list, Any]] = []
        self.engine_s = 0.0

    def generate(self, conversations, params):
        self.batches.append((conversations, params))
        started = time.perf_counter()
        try:
            return self.inner.generate(conversations, params)
        finally:
            self.engine_s += time.perf_counter() - started


class StreamingRecordingBackend(RecordingBackend):
    """Also streams rows: each ``acomplete`` request is kept as a batch of one."""

    async def acomplete(self, conversation, params):
        self.batches.append(([conversation], params))
        return await self.inner.acomplete(conversation, params)


def bundled_backend(streaming: bool = False) -> Any:
    """The bundled model on vLLM, prefix cache off: a replay or a reference sends the very same prompts
    again and would skip their prefill."""
    from tasks.core.config import EnvSettings
    from tasks.llm.models import resolve_model
    from tasks.llm.vllm_backend import VLLMBackend

    engine_args = {"max_model_len": 2048, "enable_prefix_caching": False}
    return VLLMBackend(resolve_model("default", EnvSettings().llm.models_dir), engine_args, streaming=streaming)


def demo_seed_lines(n: int) -> list[str]:
    """``n`` seed lines from the demo seeds; past their 96, copies whose instruction ends "(variant K)" (ingest
    drops exact duplicates)."""
    rows = [json.loads(line) for line in (ROOT / "data" / "demo_seeds.jsonl").read_text().splitlines()]
    out = []
    for k in range(n // len(rows) + 1):
        out += [json.dumps({**row, "instruction": f"{row['instruction']} (variant {k})"} if k else row) for row in rows]
    return out[:n]


@contextmanager
def one_round(recorder: RecordingBackend, name: str, seeds: int, shard_size: int, parallel: int,
              warm_up: Callable[[Any], None], **settings: Any) -> Iterator[tuple[Any, list, Any, float]]:
    """Round 1 of a run on ``seeds`` demo seeds with ``recorder`` as its backend (``settings``: more config keys;
    ``orchestration`` is merged), inside Prefect's test harness: yields the config, the seed pool, the round's
    summary and its wall seconds. ``warm_up(config)`` runs after ingest, before the clock starts."""
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.testing.utilities import prefect_test_harness

    from flows.evol_instruct import evol_round
    from tasks.core.config import parse_run_config
    from tasks.ingest.seeds import ingest_run_seeds
    from tasks.llm.scripted import register_scripted_backend
    from tasks.runtime.resolve import build_context

    register_scripted_backend(recorder, "bench-vllm")
    orchestration = {"max_parallel_shards": parallel, "retries": 0, **settings.pop("orchestration", {})}
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=180):
        seeds_file = Path(tmp) / "seeds.jsonl"
        seeds_file.write_text("\n".join(demo_seed_lines(seeds)))
        config = parse_run_config({
            "name": name, "seeds": str(seeds_file), "output_root": f"{tmp}/runs", "rounds": 1,
            "shard_size": shard_size, "llm": {"backend": "scripted", "model": "bench-vllm"},
            "orchestration": orchestration, **settings})
        ctx = build_context(config)
        pool = ingest_run_seeds(config, ctx.layout, ctx.ingest_key).refs
        warm_up(config)
        started = time.perf_counter()
        round_flow = evol_round.with_options(task_runner=ThreadPoolTaskRunner(max_workers=parallel))
        summary = round_flow(ctx, 1, pool, pool, sum(r.rows for r in pool))
        yield config, pool, summary, time.perf_counter() - started
