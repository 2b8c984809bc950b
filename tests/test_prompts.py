"""Prompt packs: the bundled packs load and render, user packs work, broken manifests say where."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from prompts import PromptPackError, PromptRenderError, bundled_packs, load_pack
from prompts.pack import PACKS_DIR

GENERAL_OPS = (
    "add_constraints",
    "deepening",
    "concretizing",
    "increase_reasoning_steps",
    "complicate_input",
    "in_breadth",
)
CODE_OPS = (
    "add_constraints",
    "rarer_requirement",
    "increase_reasoning_steps",
    "erroneous_code",
    "complexity_requirements",
)


@pytest.fixture(params=["general", "code"])
def pack(request):
    return load_pack(request.param)


def test_bundled_packs_and_their_operations():
    assert set(bundled_packs()) >= {"general", "code"}
    general = load_pack("general")
    assert tuple(general.operations) == GENERAL_OPS
    assert {spec.weight for spec in general.operations.values()} == {1.0}
    assert [s.name for s in general.operations.values() if s.kind == "in_breadth"] == ["in_breadth"]
    code = load_pack("code")
    assert tuple(code.operations) == CODE_OPS
    assert {spec.weight for spec in code.operations.values()} == {1.0}
    assert {spec.kind for spec in code.operations.values()} == {"in_depth"}
    for p in (general, code):
        assert "given prompt" in p.scaffolding_phrases and "#rewritten prompt#" in p.scaffolding_phrases


def render_op(pack, name, variant=0, **variables):
    spec = pack.operations[name]
    extra = spec.variants[variant] if spec.variants else {}
    return pack.render(name, **extra, **variables).text


def given_heading(pack, name):
    if name == "complicate_input":
        return "The Given Prompt:"
    return "#The Given Prompt#:" if pack.name == "general" and name != "in_breadth" else "#Given Prompt#:"


def test_every_operation_renders_with_and_without_input(pack):
    for name in pack.operations:
        with_input = render_op(pack, name, instruction="Sort the list.", input="[3, 1, 2]")
        without = render_op(pack, name, instruction="Sort the list.", input="")
        blank = render_op(pack, name, instruction="Sort the list.", input="  \n ")
        given = given_heading(pack, name)
        assert f"{given}\nSort the list.\n\n[3, 1, 2]\n" in with_input
        assert "[3, 1, 2]" not in without and without == blank
        assert f"{given}\nSort the list.\n" in without and "Sort the list.\n\n\n" not in without
        assert without.rstrip().endswith(pack.label(name))  # the prompt ends with the label a prefill repeats
        assert "{{" not in without and "{#" not in without


def test_code_in_depth_prompts_follow_the_method():
    pack = load_pack("code")
    methods = set()
    for name in pack.operations:
        text = pack.render(name, instruction="x", input="").text
        lines = [line for line in text.splitlines() if line.startswith("Method:")]
        assert len(lines) == 1, name
        methods.add(lines[0])
        for words in ("'#Given Prompt#'", "'#Rewritten Prompt#'", "'given prompt'", "'rewritten prompt'"):
            assert words in text, (name, words)
    assert len(methods) == len(pack.operations) == 5  # one method line of its own per operation


# The paper's key phrases (WizardLM's Evol_Instruct/depth.py and breadth.py, and the paper's appendix).
PAPER_IN_DEPTH = (
    "I want you to act as a Prompt Rewriter.",
    "to make those famous AI systems (e.g., ChatGPT and GPT4) a bit harder to handle.",
    "But the rewritten prompt must be reasonable and must be understood and responded by humans.",
    "Your rewriting cannot omit the non-text parts such as the table and code in #The Given Prompt#.",
    "Also, please do not omit the input in #The Given Prompt#.",
    "You SHOULD complicate the given prompt using the following method:",
    "#Rewritten Prompt# can only add 10 to 20 words into #The Given Prompt#.",
    "'#The Given Prompt#', '#Rewritten Prompt#', 'given prompt' and 'rewritten prompt' are not allowed to appear "
    "in #Rewritten Prompt#",
)
PAPER_METHODS = {
    "add_constraints": "Please add one more constraint or requirement into #The Given Prompt#.",
    "deepening": "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the "
                 "inquiry can be increased.",
    "concretizing": "Please replace general concepts with more specific concepts.",
    "increase_reasoning_steps": "If #The Given Prompt# can be solved with just a few simple thinking processes, "
                                "you can rewrite it to explicitly request multiple-step reasoning.",
}
PAPER_IN_BREADTH = (
    "I want you to act as a Prompt Creator.",
    "Your goal is to draw inspiration from the #Given Prompt# to create a brand new prompt.",
    "This new prompt should belong to the same domain as the #Given Prompt# but be even more rare.",
    "The LENGTH and complexity of the #Created Prompt# should be similar to that of the #Given Prompt#.",
    "The #Created Prompt# must be reasonable and must be understood and responded by humans.",
    "'#Given Prompt#', '#Created Prompt#', 'given prompt' and 'created prompt' are not allowed to appear in "
    "#Created Prompt#",
)


def test_general_pack_has_the_papers_wording():
    pack = load_pack("general")
    for name, method in PAPER_METHODS.items():
        text = pack.render(name, instruction="x", input="").text
        for phrase in PAPER_IN_DEPTH + (method,):
            assert phrase in text, (name, phrase)
    text = pack.render("in_breadth", instruction="x", input="").text
    for phrase in PAPER_IN_BREADTH:
        assert phrase in text, phrase


def test_general_complicate_input_shows_the_papers_five_demonstrations_before_the_target():
    pack = load_pack("general")
    assert pack.operations["complicate_input"].variants == ()
    text = render_op(pack, "complicate_input", instruction="Name a colour.", input="")
    formats = ["XML data", "SQL database", "Python code", "HTML page", "Shell cmd"]
    places = [text.index(f"You must add [{fmt}] format text as input data in [Rewritten Prompt].") for fmt in formats]
    assert places == sorted(places) and places[-1] < text.index("Name a colour.")
    for fmt in formats:
        assert text.count(f"MUST contain a specific {fmt} as input, in question style") == 1
    assert text.count("The Given Prompt:") == 6 and text.count("\n####\n") == 5
    assert pack.label("complicate_input") == ("Rewritten Prompt (MUST contain a specific data format as input, "
                                              "in question style):")
    assert text.rstrip().endswith(pack.label("complicate_input"))
    messages, _ = pack.evolve_messages("complicate_input", "Name a colour.", prefill=True)
    assert messages[-1] == {"role": "assistant", "content": pack.label("complicate_input")}
    # the demonstrations are good rewrites by the project's own rules: data, not loops
    from tasks.judge.validity import validity_rule_reason

    for block in text.split("####")[:5]:
        rewrite = block.split("in question style):\n", 1)[1].strip()
        assert validity_rule_reason(rewrite, "", "in_breadth", 0.5) is None, rewrite
        assert not any(p in rewrite.lower() for p in pack.scaffolding_phrases), rewrite


def test_prefill_opens_the_assistant_turn_with_the_label(pack):
    for name in pack.operations:
        plain, sha = pack.evolve_messages(name, "Sort the list.")
        filled, filled_sha = pack.evolve_messages(name, "Sort the list.", prefill=True)
        assert [m["role"] for m in plain] == ["system", "user"] and sha == filled_sha
        assert filled[:2] == plain and filled[2] == {"role": "assistant", "content": pack.label(name)}


def test_answer_equality_and_system(pack):
    assert pack.render("answer", instruction="Say hi.", input="").text == "Say hi.\n"
    assert pack.render("answer", instruction="Say hi.", input="to Bob").text == "Say hi.\n\nto Bob\n"
    text = pack.render("equality", first="A one", second="B two").text
    assert text.index("A one") < text.index("B two")
    assert "Equal" in text and "Not Equal" in text
    text = pack.render("validity", parent="A one", candidate="B two").text
    assert text.index("A one") < text.index("B two") and "Yes or No" in text
    assert pack.render("system").text.strip()


def test_messages(pack):
    op = next(iter(pack.operations))
    messages, sha = pack.evolve_messages(op, "Sort the list.", "[3, 1, 2]")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == pack.render("system").text.strip()
    assert messages[1]["content"] == render_op(pack, op, instruction="Sort the list.", input="[3, 1, 2]").rstrip()
    assert sha == pack.template_shas()[op]
    messages, sha = pack.answer_messages("Say hi.")
    assert messages[1]["content"] == "Say hi." and sha == pack.template_shas()["answer"]
    messages, sha = pack.equality_messages("a", "b")
    assert sha == pack.template_shas()["equality"] and "a" in messages[1]["content"]
    messages, sha = pack.validity_messages("first", "second")
    assert sha == pack.template_shas()["validity"] and "second" in messages[1]["content"]
    with pytest.raises(PromptRenderError, match="no operation 'answer'"):
        pack.evolve_messages("answer", "x")


def test_missing_variable_and_unknown_template_raise(pack):
    with pytest.raises(PromptRenderError, match="instruction"):
        pack.render("answer", input="")
    with pytest.raises(PromptRenderError, match="input"):
        pack.render(next(iter(pack.operations)), instruction="x")
    with pytest.raises(PromptRenderError, match="second"):
        pack.render("equality", first="a")
    with pytest.raises(PromptRenderError, match="no template 'nope'"):
        pack.render("nope")


def test_template_shas_are_stable_and_distinct(pack):
    shas = pack.template_shas()
    assert set(shas) == set(pack.operations) | {"system", "equality", "answer", "validity"}
    assert all(len(s) == 16 and int(s, 16) >= 0 for s in shas.values())
    assert len(set(shas.values())) == len(shas)
    assert load_pack(pack.name).template_shas() == shas
    first = pack.render("answer", instruction="a", input="").sha
    assert first == pack.render("answer", instruction="b", input="c").sha == shas["answer"]


def copy_pack(tmp_path: Path, name: str = "general") -> Path:
    folder = tmp_path / "mypack"
    shutil.copytree(PACKS_DIR / name, folder)
    return folder


def test_user_pack_from_a_folder(tmp_path):
    folder = copy_pack(tmp_path)
    (folder / "deepening.jinja2").write_text("Go deeper: {{ instruction }}\n")
    manifest = (folder / "manifest.yaml").read_text().replace("name: general", "name: mine")
    (folder / "manifest.yaml").write_text(manifest)
    for ref in (folder, str(folder), str(folder / "manifest.yaml")):
        pack = load_pack(ref)
        assert pack.name == "mine"
        assert pack.render("deepening", instruction="Why?").text == "Go deeper: Why?\n"
    general = load_pack("general").template_shas()
    shas = load_pack(folder).template_shas()
    assert shas["deepening"] != general["deepening"]
    assert shas["in_breadth"] == general["in_breadth"]  # the sha depends on the template's text only


def test_included_template_changes_the_sha(tmp_path):
    folder = copy_pack(tmp_path)
    (folder / "_rules.jinja2").write_text("Rules v1\n")
    (folder / "deepening.jinja2").write_text("{% include '_rules.jinja2' %}{{ instruction }}\n")
    before = load_pack(folder).template_shas()["deepening"]
    assert load_pack(folder).render("deepening", instruction="x").text == "Rules v1\nx\n"
    (folder / "_rules.jinja2").write_text("Rules v2\n")
    assert load_pack(folder).template_shas()["deepening"] != before


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("template: deepening.jinja2", "template: gone.jinja2", r"operations\.deepening\.template: .*gone\.jinja2"),
        ("kind: in_breadth", "kind: sideways", r"operations\.in_breadth\.kind"),
        ("equality: equality.jinja2", "equality: nope.jinja2", r"equality: template file 'nope\.jinja2' not found"),
        ("name: general", "nmae: general", r"nmae: unknown key"),
        ("weight: 1.0", "weight: -1", r"operations\.\w+\.weight"),
        ("answer: answer.jinja2\n", "", r"answer: Field required"),
    ],
)
def test_broken_manifest_names_the_file_and_key(tmp_path, old, new, expected):
    folder = copy_pack(tmp_path)
    manifest = folder / "manifest.yaml"
    text = manifest.read_text()
    assert old in text
    manifest.write_text(text.replace(old, new, 1))
    with pytest.raises(PromptPackError, match=expected) as err:
        load_pack(folder)
    assert str(manifest) in str(err.value)


def test_other_broken_packs(tmp_path):
    folder = copy_pack(tmp_path)
    manifest = folder / "manifest.yaml"
    text = manifest.read_text()
    head = text.split("operations:")[0]
    manifest.write_text(head + "operations: {}\n")
    with pytest.raises(PromptPackError, match="operations: .*at least 1"):
        load_pack(folder)
    manifest.write_text(text.replace("weight: 1.0", "weight: 0"))
    with pytest.raises(PromptPackError, match="at least one weight"):
        load_pack(folder)
    manifest.write_text(text)
    (folder / "concretizing.jinja2").write_text("{% if instruction %}unclosed\n")
    with pytest.raises(PromptPackError, match=r"operations\.concretizing\.template: syntax error in 'concretizing"):
        load_pack(folder)
    manifest.write_text("- a list\n")
    with pytest.raises(PromptPackError, match="expected a mapping"):
        load_pack(folder)
    manifest.unlink()
    with pytest.raises(PromptPackError, match="has no manifest.yaml"):
        load_pack(folder)
    with pytest.raises(PromptPackError, match="unknown prompt pack 'nosuchpack'.*general"):
        load_pack("nosuchpack")
