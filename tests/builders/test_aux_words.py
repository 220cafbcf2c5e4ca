"""Auxiliary words a reader would accept: adjectives of how a thing looks, and no material the
object's name rules out ("gold" for a paper plane); measured by the plausibility report."""

from __future__ import annotations

from builders.aux_attributes.answers import is_adjective, validate, word_problem
from builders.aux_attributes.contradictions import ContradictionRules
from builders.aux_attributes.plausibility import judge, markdown, summarise

RULES = ContradictionRules.bundled()


def test_non_adjectives_fail_and_real_ones_pass():
    for word in ("slightly", "frank", "quickly", "very", "grin", "sandal", "whit", "denser", "honest"):
        assert not is_adjective(word), word
        assert "not an adjective" in word_problem(word, "large", "paper plane", rules=RULES)
    for word in ("red", "shiny", "crisp", "curly", "lovely", "pointy", "folded", "shimmering", "reddish",
                 "wooden", "paper", "metallic", "aerodynamic", "striped"):
        assert is_adjective(word), word
        assert word_problem(word, "zzz", "thing", rules=RULES) is None, word
    assert is_adjective("frank", frozenset({"frank"}))  # a --vocab vouches for its own words
    v = validate(["white", "slightly", "folded"], "large", "paper plane", rules=RULES)
    assert v.adjectives is None and "'slightly' is not an adjective" in v.problem


def test_materials_the_object_name_rules_out():
    for word in ("gold", "silver", "metal", "metallic", "steel"):
        problem = word_problem(word, "large", "paper plane", rules=RULES)
        assert problem and "cannot have" in problem, word
    assert word_problem("gold", "yellow", "star", rules=RULES) is None  # a colour where no material is named
    assert word_problem("gold", "yellow", "paper plane", rules=RULES)  # the plane's paper still rules it out
    assert word_problem("papery", "white", "paper plane", rules=RULES) is None


def test_the_plausibility_report_counts_non_adjectives():
    rows = [{"attr": "large", "obj": "paper plane", "aux": ["slightly", "gold", "folded"], "source": "llm"},
            {"attr": "zigzag", "obj": "paper plane", "aux": ["frank", "white", "crisp"], "source": "llm"}]
    verdicts = {v.word: v.verdict for v in judge(rows, RULES)}
    assert verdicts == {"slightly": "not_adjective", "gold": "contradicts", "folded": "unverifiable",
                        "frank": "not_adjective", "white": "unverifiable", "crisp": "unverifiable"}
    s = summarise(judge(rows, RULES), with_truth=False)
    assert s["all"]["not_adjective_share"] == round(2 / 6, 4) and s["all"]["contradiction_share"] == round(1 / 6, 4)
    md = markdown(s)
    assert "not an adjective" in md and "33.3 %" in md and "Not adjective, e.g.: slightly" in md
