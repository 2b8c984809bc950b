"""How many tokens a run costs and how long its engine takes, estimated before it runs (README: `evol plan`).

Prompt tokens: the seeds and templates, counted with the evolving model's tokenizer. Calls per row and completion
tokens per call: candidate rows of a measured sample or of a previous run of the same model, else the sampling
caps (an upper bound). Engine time: the completion tokens at the measured or the previous run's speed.

The scoring stage (`evol plan` only), per stage: ``score`` (complexity and quality of every row) and ``response
evolution`` (the rewrites and their quality scores), the calls, their prompt tokens and the most tokens they may
generate (each call's ``max_tokens``). The rows scored are the seeds plus each round's evolutions: the seed count
times the pool's expected growth, one ``evolved`` share of the pool per round (from the same source as the rounds'
figures; the sampling caps: every row). An evolved instruction and its response are as long as the rounds' figures
take the evolve and respond calls' completions; a seed's are counted on the seeds; a rewrite is taken to be as long
as the response it rewrites (the prompts allow 10 to 20 words more) and every rewrite to be usable, so scored.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from prompts import PromptPack, load_pack
from storage import RunLayout, ShardRef, duck_connect, list_committed_shards, read_parquet_sql, resolve
from storage.schema import records_table
from tasks.core.config import EnvSettings, LLMConfig, RunConfig
from tasks.core.context import RunContext
from tasks.core.elimination import EQUALITY_RULE, VALIDITY_JUDGE_RULE
from tasks.core.summaries import Estimate, RoundEstimate, StageEstimate
from tasks.core.text import parent_text
from tasks.evolve.operations import evolve_prompts

CALLS = ("evolve", "validity", "respond", "equality")
CALLED = ("raw_evolution", "validity_raw", "response_prompt_sha", "equality_raw")  # set when the call was made
OUTPUTS = ("raw_evolution", "validity_raw", "response", "equality_raw")  # what the call wrote
SAMPLE_ROWS = 2000  # seeds counted (and previous candidates read); the sums are scaled to every row


class Figures(BaseModel):
    """Calls per pool row and round and completion tokens per call, by kind of call, and their source."""

    source: str
    per_row: dict[str, float]
    completion: dict[str, float]
    evolved: float = 1.0  # the share of a round's pool that evolves
    first_round: tuple[float, float] | None = None  # measured prompt and completion tokens per row in round 1
    tokens_per_second: float | None = None
    speed_source: str | None = None


class WordCounter:
    name = "whitespace words (the scripted backend's count)"
    joiner = " "  # a conversation is counted as its messages' contents joined by it

    def text(self, text: str) -> int:
        return len(text.split())

    def messages(self, conversation: list[dict[str, str]]) -> int:
        return self.text(self.joiner.join(m["content"] for m in conversation))


class CharCounter(WordCounter):
    name, joiner = "characters / 4, rounded up (no tokenizer at hand)", ""

    def text(self, text: str) -> int:
        return math.ceil(len(text) / 4)


class ModelTokenizer(WordCounter):
    """The model folder's tokenizer; a conversation is counted as vLLM renders it (its chat template)."""

    def __init__(self, folder: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.name = f"the model's tokenizer ({Path(folder).name})"

    def text(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def messages(self, conversation: list[dict[str, str]]) -> int:
        from tasks.llm.vllm_io import chat_prompt_tokens

        return chat_prompt_tokens(self.tokenizer, conversation)


def token_counter(llm: LLMConfig, models_dir: str) -> WordCounter:
    """The evolving model's count: scripted -> words; a local model folder -> its tokenizer; else chars / 4."""
    if llm.backend == "scripted":
        return WordCounter()
    from tasks.llm.models import resolve_model

    folder = Path(resolve_model(llm.model, models_dir) if llm.backend == "vllm" else llm.model).expanduser()
    try:
        return ModelTokenizer(str(folder)) if folder.is_dir() else CharCounter()
    except Exception:  # a folder without a tokenizer: fall back to the documented rule
        return CharCounter()


def cap_figures(config: RunConfig) -> Figures:
    """Every call writes its ``max_tokens`` and every row reaches every enabled call: an upper bound."""
    rules = config.elimination.enabled_rules()
    checks = {"validity": VALIDITY_JUDGE_RULE in rules, "equality": EQUALITY_RULE in rules}
    return Figures(source="sampling max_tokens, every row reaching every call (an upper bound)",
                   per_row={kind: float(checks.get(kind, True)) for kind in CALLS},
                   completion={kind: getattr(config.sampling, kind).max_tokens for kind in CALLS})


def candidate_figures(con: Any, sql: str, counter: WordCounter, source: str, seconds: float,
                      completion_tokens: int, speed_source: str, **more: Any) -> Figures:
    """Figures from candidate rows (``sql``): the share of them that reached each call, the mean length of what each
    call wrote (a sample counted with ``counter``), the speed ``completion_tokens`` in ``seconds`` make; ``{rows}``
    in ``source`` and ``speed_source`` is the number of rows."""
    rows, evolved, *counts = con.execute(f"SELECT count(*), count(*) FILTER (WHERE status = 'evolved'), "
                                         f"{', '.join(f'count({c})' for c in CALLED)} FROM {sql}").fetchone()
    sample = con.execute(f"SELECT {', '.join(OUTPUTS)} FROM {sql} LIMIT {SAMPLE_ROWS}").fetchall()
    texts = [[row[i] for row in sample if row[i] is not None] for i in range(len(CALLS))]
    speed = completion_tokens / seconds if seconds > 0 else None
    return Figures(source=source.format(rows=rows), evolved=evolved / rows,
                   per_row={c: n / rows for c, n in zip(CALLS, counts, strict=True)},
                   completion={c: sum(max(1, counter.text(t)) for t in found) / len(found) if found else 0.0
                               for c, found in zip(CALLS, texts, strict=True)},
                   tokens_per_second=speed, speed_source=speed_source.format(rows=rows) if speed else None, **more)


def measured_figures(ctx: RunContext, rows: list[dict[str, Any]], counter: WordCounter) -> Figures:
    """Round 1 of ``rows`` (a few seeds) through the run's own backends, driven as the run drives a shard (streaming
    or batch); the engines start before the clock does."""
    from tasks.evolve.shard import evolve_rows, evolve_runtime
    from tasks.runtime.engine import start_engines

    start_engines(ctx.evolve)
    pack, backends = evolve_runtime(ctx.evolve)
    started = time.perf_counter()
    table = records_table(evolve_rows(rows, 1, ctx.evolve, backends, pack, ctx.evolve.streaming))
    seconds, n = time.perf_counter() - started, len(rows)
    prompt, done = (sum(table[c].to_pylist()) for c in ("prompt_tokens", "completion_tokens"))
    con = duck_connect()
    con.register("candidates", table)
    return candidate_figures(con, "candidates", counter, "measured on {rows} seeds", seconds, done,
                             "measured on {rows} seeds, engine start excluded", first_round=(prompt / n, done / n))


def previous_figures(ctx: RunContext, counter: WordCounter) -> Figures | None:
    """Figures from the candidate shards of the latest run of the same backend and model under the output root
    (this run's folder first), its speed from its rounds' completion tokens and wall time."""
    fs, root = resolve(ctx.config.output_root)
    llm = ctx.config.llm.for_role("evolve")
    found = []
    for path in fs.glob(f"{root}/*/config.json"):
        try:
            other = RunConfig.model_validate(json.loads(fs.cat_file(path))).llm.for_role("evolve")
        except ValueError:
            continue
        if (other.backend, other.model) == (llm.backend, llm.model):
            name = path.rstrip("/").split("/")[-2]
            found.append((name != ctx.layout.run_id, -fs.modified(path).timestamp(), name))
    for *_, name in sorted(found):
        run_uri = f"{ctx.config.output_root.rstrip('/')}/{name}"
        rounds = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.glob(f"{root}/{name}/round=*")]
        files = [u for r in rounds for u in list_committed_shards(f"{run_uri}/{r}/candidates")]
        if files:
            markers = fs.glob(resolve(RunLayout(ctx.config.output_root, name).round_marker("*"))[1])
            done = [json.loads(fs.cat_file(p))["summary"] for p in markers]
            return candidate_figures(duck_connect(*files), read_parquet_sql(files), counter,
                                     f"previous run {name} ({{rows}} candidates)", sum(s["wall_seconds"] for s in done),
                                     sum(s["completion_tokens"] for s in done), f"previous run {name}'s rounds")
    return None


def make_estimate(ctx: RunContext, refs: list[ShardRef], accepted: int, measure: int = 0,
                  previous: bool = True) -> Estimate:
    """The estimate of the run's rounds over its ``accepted`` seed rows, their lengths counted on the first seeds
    (``SAMPLE_ROWS`` or ``measure``); calls and completions measured on the first ``measure`` seeds (its round 1
    taken as measured), else from a previous run (unless ``previous`` is false), else the sampling caps."""
    config, spec, pack = ctx.config, ctx.evolve, load_pack(ctx.config.prompt_pack)
    counter = token_counter(config.llm.for_role("evolve"), EnvSettings().llm.models_dir)
    uris, limit = [r.uri for r in refs], max(SAMPLE_ROWS, measure)
    rows = duck_connect(*uris).sql(
        f"SELECT * FROM {read_parquet_sql(uris)} LIMIT {limit}").to_arrow_table().to_pylist() if refs else []
    figures = (measured_figures(ctx, rows[:measure], counter) if measure and rows else None) or \
        (previous_figures(ctx, counter) if previous else None) or cap_figures(config)
    out = []
    if rows:
        _, _, parents, rendered = evolve_prompts(rows, 1, pack, spec.random_seed, spec.operation_weights, spec.prefill)
        first = [counter.messages(msgs) for msgs, _ in rendered]  # round 1's evolution prompts, counted exactly
        seed, evolve = sum(counter.text(p) for p in parents) / len(rows), sum(first) / len(rows)
        overhead = {"evolve": evolve - seed,
                    "validity": counter.messages(pack.validity_messages("", "")[0]),
                    "respond": counter.messages(pack.answer_messages("", "")[0]),
                    "equality": counter.messages(pack.equality_messages("", "")[0])}
        per_row, done = figures.per_row, figures.completion
        evolved = done["evolve"]  # an evolved instruction: what the next round's parent is
        for k in range(1, config.rounds + 1):
            parent = seed if k == 1 else evolved
            prompt = dict(zip(CALLS, (parent, parent + evolved, evolved, parent + evolved), strict=True))
            tokens = (sum(per_row[c] * (overhead[c] + prompt[c]) for c in CALLS),
                      sum(per_row[c] * done[c] for c in CALLS))
            if k == 1 and figures.first_round:  # measured, its evolution prompts as counted on every row sampled
                measured, completion = figures.first_round
                tokens = (measured - sum(first[:measure]) / min(measure, len(first)) + evolve, completion)
            out.append(RoundEstimate(round=k, calls=round(accepted * sum(per_row.values())),
                                     prompt_tokens=round(accepted * tokens[0]),
                                     completion_tokens=round(accepted * tokens[1])))
    stages = score_estimates(ctx, rows, accepted, counter, figures.completion, figures.evolved, pack) \
        if ctx.score is not None and rows else []
    return Estimate(rows=accepted, tokenizer=counter.name, completions=figures.source, speed=figures.speed_source,
                    tokens_per_second=figures.tokens_per_second, rounds=out, stages=stages)


def score_estimates(ctx: RunContext, rows: list[dict[str, Any]], accepted: int, counter: Any,
                    completion: dict[str, float], evolved: float, pack: PromptPack) -> list[StageEstimate]:
    """The scoring stage's estimates over ``accepted`` seed rows (``rows``: the first of them, counted with
    ``counter``); ``completion``: the rounds' completion tokens per call by kind; ``evolved``: the share of the pool
    evolved per round."""
    spec = ctx.score.score
    answered = [r for r in rows if (r.get("response") or "").strip()]
    seed_q = sum(counter.text(parent_text(r)) for r in rows) / len(rows)
    seed_r = sum(counter.text(r["response"]) for r in answered) / len(answered) if answered else 0.0
    grown = accepted * ctx.config.rounds * evolved  # every round's evolutions
    seeds_answered = accepted * len(answered) / len(rows)
    # (rows, question tokens, response tokens) of the answered seeds and of the evolutions (all answered)
    groups = ((seeds_answered, seed_q, seed_r), (grown, completion["evolve"], completion["respond"]))

    def prompts(overhead: float) -> float:  # one request per answered row showing its question and response
        return sum(n * (overhead + q + r) for n, q, r in groups)

    quality_overhead = counter.messages(pack.score_messages("quality", question="", response=""))
    calls = prompt = 0.0
    if spec.complexity:  # one request per row, showing its root's every variant
        family = 1 + ctx.config.rounds * evolved
        overhead = counter.messages(pack.score_messages("complexity", questions=[], target=1))
        calls += accepted * family
        prompt += accepted * family * (overhead + seed_q + (family - 1) * completion["evolve"])
    if spec.quality:
        calls += seeds_answered + grown
        prompt += prompts(quality_overhead)
    out = [StageEstimate(stage="score", calls=round(calls), prompt_tokens=round(prompt),
                         max_completion_tokens=round(calls * spec.sampling.max_tokens))]
    evolving = spec.evolve_responses
    if evolving is not None:
        per_operation = seeds_answered + grown
        rewrite = sum(prompts(counter.messages(pack.rewrite_messages(op, "", "")[0])) for op in evolving.operations)
        rewrites = per_operation * len(evolving.operations)
        out.append(StageEstimate(
            stage="response evolution", calls=round(2 * rewrites),  # each rewrite, then its quality score
            prompt_tokens=round(rewrite + len(evolving.operations) * prompts(quality_overhead)),
            max_completion_tokens=round(rewrites * (evolving.sampling.max_tokens + spec.sampling.max_tokens))))
    return out
