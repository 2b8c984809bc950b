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


def test_every_operation_renders_with_and_without_input(pack):
    for name, spec in pack.operations.items():
        with_input = pack.render(name, instruction="Sort the list.", input="[3, 1, 2]").text
        without = pack.render(name, instruction="Sort the list.", input="").text
        blank = pack.render(name, instruction="Sort the list.", input="  \n ").text
        assert "#Given Prompt#:\nSort the list.\n\n[3, 1, 2]\n" in with_input
        assert "[3, 1, 2]" not in without and without == blank
        assert "#Given Prompt#:\nSort the list.\n\n#" in without  # no empty lines left by the input block
        label = "#Created Prompt#:" if spec.kind == "in_breadth" else "#Rewritten Prompt#:"
        assert without.rstrip().endswith(label)
        assert "{{" not in without and "{#" not in without


def test_in_depth_prompts_follow_the_method(pack):
    methods = set()
    in_depth = [name for name, spec in pack.operations.items() if spec.kind == "in_depth"]
    for name in in_depth:
        text = pack.render(name, instruction="x", input="").text
        lines = [line for line in text.splitlines() if line.startswith("Method:")]
        assert len(lines) == 1, name
        methods.add(lines[0])
        for words in ("'#Given Prompt#'", "'#Rewritten Prompt#'", "'given prompt'", "'rewritten prompt'"):
            assert words in text, (name, words)
    assert len(methods) == len(in_depth) == 5  # one method line of its own per operation


def test_general_in_depth_rules_and_in_breadth():
    pack = load_pack("general")
    for name, spec in pack.operations.items():
        text = pack.render(name, instruction="x", input="").text
        if spec.kind == "in_depth":
            assert "10 to 20 words" in text and "tables and code" in text and "input" in text
        else:
            assert "brand-new" in text and "same domain" in text and "rarer" in text
            assert "same length and difficulty" in text


def test_answer_equality_and_system(pack):
    assert pack.render("answer", instruction="Say hi.", input="").text == "Say hi.\n"
    assert pack.render("answer", instruction="Say hi.", input="to Bob").text == "Say hi.\n\nto Bob\n"
    text = pack.render("equality", first="A one", second="B two").text
    assert text.index("A one") < text.index("B two")
    assert '"Equal"' in text and '"Not Equal"' in text
    assert pack.render("system").text.strip()


def test_messages(pack):
    op = next(iter(pack.operations))
    messages, sha = pack.evolve_messages(op, "Sort the list.", "[3, 1, 2]")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == pack.render("system").text.strip()
    assert messages[1]["content"] == pack.render(op, instruction="Sort the list.", input="[3, 1, 2]").text.rstrip()
    assert sha == pack.template_shas()[op]
    messages, sha = pack.answer_messages("Say hi.")
    assert messages[1]["content"] == "Say hi." and sha == pack.template_shas()["answer"]
    messages, sha = pack.equality_messages("a", "b")
    assert sha == pack.template_shas()["equality"] and "a" in messages[1]["content"]
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
    assert set(shas) == set(pack.operations) | {"system", "equality", "answer"}
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
