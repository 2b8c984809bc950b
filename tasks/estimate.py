"""How many tokens a run costs and how long its engine takes, estimated before it runs.

Per round every pool row makes up to four calls: evolve, the validity judge, respond, the equality judge.
Prompt tokens come from the seeds and the templates, counted with the evolving model's tokenizer (the
scripted backend's whitespace words; characters / 4 when no tokenizer is at hand). Round 1's evolution
prompts are rendered and counted exactly (each seed's operation is known in advance); in later rounds a
parent is the previous round's evolution. Completion tokens per call, and the share of rows that reach each
call, come from (best first) a measured sample (``evol plan --measure N``), a previous run of the same model
(its candidate shards), or the sampling caps (every call writes ``max_tokens`` and every row reaches every
call: an upper bound). Engine time is the completion tokens at the completion tokens per second of the
measured sample or of the previous run's rounds (their wall time).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from prompts import PromptPack
from storage import StorageSettings, duck_connect, list_committed_shards, read_parquet_sql, resolve
from tasks.core.config import LLMConfig
from tasks.operations import evolve_prompts

CALLS = ("evolve", "validity", "respond", "equality")
SAMPLE_ROWS = 2000  # seeds counted (and previous candidates read); the sums are scaled to every row


class CallFigures(BaseModel):
    """One kind of call: how many per pool row and round, its completion tokens, its measured prompt tokens."""

    per_row: float
    completion: float
    prompt: float | None = None  # measured in round 1; None: counted from the templates


class Figures(BaseModel):
    """Where the per-call figures and the speed come from."""

    source: str
    calls: dict[str, CallFigures]
    tokens_per_second: float | None = None
    speed_source: str | None = None


class RoundEstimate(BaseModel):
    round: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    share: float = 1.0  # of the round still to compute (its other shards are reused)


class Estimate(BaseModel):
    """A run's estimate, per round; the totals count what is still to compute."""

    rows: int
    tokenizer: str
    completions: str
    speed: str | None = None
    tokens_per_second: float | None = None
    rounds: list[RoundEstimate]

    def total(self, field: str) -> int:
        return round(sum(getattr(r, field) * r.share for r in self.rounds))

    @property
    def engine_seconds(self) -> float | None:
        return self.total("completion_tokens") / self.tokens_per_second if self.tokens_per_second else None


class TokenCounter(Protocol):
    name: str

    def text(self, text: str) -> int: ...

    def messages(self, conversation: list[dict[str, str]]) -> int: ...


class WordCounter:
    name = "whitespace words (the scripted backend's count)"

    def text(self, text: str) -> int:
        return len(text.split())

    def messages(self, conversation: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) for m in conversation)


class CharCounter:
    name = "characters / 4, rounded up (no tokenizer at hand)"

    def text(self, text: str) -> int:
        return math.ceil(len(text) / 4)

    def messages(self, conversation: list[dict[str, str]]) -> int:
        return math.ceil(sum(len(m["content"]) for m in conversation) / 4)


