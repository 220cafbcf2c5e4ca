"""`curate triplets --split-by`: held-out compositions (the default) keep every test and val edit,
reference and target out of train, in the triplets and in the CIRR export the evaluators read
(issue #27 point 6); the old image split (``--split-by image``) is still there, and says it leaks."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from test_triplets import config, curate, make_cir_dataset

from builders.triplets import build_triplets, read_triplets
from builders.triplets.splits import assign_by_composition, split_summary

SPLIT_CIRR = {"train": "train", "val": "val", "test": "test1"}


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return make_cir_dataset(tmp_path_factory.mktemp("splits") / "ds", per_pair=6,
                            objects=("circle", "square", "star", "heart"))


def _cirr_edits(out: Path, ds: Path, split: str) -> tuple[set[tuple[str, str]], set[str], set[str]]:
    """(reference pair, target pair) edits, references and every image of a split of the CIRR export."""
    man = pl.read_parquet(ds / "manifest.parquet")
    pair = dict(zip(man["key"], man["pair"], strict=True))
    items = json.loads((out / "cirr" / "captions" / f"cap.rc2.{SPLIT_CIRR[split]}.json").read_text())
    rel = json.loads((out / "cirr" / "image_splits" / f"split.rc2.{SPLIT_CIRR[split]}.json").read_text())
    edits = {(pair[it["reference"]], pair[it["target_hard"]]) for it in items}
    return edits, {it["reference"] for it in items}, set(rel)


def test_composition_split_is_the_default_and_keeps_test_edits_and_images_out_of_train(ds, tmp_path):
    out = tmp_path / "t"
    info = build_triplets(config(ds, out, formats=["cirr", "shards"], modes=["attribute", "object"]))
    train_edits, _, train_images = _cirr_edits(out, ds, "train")
    for held in ("test", "val"):
        edits, refs, images = _cirr_edits(out, ds, held)
        assert edits, f"no {held} triplets"
        assert not edits & train_edits
        assert not refs & train_images and not images & train_images
    # no composition (attribute-object pair) is in two splits
    df = read_triplets(out)
    comp_split = {}
    for r in df.iter_rows(named=True):
        for c in ((r["ref_attr"], r["ref_obj"]), (r["tgt_attr"], r["tgt_obj"])):
            assert comp_split.setdefault(c, r["split"]) == r["split"]
    s = info["split"]
    assert s["split_by"] == "composition"
    assert s["test_shared_with_train"] == {"edits": 0, "references_that_are_train_images": 0,
                                           "images_that_are_train_images": 0, "compositions": 0}
    assert s["triplets"] == {k: info["counts"]["by_split"].get(k, 0) for k in ("train", "val", "test")}
    saved = json.loads((out / "triplets.json").read_text())["split"]
    assert saved == s
    card = (out / "README.md").read_text()
    assert "Split by composition" in card and "Test shares with train: 0 edits" in card


def test_image_split_is_still_available_and_its_leak_is_counted(ds, tmp_path):
    out = tmp_path / "i"
    info = build_triplets(config(ds, out, formats=["cirr"], modes=["attribute", "object"], split_by="image"))
    test_edits, _, _ = _cirr_edits(out, ds, "test")
    train_edits, _, _ = _cirr_edits(out, ds, "train")
    shared = len(test_edits & train_edits)
    assert shared > 0  # the benchmark the issue describes: test edits learnt in training
    assert info["split"]["split_by"] == "image"
    assert info["split"]["test_shared_with_train"]["edits"] == shared


def test_caption_mode_composition_split_keeps_caption_edits_apart(tmp_path):
    ds = make_cir_dataset(tmp_path / "ds", per_pair=4)
    out = tmp_path / "c"
    build_triplets(config(ds, out, formats=[], modes=["caption"], splits="train=0.6,val=0.2,test=0.2"))
    df = read_triplets(out)
    edits = {s: set(zip(g["ref_caption"], g["tgt_caption"], strict=True)) for (s,), g in df.group_by("split")}
    imgs = {s: set(g["reference"]) | set(g["target"]) for (s,), g in df.group_by("split")}
    assert edits.get("test") and not edits["test"] & edits["train"]
    assert not imgs["test"] & imgs["train"]


def test_held_out_splits_take_whole_edits_and_their_share():
    sizes = {f"pair:a{i}\to{j}": 10 for i in range(5) for j in range(4)}
    edges = sorted({tuple(sorted((f"pair:a{i}\to{j}", f"pair:a{k}\to{j}")))
                    for i in range(5) for k in range(5) for j in range(4) if i != k})
    split = assign_by_composition(sizes, edges, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    count = {s: sum(1 for v in split.values() if v == s) for s in ("train", "val", "test")}
    # 20 compositions of 10 images: test and val each take about a fifth, never less, whole edits
    assert 4 <= count["test"] <= 5 and 4 <= count["val"] <= 5 and count["train"] >= 10
    for s in ("test", "val"):
        members = [c for c, v in split.items() if v == s]
        assert all(any(split[b if a == c else a] == s for a, b in edges if c in (a, b)) for c in members)
    assert assign_by_composition(sizes, edges, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3) == split


def test_split_summary_counts_what_test_shares_with_train():
    row = {"mode": "attribute", "ref_attr": "red", "ref_obj": "circle", "tgt_attr": "blue", "tgt_obj": "circle",
           "negatives": [], "gt": []}
    df = pl.DataFrame([{**row, "split": "train", "reference": "a", "target": "b"},
                       {**row, "split": "test", "reference": "a", "target": "c"}])
    s = split_summary(df, "image")
    assert s["test_shared_with_train"] == {"edits": 1, "references_that_are_train_images": 1,
                                           "images_that_are_train_images": 1, "compositions": 2}
    assert s["images"] == {"train": 2, "val": 0, "test": 2}


def test_unknown_split_by_exits_2(ds, tmp_path):
    r = curate("triplets", str(ds), "--out", str(tmp_path / "o"), "--split-by", "pairs")
    assert r.returncode == 2 and "--split-by" in r.stderr


def test_manifest_splits_are_recorded_as_such_with_what_they_share(ds, tmp_path):
    info = build_triplets(config(ds, tmp_path / "m", formats=[], splits="manifest"))
    s = info["split"]
    assert s["split_by"] == "manifest" and sum(s["triplets"].values()) == info["counts"]["triplets"]
    assert set(s["test_shared_with_train"]) == {"edits", "references_that_are_train_images",
                                                "images_that_are_train_images", "compositions"}


def test_edit_split_holds_out_edits_but_not_compositions(ds, tmp_path):
    out = tmp_path / "e"
    info = build_triplets(config(ds, out, formats=["cirr"], modes=["attribute", "object"], split_by="edit",
                                 splits="train=0.6,val=0.2,test=0.2"))
    train_edits, _, train_images = _cirr_edits(out, ds, "train")
    test_edits, test_refs, test_images = _cirr_edits(out, ds, "test")
    assert test_edits and not test_edits & train_edits
    # an edit and its reverse are one edit: both directions live in the same split
    assert not {(b, a) for a, b in test_edits} & train_edits
    assert not test_images & train_images
    s = info["split"]
    assert s["split_by"] == "edit" and s["test_shared_with_train"]["edits"] == 0
    assert s["test_shared_with_train"]["compositions"] > 0  # seen compositions, unseen edits
    assert info["mining"]["combos_in_other_splits"] > 0
