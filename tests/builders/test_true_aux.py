"""The seen-pair cap of a build, and TRIDENT's auxiliary attributes from the truth (`--from world`)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from builders.aux_attributes.truth_aux import rank_aux, true_aux
from builders.imagenet_ao.config import BuildConfig, validate
from builders.imagenet_ao.filters import cap_and_minimum
from curate.errors import CurateError
from curate.shards import write_shard
from curate.world import TRAIN, meta_path, split_dir

FAMILIES = {"colour": ["red", "blue", "yellow"], "pattern": ["striped", "dotted"], "state": ["broken"]}


def test_seen_cap_is_validated():
    validate(BuildConfig(seen_images_per_pair=64, min_images_per_pair=2))
    with pytest.raises(CurateError, match="--seen-images-per-pair 1 is below --min-images-per-pair 2"):
        validate(BuildConfig(seen_images_per_pair=1, min_images_per_pair=2))
    with pytest.raises(CurateError, match="--seen-retrieve-k must be at least 0"):
        validate(BuildConfig(seen_retrieve_k=-1))


def test_seen_pairs_get_their_own_cap():
    rows = [{"attr": a, "obj": "fish", "rare": a == "blue", "score_comp": float(i), "source": "pool",
             "src_key": f"{a}{i}"} for a in ("red", "blue") for i in range(6)]
    kept, dropped = cap_and_minimum(pl.DataFrame(rows), 2, 1, seen_images_per_pair=5)
    counts = dict(kept.group_by("attr").len().iter_rows())
    assert counts == {"blue": 2, "red": 5} and dropped == []
    assert sorted(kept.filter(pl.col("attr") == "blue")["score_comp"]) == [4.0, 5.0]  # the best first
    assert cap_and_minimum(pl.DataFrame(rows), 2, 1)[0].height == 4  # no seen cap: one cap for all


def test_rank_aux_counts_what_the_images_show():
    shown = {("red", "fish"): [{"red", "striped", "broken"}, {"red", "striped", "normal"}, {"red", "plain", "normal"},
                               {"red", "dotted", "normal"}] * 3}
    vocab = {"red", "blue", "striped", "dotted", "broken"}
    assert rank_aux(shown, vocab) == {("red", "fish"): ["striped", "broken", "dotted"]}  # not red, plain, normal
    assert rank_aux(shown, vocab, k=1) == {("red", "fish"): ["striped"]}
    assert rank_aux(shown, vocab, min_share=0.3) == {("red", "fish"): ["striped"]}  # 1/4 < 0.3 <= 2/4


def _tiny_world(folder):
    """A hand-made world: world.json and one train shard whose images record colour, pattern and state."""
    folder.mkdir()
    meta = {"objects": [{"name": "fish"}, {"name": "cup"}],
            "attributes": [{"name": v, "family": f} for f, vs in FAMILIES.items() for v in vs],
            "families": FAMILIES, "common_pairs": [["red", "fish"], ["blue", "cup"]], "rare_pairs": []}
    images = [("red", "fish", "red", "striped", "normal")] * 3 + [("red", "fish", "red", "dotted", "broken")] \
        + [("blue", "cup", "blue", "plain", "normal")] * 2 + [("striped", "cup", "yellow", "striped", "normal")]
    samples = [{"__key__": f"k{i}", "json": json.dumps({"attr": a, "obj": o, "colour": c, "pattern": p, "state": s})
                .encode()} for i, (a, o, c, p, s) in enumerate(images)]
    split_dir(folder, TRAIN).mkdir()
    write_shard(split_dir(folder, TRAIN) / "train-000000.tar", samples)
    meta_path(folder).write_text(json.dumps(meta))
    return folder


def test_true_aux_from_a_tiny_world(tmp_path):
    aux = true_aux(_tiny_world(tmp_path / "world"), "world")
    assert aux == {("red", "fish"): ["striped", "broken", "dotted"], ("blue", "cup"): [],  # plain/normal: nothing
                   ("striped", "cup"): ["yellow"]}


def test_true_aux_refuses_a_source_without_truth(tmp_path, tiny_dataset):
    with pytest.raises(CurateError, match="only a demo world, or a dataset built from one, knows it"):
        true_aux(tiny_dataset, "dataset")
    with pytest.raises(CurateError, match="a pairs file has none"):
        true_aux(None, "file")


def run(*argv: str) -> int:
    from curate.cli import main

    try:
        main(["-q", "attributes", *argv])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_cli_writes_the_one_format_and_refuses_without_truth(tmp_path, tiny_dataset, capsys):
    from curate.aux_labels import read_aux_labels

    world = _tiny_world(tmp_path / "world")
    assert run(str(world), "--from", "world", "--out", str(tmp_path / "aux")) == 0
    assert read_aux_labels(tmp_path / "aux" / "aux_label.jsonl")["red fish"] == ["striped", "broken", "dotted"]
    before = sorted(p.name for p in tiny_dataset.iterdir())
    assert run(str(tiny_dataset), "--from", "world", "--out", str(tmp_path / "aux2")) == 2
    assert "knows it" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_dataset.iterdir()) == before and not (tmp_path / "aux2").exists()
