"""`curate eval zeroshot` with any labelled image folder as the reference set (issue 16).

Our dataset folders and shards were readable before; now an image folder (``CLASS/IMG`` or
``SPLIT/CLASS/IMG``, classes named by object, ``attr_obj`` or ImageNet wnid) and a CZSL root
(``images/`` + ``compositional-split-natural/`` + ``.t7`` metadata) are too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest


def curate_here(*args: str, capsys) -> tuple[int, str]:
    """``curate ARGS`` through the CLI entry point in this process: (exit code, stderr)."""
    from curate.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def ao(ao_with_triplets) -> Path:
    return ao_with_triplets


def test_class_names_become_labels():
    from training.zeroshot import class_label

    objects = ["paper plane", "star", "crescent moon"]
    assert class_label("star", objects, {}) == (None, "star")
    assert class_label("paper_plane", objects, {}) == (None, "paper plane")
    assert class_label("striped_paper_plane", objects, {}) == ("striped", "paper plane")
    assert class_label("very_dark_crescent_moon", objects, {}) == ("very dark", "crescent moon")
    assert class_label("n04552348", objects, {"n04552348": "warplane"}) == (None, "warplane")
    assert class_label("n09999999", objects, {"n09999999": "Star"}) == (None, "star")


def test_imagefolder_export_as_reference(ao):
    from training.zeroshot import load_eval_set

    m = pl.read_parquet(ao / "manifest.parquet")
    objects = json.loads((ao / "dataset.json").read_text())["vocabulary"]["objects"]
    s = load_eval_set(ao / "exports" / "imagefolder", "reference", rare_only=False, objects=objects)
    assert s.kind == "imagefolder" and len(s.keys) == m.height and s.files and s.images is None
    want = {f"{r['split']}/{r['attr'].replace(' ', '_')}_{r['obj'].replace(' ', '_')}/{r['key']}.jpg": (r["attr"], r["obj"])
            for r in m.iter_rows(named=True)}
    assert {k: (a, o) for k, a, o in zip(s.keys, s.attrs, s.objs, strict=True)} == want


def test_czsl_root_as_reference_gives_its_seen_pairs(ao):
    from training.zeroshot import load_eval_set

    m = pl.read_parquet(ao / "manifest.parquet")
    root = ao / "exports" / "czsl"
    train_pairs = {tuple(line.split()) for line in (root / "compositional-split-natural" / "train_pairs.txt")
                   .read_text().splitlines() if line.strip()}
    seen = load_eval_set(root, "reference", rare_only=False)
    unseen = load_eval_set(root, "rare", rare_only=True)
    in_train = m.filter(pl.struct("attr", "obj").map_elements(
        lambda r: (r["attr"].replace(" ", "_"), r["obj"].replace(" ", "_")) in train_pairs, return_dtype=pl.Boolean))
    assert seen.kind == "czsl" and len(seen.keys) == in_train.height > 0
    assert len(unseen.keys) == m.height - in_train.height and set(unseen.attrs).isdisjoint({None})
    assert set(zip(unseen.attrs, unseen.objs, strict=True)) <= set(m.filter(pl.col("rare")).select("attr", "obj").rows())


@pytest.mark.slow
def test_imagenet_style_folder_and_cli(ao, tmp_path, tiny_mini_spec, capsys):
    """Classes named by wnid (LOC_synset_mapping.txt beside them): object columns only. `curate eval
    zeroshot` runs in this process with the mini-CLIP the dataset was built with (``tiny_mini_spec``)."""
    m = pl.read_parquet(ao / "manifest.parquet")
    folder = tmp_path / "imagenet-val"
    mapping = []
    for i, ((obj,), g) in enumerate(m.group_by("obj", maintain_order=True)):
        wnid = f"n{i:08d}"
        mapping.append(f"{wnid} {obj}, another name")
        (folder / wnid).mkdir(parents=True)
        for r in g.head(2).iter_rows(named=True):
            src = ao / "exports" / "imagefolder" / r["split"] / f"{r['attr'].replace(' ', '_')}_{r['obj'].replace(' ', '_')}"
            shutil.copy(src / f"{r['key']}.jpg", folder / wnid / f"{r['key']}.JPEG")
    (folder / "LOC_synset_mapping.txt").write_text("\n".join(mapping) + "\n")
    out = tmp_path / "eval"
    code, err = curate_here("eval", "zeroshot", str(ao), "--model", tiny_mini_spec, "--reference", str(folder),
                            "--out", str(out), "--device", "cpu", capsys=capsys)
    assert code == 0, err[-2000:]
    rep = json.loads((out / "zeroshot.json").read_text())
    ref = rep["results"]["reference"]
    assert ref["source"] == "imagefolder" and ref["images"] == 2 * m["obj"].n_unique()
    assert ref["images_with_attribute"] == 0 and ref["composition_top1"] is None
    assert 0.0 <= ref["object_top1"] <= ref["object_top5"] <= 1.0
    assert rep["object_classes"] == len(json.loads((ao / "dataset.json").read_text())["vocabulary"]["objects"])
    md = (out / "zeroshot.md").read_text()
    assert "| reference |" in md and "—" in md and "object label only" in md
    # and a CZSL root through the same command
    code, err = curate_here("eval", "zeroshot", str(ao), "--model", tiny_mini_spec, "--reference",
                            str(ao / "exports" / "czsl"), "--out", str(tmp_path / "eval2"), "--device", "cpu",
                            capsys=capsys)
    assert code == 0, err[-2000:]
    ref = json.loads((tmp_path / "eval2" / "zeroshot.json").read_text())["results"]["reference"]
    assert ref["source"] == "czsl" and ref["composition_top1"] is not None and ref["images_with_attribute"] == ref["images"]
