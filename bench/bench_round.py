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
import time

from round_bench import RecordingBackend, bundled_backend, one_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=1, help="orchestration.max_parallel_shards")
    args = parser.parse_args()

    from tasks.llm.vllm_io import to_vllm_sampling_params

    backend = bundled_backend()
    recorder = RecordingBackend(backend)
    greedy = {"temperature": 0.0, "top_p": 1.0, "max_tokens": args.max_tokens}
    llm = backend.engine

    def warm_up(config) -> None:
        llm.chat([[{"role": "user", "content": "Warm up."}]], to_vllm_sampling_params(config.sampling.equality),
                 use_tqdm=False)

    with one_round(recorder, "bench-round", args.seeds, args.shard_size, args.parallel, warm_up,
                   sampling={"evolve": greedy, "respond": greedy}) as (_, _, summary, pipeline_s):
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