class ModelTokenizer:
    """The model folder's tokenizer; a conversation is counted as vLLM renders it (its chat template)."""

    def __init__(self, folder: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.name = f"the model's tokenizer ({Path(folder).name})"

    def text(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def messages(self, conversation: list[dict[str, str]]) -> int:
        from tasks.llm.vllm_backend import chat_prompt_tokens

        return chat_prompt_tokens(self.tokenizer, conversation)


def token_counter(llm: LLMConfig, models_dir: str) -> TokenCounter:
    """The evolving model's count: scripted -> words; a local model folder -> its tokenizer; else chars / 4."""
    if llm.backend == "scripted":
        return WordCounter()
    folder = llm.model
    if llm.backend == "vllm":
        from tasks.llm.models import resolve_model

        folder = resolve_model(llm.model, models_dir)
    if Path(folder).expanduser().is_dir():
        try:
            return ModelTokenizer(str(Path(folder).expanduser()))
        except Exception:  # a folder without a tokenizer: fall back to the documented rule
            pass
    return CharCounter()


def cap_figures(sampling: Any, elimination: Any) -> Figures:
    """Every call writes its ``max_tokens`` and every row reaches every enabled call: an upper bound."""
    return Figures(source="sampling max_tokens, every row reaching every call (an upper bound)", calls={
        "evolve": CallFigures(per_row=1, completion=sampling.evolve.max_tokens),
        "validity": CallFigures(per_row=float(elimination.validity_check), completion=sampling.validity.max_tokens),
        "respond": CallFigures(per_row=1, completion=sampling.respond.max_tokens),
        "equality": CallFigures(per_row=float(elimination.equality_check), completion=sampling.equality.max_tokens),
    })


def previous_figures(run_uris: list[str], counter: TokenCounter,
                     settings: StorageSettings | None = None) -> Figures | None:
    """Figures from the first of ``run_uris`` with candidate shards: the share of rows that reached each call,
    its outputs counted with ``counter``, and its rounds' completion tokens per second of wall time."""
    for run_uri in run_uris:
        fs, path = resolve(run_uri, settings)
        rounds = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.glob(f"{path}/round=*"))
        files = [u for r in rounds if r != "round=0" for u in list_committed_shards(f"{run_uri}/{r}/candidates",
                                                                                    settings)]
        if not files:
            continue
        con = duck_connect(*files, settings=settings)
        outputs = {"evolve": "raw_evolution", "validity": "validity_raw", "respond": "response",
                   "equality": "equality_raw"}
        rows, *counts = con.execute(
            f"SELECT count(*), count(raw_evolution), count(validity_raw), count(response_prompt_sha), "
            f"count(equality_raw) FROM {read_parquet_sql(files)}").fetchone()
        sample = con.execute(f"SELECT {', '.join(outputs.values())} FROM {read_parquet_sql(files)} "
                             f"LIMIT {SAMPLE_ROWS}").fetchall()
        calls = {}
        for i, (kind, n) in enumerate(zip(CALLS, counts, strict=True)):
            texts = [r[i] for r in sample if r[i] is not None]
            mean = sum(max(1, counter.text(t)) for t in texts) / len(texts) if texts else 0.0
            calls[kind] = CallFigures(per_row=n / rows, completion=mean)
        done = [json.loads(fs.cat_file(f"{path}/{r}/_round.json"))["summary"] for r in rounds
                if r != "round=0" and fs.exists(f"{path}/{r}/_round.json")]
        seconds = sum(s["wall_seconds"] for s in done)
        name = run_uri.rstrip("/").rsplit("/", 1)[-1]
        speed = sum(s["completion_tokens"] for s in done) / seconds if seconds > 0 else None
        return Figures(source=f"previous run {name} ({rows} candidates)", calls=calls, tokens_per_second=speed,
                       speed_source=f"previous run {name}'s rounds" if speed else None)
    return None


def estimate_rounds(rows: list[dict[str, Any]], total_rows: int, rounds: int, pack: PromptPack, spec: Any,
                    counter: TokenCounter, figures: Figures) -> Estimate:
    """The estimate of ``rounds`` rounds over ``total_rows`` pool rows, from ``rows`` (a sample of the seeds)."""
    out = []
    if rows:
        m = len(rows)
        _, _, parents, rendered = evolve_prompts(rows, 1, pack, spec.random_seed, spec.operation_weights, spec.prefill)
        first_evolve = sum(counter.messages(msgs) for msgs, _ in rendered) / m
        seed_tokens = sum(counter.text(p) for p in parents) / m
        overhead = {"evolve": first_evolve - seed_tokens,
                    "validity": counter.messages(pack.validity_messages("", "")[0]),
                    "respond": counter.messages(pack.answer_messages("", "")[0]),
                    "equality": counter.messages(pack.equality_messages("", "")[0])}
        c = figures.calls
        evolved = c["evolve"].completion  # an evolved instruction: what the next round's parent is
        for k in range(1, rounds + 1):
            parent = seed_tokens if k == 1 else evolved
            prompt = {"evolve": first_evolve if k == 1 else overhead["evolve"] + evolved,
                      "validity": overhead["validity"] + parent + evolved,
                      "respond": overhead["respond"] + evolved,
                      "equality": overhead["equality"] + parent + evolved}
            if k == 1:
                prompt.update({kind: f.prompt for kind, f in c.items() if f.prompt is not None and kind != "evolve"})
            out.append(RoundEstimate(
                round=k, calls=round(total_rows * sum(f.per_row for f in c.values())),
                prompt_tokens=round(total_rows * sum(c[kind].per_row * prompt[kind] for kind in CALLS)),
                completion_tokens=round(total_rows * sum(f.per_row * f.completion for f in c.values()))))
    return Estimate(rows=total_rows, tokenizer=counter.name, completions=figures.source, speed=figures.speed_source,
                    tokens_per_second=figures.tokens_per_second, rounds=out)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"


def engine_time_line(estimate: Estimate) -> str:
    if estimate.tokens_per_second is None:
        return "Engine time: no estimate (no measured speed: `evol plan --measure N`, or a previous run)."
    return (f"Engine time: about {duration(estimate.engine_seconds)} at {estimate.tokens_per_second:.1f} completion "
            f"tokens/s ({estimate.speed}).")


def estimate_markdown(estimate: Estimate, actual: list[Any]) -> list[str]:
    """The dataset card's section: the estimate made when the run started beside each round's actual tokens."""
    by_round = {r.round: r for r in actual}
    lines = ["## Estimate and actual", "",
             f"Estimated when the run started, from the seeds' token lengths ({estimate.tokenizer}); "
             f"completions: {estimate.completions}.", "",
             "| round | prompt tokens (est.) | prompt tokens | completion tokens (est.) | completion tokens |",
             "| --- | --- | --- | --- | --- |"]
    for e in estimate.rounds:
        a = by_round.get(e.round)
        lines.append(f"| {e.round} | {e.prompt_tokens} | {a.prompt_tokens if a else '-'} | {e.completion_tokens} | "
                     f"{a.completion_tokens if a else '-'} |")
    lines += [f"| total | {sum(e.prompt_tokens for e in estimate.rounds)} | {sum(r.prompt_tokens for r in actual)} "
              f"| {sum(e.completion_tokens for e in estimate.rounds)} | {sum(r.completion_tokens for r in actual)} |",
              "", engine_time_line(whole_run(estimate)), ""]
    return lines


def whole_run(estimate: Estimate) -> Estimate:
    """The estimate with every round counted in full (reused shards too)."""
    return estimate.model_copy(update={"rounds": [r.model_copy(update={"share": 1.0}) for r in estimate.rounds]})
