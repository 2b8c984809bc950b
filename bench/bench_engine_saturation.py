"""Engine saturation: a round, then the scoring stage, through the whole pipeline versus the same engine given each
stage in one call.

    python bench/bench_engine_saturation.py [--seeds 40] [--shard-size 10] [--parallel 4] [--max-tokens 384]
                                            [--mode streaming|batch] [--no-score]

The pipeline run (Prefect, shards, cleaning, elimination, validity and equality checks, dedup, shard I/O) records
every request it sends to the engine. Then the same engine gets all of the round's evolve prompts in one call,
all its answer prompts in one call and all its judge prompts in one call: no shards, no barriers but the stages'.
Greedy, prefix cache off (the reference sends the same prompts again), up to ``--max-tokens`` new tokens per
evolution and answer, so lengths vary. ``--mode`` sets ``orchestration.streaming`` (``streaming``: vLLM's async
engine, rows streamed; ``batch``: ``vllm.LLM``, stage by stage per shard under the engine lock); the reference
runs on that same engine. Then the scoring stage (``score:``, embeddings off: they are another engine) scores the
round's rows through its flow (one task per seed shard, the round's task runner), and the same engine gets all of
its scoring prompts (complexity and quality, a forced choice of one token each) in one call: one reference pass
before the stage and the others after it, so a drift of the machine's load weighs on both sides; the stage's
seconds are also split into before its first call to the engine, its calls, and after the last. Prints one JSON
line: the round's generated tokens/s of each and their ratio, the scoring stage's scored items/s of each and their
ratio (target for both: 0.95).
"""

from __future__ import annotations

import argparse
import json
import time

from round_bench import StreamingRecordingBackend, bundled_backend, one_round


def stage_of(params, respond) -> str:
    """Which stage a request of a round belongs to: judges force a choice, answers use the respond settings."""
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


def score_stage(config, pool, summary, parallel: int, recorder) -> tuple[object, float, dict[str, float]]:
    """The scoring stage over the round's rows through its flow, on the round's task runner: its summary, its
    seconds, and where they went: before the first shard's call to the engine, from it to the end of the last
    one, after that (the calls timed around ``recorder.generate``, which each score shard calls once)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.evol_score import evol_score
    from tasks.runtime.resolve import build_context
    from tasks.score.shard import score_inputs

    ctx, calls, generate = build_context(config), [], recorder.generate

    def timed(conversations, params):
        began = time.perf_counter()
        try:
            return generate(conversations, params)
        finally:
            calls.append((began, time.perf_counter()))

    recorder.generate = timed
    started = time.perf_counter()
    try:
        scored = evol_score.with_options(task_runner=ThreadPoolTaskRunner(max_workers=parallel))(
            ctx, score_inputs(pool, [summary]))
    finally:
        ended, recorder.generate = time.perf_counter(), generate
    first, last = min(b for b, _ in calls), max(e for _, e in calls)
    split = {"before_first_call_s": first - started, "engine_calls_s": last - first, "after_last_call_s": ended - last}
    return scored, ended - started, {k: round(v, 2) for k, v in split.items()}


def scoring_items(config, pool, summary) -> list[tuple[list, object]]:
    """The scoring stage's requests as its shards build them: each shard's rows read, their prompts made."""
    from prompts import load_pack
    from storage import read_shard
    from tasks.core.options import SCORE_CHOICES
    from tasks.score.rows import score_requests
    from tasks.score.shard import score_inputs

    pack, params = load_pack(config.prompt_pack), config.score.sampling.model_copy(update={"choices": SCORE_CHOICES})
    items = []
    for refs in score_inputs(pool, [summary]):
        rows = [row for ref in refs for row in read_shard(ref.uri).to_pylist()]
        items += [(c, params) for c in score_requests(rows, pack, config.score)[0]]
    return items


def answered(completions: list) -> int:
    return sum(1 for c in completions if c.ok)


def reference(backend, items: list[tuple[list, object]], runs: int, count) -> list[dict]:
    """``runs`` passes of ``items`` given to the engine in one call: seconds and ``count(completions)`` of each."""
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        done = one_call(backend, items)
        seconds = time.perf_counter() - started
        out.append({"s": round(seconds, 2), "count": count(done), "rate": round(count(done) / seconds, 2)})
    return out


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
    parser.add_argument("--no-score", dest="score", action="store_false", help="measure the round only")
    args = parser.parse_args()
    streaming = args.mode == "streaming"

    from tasks.core.config import SamplingParams
    from tasks.llm.vllm_backend import shutdown_engines

    backend = bundled_backend(streaming)
    recorder = StreamingRecordingBackend(backend)
    greedy = {"temperature": 0.0, "top_p": 1.0, "max_tokens": args.max_tokens}
    warm_up = [[{"role": "user", "content": "Warm up."}]]
    scoring = {"score": {"embeddings": False}} if args.score else {}
    with one_round(recorder, "bench-saturation", args.seeds, args.shard_size, args.parallel,
                   lambda _: backend.generate(warm_up, SamplingParams(temperature=0.0, max_tokens=4)),
                   sampling={"evolve": greedy, "respond": greedy}, elimination={"validity_check": args.validity},
                   orchestration={"streaming": streaming}, **scoring) as (config, pool, summary, pipeline_s):
        round_batches = len(recorder.batches)
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
        score = None
        if args.score:
            items = scoring_items(config, pool, summary)
            score_refs = reference(backend, items, 1, answered)
            scored, score_s, split = score_stage(config, pool, summary, args.parallel, recorder)
            sent = [(c, p) for conversations, p in recorder.batches[round_batches:] for c in conversations]
            if sorted(json.dumps([c, p.model_dump()]) for c, p in sent) != sorted(
                    json.dumps([c, p.model_dump()]) for c, p in items):
                raise SystemExit("the scoring stage sent other requests than the reference's")
            score_refs += reference(backend, items, max(1, args.reference_runs - 1), answered)
            items_scored = scored.total("complexity") + scored.total("quality")
            score_rate = sum(r["rate"] for r in score_refs) / len(score_refs)
            score = {"rows": scored.total("rows"), "shards": len(scored.shards), "requests": len(items),
                     "calls": len(recorder.batches) - round_batches, "prompt_tokens": scored.total("prompt_tokens"),
                     "pipeline_s": round(score_s, 2), "pipeline_split": split,
                     "pipeline_items_s": round(items_scored / score_s, 2),
                     "references": score_refs, "reference_items_s": round(score_rate, 2),
                     "ratio": round(items_scored / score_s / score_rate, 3)}
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
        **({"score": score} if score is not None else {}),
    }))


if __name__ == "__main__":
    main()
