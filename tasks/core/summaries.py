"""What each stage hands on and records in its marker: small pydantic summaries, below every stage, so the flow,
planning and reporting read them without importing the stages."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel

from storage import ShardRef


class Summary(BaseModel):
    """A stage's summary; ``reused``: read back from the stage's marker instead of computed."""

    reused: bool = False


class IngestSummary(Summary):
    source: str
    read: int
    accepted: int
    rejected: dict[str, int]
    duplicates: int
    shards: list[str]
    rejected_uri: str | None
    refs: list[ShardRef] = []
    problems: list[str] = []  # why an earlier ingest of this run folder was not reused


class ShardSummary(Summary):
    """What one shard task did; small enough for Prefect to record."""

    round: int
    pool_uri: str
    candidates: ShardRef
    pool_in: int
    passed: int
    rejected: dict[str, int]  # rejected candidates by reason
    operations: dict[str, int]  # evolved (passed) candidates by operation
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class RoundSummary(Summary):
    """One round, as shown in the UI and the dataset card, with the shards it handed on."""

    round: int
    shards: int
    pool_in: int
    evolved: int
    carried: int
    rejected: dict[str, int]
    operations: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    wall_seconds: float  # from the round's start to its end
    shard_seconds: float  # summed over its shard tasks
    shards_reused: int = 0
    pool_out: list[ShardRef] = []
    evolved_shards: list[ShardRef] = []
    rejected_shards: list[ShardRef] = []


def totals(rounds: list[RoundSummary], field: str) -> dict[str, int]:
    """A per-round count (``rejected`` or ``operations``) summed over rounds, sorted by key."""
    total: Counter[str] = Counter()
    for r in rounds:
        total.update(getattr(r, field))
    return dict(sorted(total.items()))


class ScoreShardSummary(Summary):
    """What one score shard holds: its rows, how many got each score, how many only a chosen score."""

    shard: int = 0
    scores: ShardRef
    rows: int
    complexity: int  # rows with a complexity score
    quality: int  # rows with a quality score
    chosen: int  # scores that are the chosen choice (a backend without log-probabilities), not an expectation
    embedded: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    rewrites: int = 0  # response evolution: the rewrites asked for
    replaced_by: dict[str, int] = {}  # rows whose response a rewrite replaced, by operation


class ScoreSummary(Summary):
    """The scoring stage: its shards (one per seed shard) and their counts summed."""

    shards: list[ScoreShardSummary]
    shards_reused: int = 0

    @property
    def refs(self) -> list[ShardRef]:
        return [s.scores for s in self.shards]

    def total(self, field: str) -> int:
        return sum(getattr(s, field) for s in self.shards)

    def replaced_by(self) -> dict[str, int]:
        """Rows whose response a rewrite replaced, by operation, over every shard."""
        total: Counter[str] = Counter()
        for s in self.shards:
            total.update(s.replaced_by)
        return dict(sorted(total.items()))


class MixSummary(Summary):
    candidates: int
    no_response: int
    near_duplicates: int
    sampled_out: int
    not_selected: int = 0  # diversity-aware selection (mix.selection): rows ranked but not taken
    final: int
    contaminated: int = 0  # overlapping a benchmark item (mix.decontaminate)
    contaminated_by: dict[str, int] = {}  # by benchmark file
    responses_replaced: dict[str, int] = {}  # response evolution: final rows whose response is a rewrite, by operation
    by_round: dict[str, int]
    by_operation: dict[str, int]
    final_uri: str
    dropped_uri: str
    final_sha256: str


class ExportSummary(Summary):
    rows: int
    files: dict[str, str]  # kind -> URI
    sha256: dict[str, str]  # kind -> SHA-256 of the file


class RoundEstimate(BaseModel):
    round: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    share: float = 1.0  # of the round still to compute (its other shards are reused)


class StageEstimate(BaseModel):
    """What a stage after the rounds adds (``score``, ``response evolution``): its calls, their prompt tokens and
    the most tokens they may generate (each call's ``max_tokens``)."""

    stage: str
    calls: int
    prompt_tokens: int
    max_completion_tokens: int
    share: float = 1.0  # of the stage still to compute (its other shards are reused)


class Estimate(BaseModel):
    """A run's estimate, per round (and, for `evol plan`, per stage after the rounds); the totals count the rounds'
    tokens still to compute."""

    rows: int
    tokenizer: str
    completions: str
    speed: str | None = None
    tokens_per_second: float | None = None
    rounds: list[RoundEstimate]
    stages: list[StageEstimate] = []

    def total(self, field: str) -> int:
        return round(sum(getattr(r, field) * r.share for r in self.rounds))

    @property
    def engine_seconds(self) -> float | None:
        return self.total("completion_tokens") / self.tokens_per_second if self.tokens_per_second else None


def whole_run(estimate: Estimate) -> Estimate:
    """The estimate with every round counted in full (reused shards too)."""
    return estimate.model_copy(update={"rounds": [r.model_copy(update={"share": 1.0}) for r in estimate.rounds]})


def engine_time_line(estimate: Estimate) -> str:
    if estimate.engine_seconds is None:
        return "Engine time: no estimate (no measured speed: `evol plan --measure N`, or a previous run)."
    minutes, secs = divmod(round(estimate.engine_seconds), 60)
    hours, minutes = divmod(minutes, 60)
    took = f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"
    return f"Engine time: about {took} at {estimate.tokens_per_second:.1f} completion tokens/s ({estimate.speed})."


class LossPoint(BaseModel):
    step: int
    loss: float
    learning_rate: float | None = None


class TrainResult(BaseModel):
    output_uri: str
    model_uri: str  # a plain model folder (for LoRA: the adapter merged into the base weights)
    adapter_uri: str | None  # LoRA only: the adapter alone
    metrics_uri: str
    loss_plot_uri: str
    recipe: str
    method: str
    base_model: str
    samples: int
    steps: int
    epochs: float
    first_loss: float
    final_loss: float
    mean_loss: float
    runtime_s: float
    log: list[LossPoint]
