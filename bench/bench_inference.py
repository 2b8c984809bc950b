"""Overhead of the project's VLLMBackend over raw ``vllm.LLM.chat`` on the same engine and sampling parameters.

    python bench/bench_inference.py [--n 32] [--max-tokens 64] [--repeats 2] [--models-dir DIR]

Prints one JSON line. Greedy decoding, so both paths generate the same tokens and do the same work; the runs
alternate (backend, raw, backend, raw, ...) after a warm-up so neither gets a warmer engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_conversations(n: int) -> list[list[dict[str, str]]]:
    """The first ``n`` demo seeds as single-turn chat conversations (input appended to the instruction)."""
    convs = []
    with (ROOT / "data" / "demo_seeds.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            convs.append([{"role": "user", "content": text}])
            if len(convs) == n:
                break
    return convs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models-dir", default=None)
    args = parser.parse_args()

    import os

    from tasks.core.config import EnvSettings, LLMConfig, LLMEnvSettings
    from tasks.llm.base import SamplingParams
    from tasks.llm.factory import get_backend
    from tasks.llm.vllm_backend import get_vllm_engine
    from tasks.llm.vllm_engine import engine_kwargs, on_cpu
    from tasks.llm.vllm_io import to_vllm_sampling_params

    env = EnvSettings(llm=LLMEnvSettings(models_dir=args.models_dir)) if args.models_dir else EnvSettings()
    backend = get_backend(LLMConfig(backend="vllm", model="default"), env)
    t0 = time.perf_counter()
    llm, _ = get_vllm_engine(backend.model, backend.engine_args)
    startup_s = time.perf_counter() - t0
    convs = load_conversations(args.n)
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=args.max_tokens)
    vparams = to_vllm_sampling_params(params)
    backend.generate(convs[:4], params)  # warm-up

    timings: dict[str, list[tuple[float, int]]] = {"backend": [], "raw": []}
    texts: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        t = time.perf_counter()
        completions = backend.generate(convs, params)
        timings["backend"].append((time.perf_counter() - t, sum(c.completion_tokens for c in completions)))
        texts["backend"] = [c.text for c in completions]
        t = time.perf_counter()
        outputs = llm.chat(convs, vparams, use_tqdm=False)
        timings["raw"].append((time.perf_counter() - t, sum(len(o.outputs[0].token_ids) for o in outputs)))
        texts["raw"] = [o.outputs[0].text for o in outputs]

    def tok_s(runs: list[tuple[float, int]]) -> float:
        return sum(n for _, n in runs) / sum(s for s, _ in runs)

    backend_tps, raw_tps = tok_s(timings["backend"]), tok_s(timings["raw"])
    print(json.dumps({
        "model": backend.model_name,
        "engine_args": engine_kwargs(backend.engine_args, on_cpu()),
        "vllm_env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_CPU_")},
        "prompts": len(convs),
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "engine_startup_s": round(startup_s, 1),
        "generated_tokens_per_run": timings["backend"][0][1],
        "backend_tokens_per_s": round(backend_tps, 1),
        "raw_vllm_tokens_per_s": round(raw_tps, 1),
        "backend_over_raw": round(backend_tps / raw_tps, 3),
        "same_outputs": texts["backend"] == texts["raw"],
    }))


if __name__ == "__main__":
    main()
