"""The rewrite-validity rules: each rule rejects what it names and passes real rewrites; the yes/no parse."""

from __future__ import annotations

import pytest

from tasks.judge.validity import (
    LLM_VALIDITY_REASON,
    VALIDITY_RULE_REASONS,
    answers_parent,
    continues_parent,
    copies_parent,
    copies_prompt,
    has_scaffolding_fragment,
    is_degenerate,
    llm_validity_reason,
    parse_yes_no,
    validity_rule_reason,
)

PARENT = "Write a haiku about a lighthouse."
REWRITES = [
    "Write a haiku about a lighthouse in a winter storm, and end it with the image of a ship turning home.",
    "Explain why the sky looks blue during the day and red at sunset, using the idea of light scattering.",
    "What is 37 multiplied by 24? Show each step of the long multiplication.",
    "In C#, how do I reverse a list of strings without LINQ?",
    "Summarise this markdown table:\n# Sales\n| month | total |\n| May | 30 |",
]


@pytest.mark.parametrize("text", REWRITES)
def test_real_rewrites_pass_every_rule(text):
    assert validity_rule_reason(text, PARENT, "in_depth", 0.5, prompt="#The Given Prompt#:\n" + PARENT) is None


@pytest.mark.parametrize("text", ["#", "###", "...", "42", "", "go go go go go go go go go go go go go",
                                  "Name it.\nName it.\nName it."])
def test_degenerate(text):
    assert is_degenerate(text)


@pytest.mark.parametrize("text", ["Name a colour.", "Write a haiku."])
def test_not_degenerate(text):
    assert not is_degenerate(text)


@pytest.mark.parametrize("text", ["Write a haiku about fog. #", "#Rewritten Prompt#: none", "#The Given Prompt#",
                                  "Write a poem.\n#\nAbout the sea.", "Rewritten Prompt#: write a poem",
                                  "Describe the sea #Answer# calm"])
def test_scaffolding_fragment(text):
    assert has_scaffolding_fragment(text)


@pytest.mark.parametrize("text", ["In C# reverse a list.", "# Sales\nSummarise the table.", "Use issue #12 as input.",
                                  "Style the button with a background color of #ff0000 and a text color of #ffffff.",
                                  "Colour it #fff and #000."])
def test_no_scaffolding_fragment(text):
    assert not has_scaffolding_fragment(text)


@pytest.mark.parametrize("text", ["It's 37 times 24.", "Sure! Here is a haiku: waves ...", "Here's the poem.",
                                  "I'd be the lighthouse keeper.", "The answer is 888.", "Answer: Carla",
                                  "Certainly, the shortest is Carla.", "As an AI, I cannot do that."])
def test_answers_parent(text):
    assert answers_parent(text)


@pytest.mark.parametrize("text", ["Identify the shortest of the three.", "Is it true that 37 times 24 is 888?",
                                  "Illustrate the water cycle with a diagram.",
                                  "I ran `ls | wc -l` and it printed 0. Why, and which command counts files?",
                                  "It is 2 pm in Lisbon. What time is it in Tokyo?",
                                  "Here, in Lisbon, which tram is oldest?"])
def test_not_an_answer(text):
    assert not answers_parent(text)


def test_continues_parent():
    assert continues_parent("and then describe its light at night.", PARENT)
    assert continues_parent(", with a storm in the last line.", PARENT)
    assert continues_parent("at night, with a storm.", PARENT)
    assert not continues_parent("at night, with a storm.", "write a haiku about a lighthouse")  # parent in lower case
    assert not continues_parent("Write it at night.", PARENT)


def test_copies_prompt():
    prompt = ("You should try your best not to make the rewrite verbose, it can only add 10 to 20 words.\n"
              "#The Given Prompt#:\nWrite a haiku about a lighthouse on a rocky coast at night.")
    assert copies_prompt("Please try your best not to make the rewrite verbose, it can only add words.", prompt,
                         "Write a haiku.")
    # Repeating the parent (which the prompt holds) is not copying the prompt.
    parent = "Write a haiku about a lighthouse on a rocky coast at night."
    assert not copies_prompt(parent + " Use the word amber.", prompt, parent)
    assert not copies_prompt("Short text.", prompt, parent)


def test_copies_parent():
    parent = "What is 37 multiplied by 24?"
    assert copies_parent("What is 37 multiplied by 24 ?", parent)  # spacing and punctuation ignored
    assert copies_parent("what is 37 multiplied by 24", parent)
    assert copies_parent("What is 37 multiplied by 25 exactly?", parent)  # two words changed
    assert not copies_parent("What is 37 multiplied by 24? Show each step.", parent)
    assert not copies_parent("Name a colour.", "")  # no parent: a new instruction


