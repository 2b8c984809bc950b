"""Engine saturation: a round through the whole pipeline versus the same engine given each stage in one call.

    python bench/bench_engine_saturation.py [--seeds 40] [--shard-size 10] [--parallel 4] [--max-tokens 384]
                                            [--mode streaming|batch]

The pipeline run (Prefect, shards, cleaning, elimination, validity and equality checks, dedup, shard I/O) records
every request it sends to the engine. Then the same engine gets all of the round's evolve prompts in one call,
all its answer prompts in one call and all its judge prompts in one call: no shards, no barriers but the stages'.
Greedy, prefix cache off (the reference sends the same prompts again), up to ``--max-tokens`` new tokens per
evolution and answer, so lengths vary. ``--mode`` sets ``orchestration.streaming`` (``streaming``: vLLM's async
engine, rows streamed; ``batch``: ``vllm.LLM``, stage by stage per shard under the engine lock); the reference
runs on that same engine. Prints one JSON line: generated tokens/s of each and their ratio (target: 0.95).
"""

from __future__ import annotations

import argparse
import json
import time

from round_bench import StreamingRecordingBackend, bundled_backend, one_round


def stage_of(params, respond) -> str:
    """Which stage a request belongs to: judges force a choice, answers use the respond settings."""
    if params.choices is not None:
        return "judge"
    return "answer" if params == respond else "evolve"


def one_call(backend, items: list[tuple[list, object]]) -> list:
    """All ``items`` given to the engine at once, each with its own sampling parameters."""
    from tasks.llm.aio import gather_on_loop
    from tasks.llm.vllm_backend import chat_in_groups
    from tasks.llm.vllm_io import completion_of, to_vllm_sampling_params

    if backend.streaming:
        return gather_on_loop(backend.acomplete(c, p) for c, p in items)
    outputs = chat_in_groups(backend.engine, [c for c, _ in items], [to_vllm_sampling_params(p) for _, p in items])
    return [completion_of(o, p.choices) for o, (_, p) in zip(outputs, items, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--shard-size", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=4, help="orchestration.max_parallel_shards")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--mode", choices=("streaming", "batch"), default="streaming")
    parser.add_argument("--validity", action="store_true",
                        help="keep the LLM validity check (the bundled 135M judge rejects most rewrites, which "
                             "leaves the answer stage nearly empty)")
    parser.add_argument("--reference-runs", type=int, default=2, help="reference passes; the ratio uses their mean")
    args = parser.parse_args()
    streaming = args.mode == "streaming"

    from tasks.core.config import SamplingParams
    from tasks.llm.vllm_backend import shutdown_engines

    backend = bundled_backend(streaming)
    recorder = StreamingRecordingBackend(backend)
    greedy = {"temperature": 0.0, "top_p": 1.0, "max_tokens": args.max_tokens}
    warm_up = [[{"role": "user", "content": "Warm up."}]]
    with one_round(recorder, "bench-saturation", args.seeds, args.shard_size, args.parallel,
                   lambda _: backend.generate(warm_up, SamplingParams(temperature=0.0, max_tokens=4)),
                   sampling={"evolve": greedy, "respond": greedy}, elimination={"validity_check": args.validity},
                   orchestration={"streaming": streaming}) as (config, pool, summary, pipeline_s):
        stages: dict[str, list] = {"evolve": [], "answer": [], "judge": []}
        for conversations, params in recorder.batches:
            for conversation in conversations:
                stages[stage_of(params, config.sampling.respond)].append((conversation, params))
        references = []
        for _ in range(args.reference_runs):
            tokens, stage_s = 0, {}
            for name, items in stages.items():
                started = time.perf_counter()
                tokens += sum(c.completion_tokens for c in one_call(backend, items))
                stage_s[name] = round(time.perf_counter() - started, 2)
            references.append({"tokens": tokens, "s": round(sum(stage_s.values()), 2), "stage_s": stage_s,
                               "tok_s": round(tokens / sum(stage_s.values()), 1)})
    shutdown_engines()
    pipeline_tok_s = summary.completion_tokens / pipeline_s
    reference_tok_s = sum(r["tok_s"] for r in references) / len(references)
    print(json.dumps({
        "bench": "engine_saturation", "mode": args.mode, "seeds": args.seeds, "shards": len(pool),
        "parallel_shards": args.parallel, "max_tokens": args.max_tokens,
        "requests": {k: len(v) for k, v in stages.items()},
        "pipeline_tokens": summary.completion_tokens, "pipeline_s": round(pipeline_s, 2),
        "pipeline_tok_s": round(pipeline_tok_s, 1),
        "references": references, "reference_tok_s": round(reference_tok_s, 1),
        "ratio": round(pipeline_tok_s / reference_tok_s, 3),
    }))


if __name__ == "__main__":
    main()
