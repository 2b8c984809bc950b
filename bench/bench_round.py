"""Round throughput: one round through the whole flow on vLLM versus raw ``vllm.LLM.chat`` on the same prompts.

    python bench/bench_round.py [--seeds 48] [--shard-size 16] [--max-tokens 64]

The pipeline run (Prefect, shards, cleaning, elimination, the equality check, dedup, shard I/O) records
every batch it sends to the engine; the same batches are then replayed through raw ``LLM.chat`` on the
same engine, greedy, so both generate the same tokens. Prints one JSON line: generated tokens/s of each
and their ratio (the target is 0.9 or more).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


class RecordingBackend:
    """Passes batches to the real backend and keeps them for the replay."""

    def __init__(self, inner):
        self.inner = inner
        self.model_name = inner.model_name
        self.batches: list[tuple[list, object]] = []
        self.engine_s = 0.0  # time inside the real backend (lock waits included when shards run in parallel)

    def generate(self, conversations, params):
        self.batches.append((conversations, params))
        started = time.perf_counter()
        try:
            return self.inner.generate(conversations, params)
        finally:
            self.engine_s += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=1, help="orchestration.max_parallel_shards")
    args = parser.parse_args()

    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.testing.utilities import prefect_test_harness

    from flows.evol_instruct import evol_round
    from tasks.context import build_context
    from tasks.core.config import EnvSettings, parse_run_config
    from tasks.ingest import ingest_run_seeds
    from tasks.llm.models import resolve_model
    from tasks.llm.scripted import register_scripted_backend
    from tasks.llm.vllm_backend import VLLMBackend, to_vllm_sampling_params

    # No prefix cache: the replay sends the very same prompts and would skip their prefill.
    engine_args = {"max_model_len": 2048, "enable_prefix_caching": False}
    backend = VLLMBackend(resolve_model("default", EnvSettings().llm.models_dir), engine_args)
    recorder = RecordingBackend(backend)
    register_scripted_backend(recorder, "bench-vllm")
    greedy = {"temperature": 0.0, "top_p": 1.0, "max_tokens": args.max_tokens}
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=180):
        seeds = Path(tmp) / "seeds.jsonl"
        lines = (ROOT / "data" / "demo_seeds.jsonl").read_text().splitlines()
        seeds.write_text("\n".join((lines * (args.seeds // len(lines) + 1))[: args.seeds]))
        config = parse_run_config({
            "name": "bench-round", "seeds": str(seeds), "output_root": f"{tmp}/runs", "rounds": 1,
            "shard_size": args.shard_size, "llm": {"backend": "scripted", "model": "bench-vllm"},
            "sampling": {"evolve": greedy, "respond": greedy},
            "orchestration": {"max_parallel_shards": args.parallel, "retries": 0}})
        ctx = build_context(config)
        pool = ingest_run_seeds(config, ctx.layout, ctx.ingest_key).refs
        llm = backend.engine
        llm.chat([[{"role": "user", "content": "Warm up."}]], to_vllm_sampling_params(config.sampling.equality),
                 use_tqdm=False)
        started = time.perf_counter()
        round_flow = evol_round.with_options(task_runner=ThreadPoolTaskRunner(max_workers=args.parallel))
        summary = round_flow(ctx, 1, pool, pool, sum(r.rows for r in pool))
        pipeline_s = time.perf_counter() - started
        pipeline_tokens = summary.completion_tokens

        started = time.perf_counter()
        raw_tokens = 0
        for conversations, params in recorder.batches:
            outputs = llm.chat(conversations, to_vllm_sampling_params(params), use_tqdm=False)
            raw_tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        raw_s = time.perf_counter() - started
    print(json.dumps({
        "bench": "round", "seeds": args.seeds, "shards": -(-args.seeds // args.shard_size),
        "batches": len(recorder.batches), "max_tokens": args.max_tokens, "parallel_shards": args.parallel,
        "pipeline_tokens": pipeline_tokens, "pipeline_s": round(pipeline_s, 2),
        "pipeline_tok_s": round(pipeline_tokens / pipeline_s, 1),
        "pipeline_backend_s": round(recorder.engine_s, 2),
        "pipeline_outside_backend_s": round(pipeline_s - recorder.engine_s, 2),
        "raw_tokens": raw_tokens, "raw_s": round(raw_s, 2), "raw_tok_s": round(raw_tokens / raw_s, 1),
        "ratio": round((pipeline_tokens / pipeline_s) / (raw_tokens / raw_s), 3),
    }))


if __name__ == "__main__":
    main()