def test_rule_order_and_reasons():
    prompt = "Rewrite it. Keep every table and code block of the original prompt exactly as it is."
    cases = {
        "#": "degenerate_evolution",
        "Is there a limit to how many sentences you can write in": "unfinished_evolution",
        "Write a haiku about the sea. #": "scaffolding_fragment",
        "Keep every table and code block of the original prompt exactly as it is, please.": "copies_prompt",
        "Write a haiku about a lighthouse standing alone on a cliff during a storm at midnight.": "copies_parent",
        "It's a haiku about a lighthouse.": "answers_parent",
        "and a storm at night.": "continues_parent",
        "Write a haiku.": "shorter_than_parent",
    }
    parent = "Write a haiku about a lighthouse standing alone on a cliff during a storm at night."
    for text, reason in cases.items():
        assert validity_rule_reason(text, parent, "in_depth", 0.5, prompt) == reason, text
    assert validity_rule_reason("Write a haiku.", parent, "in_breadth", 0.5, prompt) is None  # breadth may be short
    assert validity_rule_reason("Write a haiku.", parent, "in_breadth", 0.5, prompt, broke_off=True) == (
        "unfinished_evolution")  # a stop cut it mid-sentence
    assert set(cases.values()) == set(VALIDITY_RULE_REASONS)


def test_unfinished_evolutions():
    from tasks.judge.validity import is_unfinished

    # cut by a stop string or the token cap mid-sentence, or a word or two: none is an instruction
    for text in ("The", "Rewrite this.", "The shortest of the three, Carla, is taller than Ben.\n\nMake sure the",
                 "Is there a limit to how many sentences you can write in"):
        assert is_unfinished(text), text
    for text in ("Sort the list in place.", "What does this print?\nx = [1, 2]\nprint(x)",
                 "Explain what the word 'the' does in English", "Name a city that you like"):
        assert not is_unfinished(text), text


def test_llm_verdicts_and_strict_yes_no_parse():
    assert llm_validity_reason("Yes") is None
    assert llm_validity_reason("No") == LLM_VALIDITY_REASON
    assert llm_validity_reason(None) == "validity_unparseable"
    with pytest.raises(ValueError):
        llm_validity_reason("Maybe")
    assert parse_yes_no(" **Yes.** ") == "Yes" and parse_yes_no("no") == "No"
    assert parse_yes_no("Yes, it is an instruction") is None and parse_yes_no("") is None and parse_yes_no(None) is None


BRACES = "What does this print?\n\nint main() {\n    for (int i = 0; i < 3; i++) {\n        if (i) {\n" \
         "            puts(\"x\");\n        }\n    }\n    }\n}\n}\n}"


@pytest.mark.parametrize("text", [
    BRACES,
    "Summarise this table:\nId | Name\n1 | Ann\n1 | Ann\n1 | Ann\nWhich rows repeat?",
    "Why does this print the same line?\n```\nok\nok\nok\nok\n```",
    "Fix the markup:\n<tr>\n<td></td>\n<td></td>\n<td></td>\n</tr>",
    "Explain the loop:\n    total += 1\n    total += 1\n    total += 1",
])
def test_repetition_in_code_tables_and_fenced_blocks_is_not_a_loop(text):
    assert not is_degenerate(text)


@pytest.mark.parametrize("text", [
    "Describe the water cycle, the water cycle, the water cycle, the water cycle.",
    "1. Describe the water cycle.\n2. Describe the water cycle.\n3. Describe the water cycle.",
])
def test_loops_in_prose_are_still_loops(text):
    assert is_degenerate(text)


@pytest.mark.parametrize("text", [
    "I am applying for a data science position and I need some help with my cover letter. Please assist me.",
    "I don't understand Quantum Physics. Teach me the fundamentals.",
    "I have a hobby of writing short stories and I want more readers. Please write a catchy title.",
    "Here is a piece of C++ code that runs faster on sorted data. Why?",
    "As an AI language model, can you compare dogs and cats?",
])
def test_first_person_requests_are_not_answers(text):
    assert not answers_parent(text)


@pytest.mark.parametrize("text", ["As an AI, I cannot do that.", "Here is the function: def f(): pass",
                                  "I would describe it as evaporation and rain."])
def test_statements_that_ask_nothing_are_answers(text):
    assert answers_parent(text)


def test_a_list_of_options_ends_where_its_last_option_ends():
    from tasks.judge.validity import is_unfinished

    assert not is_unfinished("Which set spells BING?\n\nA) 01, 56 B) 10, 65 C) 14, 59 D) None of these")
    assert not is_unfinished("Rank the sandwiches:\n- Chicken mayo\n- Tuna and")
    assert is_unfinished("Which set spells BING? A) 01, 56 and")  # one option: a cut sentence
    assert is_unfinished("Plan a trip to Paris and Lyon with the")


def test_lower_case_is_a_continuation_only_for_in_depth_prose():
    assert continues_parent("at night, with a storm.", PARENT)
    assert not continues_parent("f(x) = 6x^2 - 2x, so f(4) =", PARENT)
    assert not continues_parent("you must write a version control system in C++.", PARENT, "in_breadth")


def test_a_text_that_opens_with_code_opens_where_its_prose_does():
    answer = "```python\nprint(f\"Include 1 cup of flour.\")\n```\nHere's how you can add a data format in Python."
    assert answers_parent(answer)  # the bundled model's output (demo, round 1)
    assert not answers_parent("```python\nprint(1)\n```\nHere is my code. Why does it print 1?")
    assert not answers_parent("```sql\nSELECT 1;\n```\nWhat does this query return?")


def test_a_fenced_block_that_never_closes_is_unfinished():
    from tasks.judge.validity import is_unfinished

    assert is_unfinished("Fix this function:\n```python\ndef f(x):\n    return x +")
    assert not is_unfinished("Fix this function:\n```python\ndef f(x):\n    return x +\n```\nWhy does it fail?")
