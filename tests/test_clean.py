"""Cleaning evolved instructions: labels, wrapping quotes and whitespace go; the content stays."""

from __future__ import annotations

import pytest

from tasks.clean import clean_evolved_instruction

TABLE = "| name | age |\n| --- | --- |\n| Ann | 31 |"
CODE = "```python\ndef f(x):\n    return x * 2\n```"

CASES = [
    # outer whitespace
    ("  Write a poem.\n\n", "Write a poem."),
    # leading labels, every spelling
    ("#Rewritten Prompt#: Write a poem.", "Write a poem."),
    ("#Rewritten Prompt#:\nWrite a poem.", "Write a poem."),
    ("#Rewritten Prompt# Write a poem.", "Write a poem."),
    ("#rewritten prompt#:\n\n  Write a poem.", "Write a poem."),
    ("Rewritten Prompt: Write a poem.", "Write a poem."),
    ("REWRITTEN PROMPT:\nWrite a poem.", "Write a poem."),
    ("**Rewritten Prompt:** Write a poem.", "Write a poem."),
    ("**Rewritten Prompt**: Write a poem.", "Write a poem."),
    ("**#Rewritten Prompt#:**\nWrite a poem.", "Write a poem."),
    ("## Rewritten Prompt\nWrite a poem.", "Write a poem."),
    ("### Rewritten Prompt:\n\nWrite a poem.", "Write a poem."),
    ("*New prompt:* Write a poem.", "Write a poem."),
    ("#Created Prompt#: Describe a rare orchid.", "Describe a rare orchid."),
    ("Created Prompt:\nDescribe a rare orchid.", "Describe a rare orchid."),
    ("New prompt: Write a poem.", "Write a poem."),
    ("new instruction: Write a poem.", "Write a poem."),
    ("Here is the rewritten prompt:\nWrite a poem.", "Write a poem."),
    ("Here's a new prompt: Write a poem.", "Write a poem."),
    # a label alone leaves nothing (elimination then rejects the empty text)
    ("#Rewritten Prompt#:", ""),
    ("Rewritten Prompt:\n   ", ""),
    # wrapping quotes and backticks
    ('"Write a poem."', "Write a poem."),
    ("'Write a poem.'", "Write a poem."),
    ("\u201cWrite a poem.\u201d", "Write a poem."),
    ("\u2018Write a poem.\u2019", "Write a poem."),
    ("`Write a poem.`", "Write a poem."),
    ("```\nWrite a poem.\n```", "Write a poem."),
    # layers, from the outside in
    ('**Rewritten Prompt:** "Write a poem."', "Write a poem."),
    ('"Rewritten Prompt: Write a poem."', "Write a poem."),
    ('#Rewritten Prompt#:\n```\n"Write a poem."\n```', "Write a poem."),
    # label followed by content with a table or a code block: the content is kept whole
    (f"#Rewritten Prompt#:\nSummarise the table.\n\n{TABLE}\n", f"Summarise the table.\n\n{TABLE}"),
    (f"Rewritten Prompt: Fix the bug below.\n{CODE}", f"Fix the bug below.\n{CODE}"),
]

UNTOUCHED = [
    "Write a poem.",
    "New prompt design matters: explain why in three sentences.",
    "Rewritten prompts are often longer. Compare two of them.",
    "Explain why the given prompt is ambiguous, then fix it.",  # inner scaffolding is elimination's business
    "Compare these prompts: #Rewritten Prompt# and the original.",
    '"Hello" and "goodbye" are greetings; explain their origins.',
    "'Twas the night before Christmas: continue the poem in the same metre.",
    "Use `ls` and `grep` to find large files.",
    CODE,
    "```python\nprint('hi')\n```\nExplain what this prints.\n```\nhi\n```",
    TABLE,
    f"Summarise the table.\n\n{TABLE}",
    "# Heading\nWrite a report about the heading.",
    "",
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_cleaning_rules(raw, expected):
    assert clean_evolved_instruction(raw) == expected


@pytest.mark.parametrize("text", UNTOUCHED)
def test_texts_left_untouched(text):
    assert clean_evolved_instruction(text) == text


def test_cleaning_is_idempotent():
    for raw, _ in CASES:
        once = clean_evolved_instruction(raw)
        assert clean_evolved_instruction(once) == once
