"""Property tests for the answer parser and the validator of `curate attributes`."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from builders.aux_attributes.answers import NOT_ADJECTIVES, parse_answer, validate

WORD = st.from_regex(r"[a-z]{3,12}", fullmatch=True).filter(lambda w: w not in NOT_ADJECTIVES | {"and", "or"})
THREE = st.lists(WORD, min_size=3, max_size=3, unique=True)

STYLES = [
    lambda ws: ", ".join(ws),
    lambda ws: ",".join(ws),
    lambda ws: f"{ws[0]}, {ws[1]} and {ws[2]}.",
    lambda ws: f"{ws[0]}, {ws[1]}, and {ws[2]}",
    lambda ws: "\n".join(f"{i}. {w}" for i, w in enumerate(ws, 1)),
    lambda ws: "\n".join(f"- **{w}**" for w in ws),
    lambda ws: "Sure! Here are three adjectives:\n" + "\n".join(f"{i}) {w}" for i, w in enumerate(ws, 1))
               + "\nI hope this helps.",
    lambda ws: f"Here are three adjectives: {', '.join(ws)}. They describe the photo well.",
    lambda ws: " ".join(f"{i}. {w}" for i, w in enumerate(ws, 1)),
    lambda ws: f'"{ws[0]}", "{ws[1]}", "{ws[2]}"',
    lambda ws: "; ".join(ws),
]


@settings(max_examples=150, deadline=None)
@given(THREE, st.sampled_from(range(len(STYLES))), st.sampled_from([str.lower, str.title, str.upper]))
def test_formats_parse_back_to_the_words(words, style, case):
    text = case(STYLES[style](words))
    assert parse_answer(text) == words


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_parser_never_raises_and_returns_clean_items(text):
    items = parse_answer(text)
    assert isinstance(items, list)
    for it in items:
        assert it and it == it.strip() and it == it.lower()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz -", max_size=14), max_size=5), WORD, WORD)
def test_valid_verdicts_obey_every_rule(items, attr, obj):
    v = validate(items, attr, obj)
    if v.adjectives is None:
        assert v.problem
    else:
        assert len(v.adjectives) == 3 == len(set(v.adjectives))
        assert attr not in v.adjectives and obj not in v.adjectives
        assert all(w.isalpha() and w.islower() for w in v.adjectives)


@given(THREE)
def test_vocab_restricts(words):
    assert validate(words, "zzzattr", "zzzobj", frozenset(words)).adjectives == words
    assert "not in the vocabulary" in validate(words, "zzzattr", "zzzobj", frozenset(words[:2])).problem


def test_known_bad_answers_from_smollm2_are_rejected():
    cases = {
        "red, vibrant, vibrant": "repeated",
        "gold, sapphire, sapphire blue": "single lowercase word",
        "broken, shattered, cracked": "repeats the pair",
        "golden, crescent, blue, crescent, blue": "expected 3",
        "lady-lady, soft, pink": "single lowercase word",
        "I am not sure what you mean": "expected 3",
    }
    for text, why in cases.items():
        v = validate(parse_answer(text), "broken" if "broken" in text else "red", "crescent moon")
        assert v.adjectives is None and why in v.problem, (text, v)
