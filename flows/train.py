"""The fine-tuning flow: one task that trains on an exported ``messages.jsonl``, then its artifacts."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.core.summaries import TrainResult
from tasks.train.sft import train_markdown, train_task


@flow(name="train", flow_run_name="train-{recipe}")
def train(dataset_uri: str, recipe: str, output_uri: str) -> TrainResult:
    """Fine-tune with ``recipe`` (a name under recipes/ or a YAML path) on ``dataset_uri``; outputs go to
    ``output_uri``."""
    logger = get_run_logger()
    result = train_task(dataset_uri, recipe, output_uri)
    logger.info("trained %d steps on %d rows: loss %.4f -> %.4f; model at %s", result.steps, result.samples,
                result.first_loss, result.final_loss, result.model_uri)
    create_markdown_artifact(key="train-summary", markdown=train_markdown(result),
                             description=f"Fine-tuning with {result.recipe}")
    create_table_artifact(key="train-loss", table=[p.model_dump() for p in result.log],
                          description=f"Train loss per logged step ({result.recipe})")
    return result
