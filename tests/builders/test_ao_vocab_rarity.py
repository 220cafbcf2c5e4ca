"""Vocabulary loading and the rarity scan (ImageNet-AO stages 1-2)."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from builders.imagenet_ao.rarity import TermTable, count_batch, detect_caption_column, nmi, scan_corpus
from builders.imagenet_ao.vocab import Entry, Vocabulary, load_vocabulary, pluralize
from curate.errors import CurateError


def test_bundled_vocabularies():
    v = load_vocabulary("imagenet", "vaw")
    assert len(v.objects) >= 990  # 1000 classes, a few display names repeat (dropped with a warning)
    assert len(v.attributes) == 139
    gold = next(e for e in v.objects if e.name == "goldfish")
    assert "carassius auratus" in gold.synonyms
    assert set(v.families()) >= {"color", "material", "texture", "shape", "state", "size"}


def test_user_vocab_blank_lines_duplicates_and_synonyms(tmp_path, caplog):
    f = tmp_path / "objects.txt"
    f.write_text("Lemon\n\n  heart | love heart \n\nlemon\n# comment\ncrescent   moon\n")
    v = load_vocabulary(f, "vaw")
    assert [e.name for e in v.objects] == ["lemon", "heart", "crescent moon"]
    assert v.objects[1].synonyms == ["love heart"]
    assert "crescent moons" in v.objects[2].forms
    assert "duplicate" in caplog.text


def test_vocab_non_utf8_names_line(tmp_path):
    f = tmp_path / "attrs.txt"
    f.write_bytes(b"red\nblue\nstr\xffped\n")
    with pytest.raises(CurateError) as e:
        load_vocabulary("imagenet", f)
    assert "line 3" in e.value.message and "UTF-8" in e.value.message


def test_vocab_empty_rejected(tmp_path):
    f = tmp_path / "objects.txt"
    f.write_text("\n\n   \n")
    with pytest.raises(CurateError, match="empty"):
        load_vocabulary(f, "vaw")


def test_vocab_csv_with_family_and_synonyms(tmp_path):
    f = tmp_path / "attrs.csv"
    f.write_text("attribute,family,synonyms\nRed,color,crimson|scarlet\nstriped,texture,\n")
    v = load_vocabulary("imagenet", f)
    assert v.attributes[0].name == "red" and v.attributes[0].synonyms == ["crimson", "scarlet"]
    assert v.family_of("striped") == "texture"


def test_pluralize():
    assert pluralize("crescent moon") == "crescent moons"
    assert pluralize("box") == "boxes" and pluralize("butterfly") == "butterflies"
    assert pluralize("fish") == "fish" and pluralize("mouse") == "mice"


def _regex_count(caps, attrs, objs):
    """Independent reference: the whole-word regex rule, pair by pair."""
    def has(text, forms):
        return any(re.search(r"(?<![a-z0-9])" + re.escape(f) + r"(?![a-z0-9])", text) for f in forms)

    m = np.zeros((len(attrs), len(objs)), int)
    for c in caps:
        lc = (c or "").lower()
        for i, a in enumerate(attrs):
            if has(lc, a.forms):
                for j, o in enumerate(objs):
                    if has(lc, o.forms):
                        m[i, j] += 1
    return m


def test_count_batch_matches_regex_reference():
    objs = [Entry("heart", [], "", ["hearts"]), Entry("crescent moon", [], "", ["crescent moons"]),
            Entry("star", [], "", ["stars"]), Entry("fish", [], "", ["fish"])]
    attrs = [Entry("red", [], "color"), Entry("heart-shaped", [], "shape"), Entry("striped", [], "texture")]
    caps = ["Red heart-shaped STAR", "crescent. moon red", "a red crescent moon!", "starfish red", "hearty red",
            "Red\theart's", "striped  crescent  moon", None, "red-hearts", "RED FISH, striped stars", "",
            "Striped; crescent moons", "bluefish striped"]
    v = Vocabulary(objs, attrs)
    c = count_batch(pl.Series(caps, dtype=pl.String), TermTable.from_vocab(v))
    np.testing.assert_array_equal(c["pairs"], _regex_count(caps, attrs, objs))
    assert int(c["captions"]) == len(caps)


def test_caption_column_detection(tmp_path):
    p = tmp_path / "c.parquet"
    pl.DataFrame({"url": ["u"], "TEXT": ["a red heart"]}).write_parquet(p)
    assert detect_caption_column(p) == "TEXT"
    q = tmp_path / "bad.csv"
    q.write_text("url,alt_text\nx,y\n")
    with pytest.raises(CurateError) as e:
        detect_caption_column(q)
    assert "alt_text" in e.value.message and "url" in e.value.message


def test_scan_corpus_formats_and_resume(tmp_path):
    objs = [Entry("heart", [], "", ["hearts"]), Entry("lemon", [], "", ["lemons"])]
    attrs = [Entry("red", [], "color"), Entry("striped", [], "texture")]
    v = Vocabulary(objs, attrs)
    d = tmp_path / "caps"
    d.mkdir()
    pl.DataFrame({"caption": ["a red heart", "red lemons"] * 50}).write_parquet(d / "a.parquet")
    (d / "b.csv").write_text("text,url\nstriped heart,u\nRed Heart,u\n")
    (d / "c.jsonl").write_text('{"caption": "a striped thing"}\n{"caption": "lemon"}\n')
    out = tmp_path / "out"
    from builders.imagenet_ao.rarity import list_caption_files

    files = list_caption_files([d])
    res = scan_corpus(files, v, out, batch_rows=7)
    got = {(a, o): c for a, o, c in res.pairs.select("attr", "obj", "cooccurrence").iter_rows()}
    assert got == {("red", "heart"): 51, ("red", "lemon"): 50, ("striped", "heart"): 1, ("striped", "lemon"): 0}
    assert res.pairs.filter(pl.col("rare")).select("attr", "obj").rows() == [("striped", "lemon")]
    assert res.captions == 104 and res.summary.done == 3
    again = scan_corpus(files, v, out)
    assert again.summary.skipped == 3 and again.summary.done == 0
    assert again.pairs.equals(res.pairs)


def test_nmi_bounds():
    assert nmi(np.eye(4) * 10) == pytest.approx(1.0)
    assert nmi(np.ones((4, 4))) == pytest.approx(0.0, abs=1e-12)
