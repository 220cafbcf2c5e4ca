"""Hypothesis fuzzing of the parsers users feed by hand: vocabulary files, TOML configs, caption
matching and caption pairing. Any input gives a result or a CurateError, never another exception;
where a slow obvious reference exists, the fast code agrees with it."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from curate.errors import CurateError

pytestmark = pytest.mark.timeout(300)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORDS = st.sampled_from(["red", "Red", "blue", "tv", "television", "paper plane", "plane", "a", "-", "#", "",
                         "ünïcode", "x" * 40, "red,blue", "name", "family", "color: red", "tv|television"])
LINES = st.lists(st.one_of(WORDS, st.text(max_size=20)), max_size=12).map("\n".join)


@SETTINGS
@given(objects=LINES, attributes=LINES, suffix=st.sampled_from([".txt", ".csv"]))
@example(objects="\r0", attributes="", suffix=".csv")  # found here: csv.Error escaped (a lone \r in a field)
@example(objects='name\n"red', attributes="name\nred", suffix=".csv")  # a quote left open
def test_vocabulary_files_parse_or_fail_clearly(objects, attributes, suffix):
    from builders.imagenet_ao.vocab import load_vocabulary

    with tempfile.TemporaryDirectory() as tmp:
        o, a = Path(tmp) / f"o{suffix}", Path(tmp) / f"a{suffix}"
        o.write_text(objects, encoding="utf-8")
        a.write_text(attributes, encoding="utf-8")
        try:
            vocab = load_vocabulary(o, a)
        except CurateError:
            return
        assert vocab.objects and vocab.attributes
        assert len(set(vocab.object_names)) == len(vocab.object_names)


@dataclass
class Inner:
    min_score: float = 0.5
    words: list[str] = field(default_factory=list)


@dataclass
class Cfg:
    name: str = "x"
    seed: int = 0
    flag: bool = False
    out: str | None = None
    inner: Inner = field(default_factory=Inner)


VALUES = st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False, width=32), st.booleans(),
                   st.text(max_size=8), st.lists(st.text(max_size=5), max_size=3))
KEYS = st.sampled_from(["name", "seed", "flag", "out", "nope", "inner.min_score", "inner.words", "inner.zzz"])


def _toml_value(v) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(json.dumps(x) for x in v) + "]"
    return json.dumps(v)


@SETTINGS
@given(items=st.lists(st.tuples(KEYS, VALUES), max_size=6), garbage=st.sampled_from(["", "= =", "[x", "k = "]))
def test_toml_configs_load_or_fail_clearly(items, garbage):
    from curate.config import load_toml

    top = [f"{k} = {_toml_value(v)}" for k, v in items if "." not in k]
    inner = [f"{k.split('.')[1]} = {_toml_value(v)}" for k, v in items if "." in k]
    text = "\n".join(dict.fromkeys(top)) + "\n" + ("[inner]\n" + "\n".join(dict.fromkeys(inner)) if inner else "")
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "c.toml"
        p.write_text(text + "\n" + garbage, encoding="utf-8")
        try:
            cfg = load_toml(p, Cfg)
        except CurateError:
            return
        assert isinstance(cfg.seed, int) and isinstance(cfg.flag, bool) and isinstance(cfg.inner.min_score, float)


CAPTION = st.lists(st.sampled_from(["a", "red", "Red", "blue", "tv", "television", "plane", "paper", "planes",
                                    "red-blue", "tvs", "!", ",", "ünï", "x"]), max_size=8).map(" ".join)


@SETTINGS
@given(captions=st.lists(st.one_of(CAPTION, st.text(max_size=30)), min_size=1, max_size=20))
def test_caption_matching_agrees_with_a_whole_word_regex(captions):
    """The rarity scan's vectorised matching vs the obvious per-caption regex over the same forms."""
    from builders.imagenet_ao.rarity import TermTable, count_batch
    from builders.imagenet_ao.vocab import Entry, Vocabulary

    vocab = Vocabulary(objects=[Entry("tv", ["television"], "", ["tvs", "televisions"]),
                                Entry("paper plane", [], "", ["paper planes"])],
                       attributes=[Entry("red", [], "color"), Entry("blue", [], "color")])
    got = count_batch(pl.Series(captions, dtype=pl.String), TermTable.from_vocab(vocab))

    def has(text: str, forms: list[str]) -> bool:
        norm = " " + re.sub(r"[^a-z0-9 ]", " # ", text.lower()) + " "
        return any(f" {f} " in norm for f in forms)

    objs = [["tv", "television", "tvs", "televisions"], ["paper plane", "paper planes"]]
    attrs = [["red"], ["blue"]]
    for i, a in enumerate(attrs):
        for j, o in enumerate(objs):
            want = sum(1 for c in captions if has(c, a) and has(c, o))
            assert got["pairs"][i, j] == want, (captions, a, o)


@SETTINGS
@given(texts=st.lists(CAPTION, max_size=25))
def test_caption_pairs_agree_with_the_naive_pairwise_reference(texts):
    from builders.triplets.captions import find_caption_pairs, naive_caption_pairs

    uniq, pairs, _ = find_caption_pairs(pl.DataFrame({"caption": texts}, schema={"caption": pl.String}))
    text_of = dict(zip(uniq["cid"].to_list(), uniq["text"].to_list(), strict=True))
    got = {tuple(sorted((text_of[a], text_of[b]))) for a, b in pairs.select("cid_a", "cid_b").iter_rows()}
    assert got == {tuple(sorted(p)) for p in naive_caption_pairs(texts)}
