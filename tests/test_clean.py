"""Cleaning evolved instructions: labels, wrapping quotes and whitespace go; the content stays."""

from __future__ import annotations

import pytest

from tasks.evolve.clean import breaks_off, clean_evolved_instruction, cut_at_stops, split_stops

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


# ---- stop strings and output labels ------------------------------------------------------------------------

DEMO_STOPS = ("#Given Prompt#", "#The Given Prompt#", "#Rewritten Prompt#", "#Created Prompt#")


def test_stops_that_are_part_of_a_label_are_kept_from_the_engine():
    engine, deferred = split_stops(DEMO_STOPS, ["#Rewritten Prompt#:", "#Created Prompt#:", None])
    assert engine == ("#Given Prompt#", "#The Given Prompt#")
    assert deferred == ("#Rewritten Prompt#", "#Created Prompt#")
    assert split_stops(DEMO_STOPS, [None]) == (DEMO_STOPS, ())


@pytest.mark.parametrize("raw, kept", [
    ("#Rewritten Prompt#: Write a haiku about fog.", "Write a haiku about fog."),
    ("\n#Rewritten Prompt#:\nWrite a haiku about fog.\n#Rewritten Prompt#: again", "Write a haiku about fog."),
    ("Write a haiku about fog.\n\n#REWRITTEN PROMPT#:\nmore", "Write a haiku about fog."),
    ("**Rewritten Prompt:** Write a haiku.\n#Created Prompt#: x", "Write a haiku."),
    ("Write a haiku about fog.", "Write a haiku about fog."),
])
def test_a_labelled_output_never_becomes_empty(raw, kept):
    text, _ = cut_at_stops(raw, ("#Rewritten Prompt#", "#Created Prompt#"))
    assert clean_evolved_instruction(text) == kept


def test_cut_reports_whether_it_cut():
    assert cut_at_stops("Do X.\n#Rewritten Prompt#: Y", ("#Rewritten Prompt#",)) == ("Do X.\n", True)
    assert cut_at_stops("#Rewritten Prompt#:\n", ("#Rewritten Prompt#",)) == ("#Rewritten Prompt#:\n", False)
    assert cut_at_stops("Do X.", ()) == ("Do X.", False)


def test_a_cut_breaks_off_when_its_line_does_not_end_a_sentence():
    assert breaks_off("To create a new ") and breaks_off("Write about fog and")
    assert not breaks_off("Write about fog.\n") and not breaks_off("Write about fog. ")
    assert not breaks_off("Is it fog?") and not breaks_off('Say "fog"') and not breaks_off("")
