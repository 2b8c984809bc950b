"""How a conversation goes into vLLM and how its output comes back, for the offline and the async engine alike."""

from __future__ import annotations

from typing import Any

from tasks.llm.base import Completion, Conversation, choice_margin, is_prefilled


def chat_kwargs(conversation: Conversation) -> dict[str, bool]:
    """How ``llm.chat`` renders a conversation: a prefilled assistant turn is continued, otherwise one is opened."""
    prefilled = is_prefilled(conversation)
    return {"add_generation_prompt": not prefilled, "continue_final_message": prefilled}


def chat_prompt_tokens(tokenizer: Any, conversation: Conversation) -> int:
    """The prompt length vLLM's ``chat`` will see: the rendered chat template, tokenized without extra specials."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, **chat_kwargs(conversation))
    return len(tokenizer.encode(text, add_special_tokens=False))


def completion_of(output: Any, choices: tuple[str, ...] | None = None) -> Completion:
    choice = output.outputs[0]
    constrained = choices is not None and choice.text in choices
    margin = None
    if constrained and choice.logprobs:
        first = {lp.decoded_token or "": lp.logprob for lp in choice.logprobs[0].values()}
        margin = choice_margin(first, choice.text, choices)
    return Completion(
        text=choice.text,
        finish_reason=choice.finish_reason,
        prompt_tokens=len(output.prompt_token_ids or ()),
        completion_tokens=len(choice.token_ids),
        constrained=constrained,
        choice_margin=margin,
    )


def error_completion(message: str) -> Completion:
    return Completion(error=message, finish_reason="error")
