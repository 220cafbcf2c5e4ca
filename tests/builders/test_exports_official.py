"""Every export opens in its official loader, unmodified (issue 16).

The loaders are transcribed as test oracles in ``official_loaders.py`` (their parsing and
file access, the preprocessing left out), each citing its source:

* ``CompositionDataset``: ExplainableML/czsl ``data/dataset.py`` (``parse_split``,
  ``get_split_info``, ``ImageLoader``) — TRIDENT reads the same layout;
* ``FashionIQDataset`` and ``CIRRDataset``: ABaldrati/CLIP4Cir ``src/data_utils.py``, **with**
  the ``dress_type should be in ['dress', 'shirt', 'toptee']`` check;
* ``CIRCODataset``: miccunifi/CIRCO ``src/dataset.py`` plus ``get_semantic_aspects`` as
  ``src/evaluation.py`` calls it, and that script's semantic mAP@10;
* clip-retrieval: the real ``clip-retrieval index`` command and its ``ParquetMetadataProvider``.

The dataset and triplets are the session's build (``conftest.ao_with_triplets``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from official_loaders import (
    CIRCO_ASPECTS,
    CIRCODataset,
    CIRRDataset,
    CompositionDataset,
    FashionIQDataset,
    circo_semantic_map10,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def ao(ao_with_triplets) -> Path:
    return ao_with_triplets


# -- CZSL ----------------------------------------------------------------------------------
def test_czsl_export_loads_in_composition_dataset(ao):
    m = pl.read_parquet(ao / "manifest.parquet")
    root = ao / "exports" / "czsl"
    total = 0
    for phase in ("train", "val", "test"):
        ds = CompositionDataset(root, phase)
        assert len(ds) == m.filter(pl.col("split") == phase).height > 0
        for i in range(len(ds)):
            size, a, o, p = ds[i]
            assert size[0] > 0 and ds.pairs[p] == (ds.attrs[a], ds.objs[o])
        total += len(ds)
    assert total == m.height
    unseen = {(a.replace(" ", "_"), o.replace(" ", "_")) for a, o in
              m.filter(pl.col("rare")).select("attr", "obj").unique().rows()}
    assert unseen and not unseen & set(CompositionDataset(root, "train").train_pairs)


# -- CLIP4Cir: FashionIQ and CIRR ------------------------------------------------------------
def test_fashioniq_export_passes_clip4cir_category_check(ao):
    from builders.triplets.exports import category_of

    root = ao / "triplets" / "fashioniq"
    info = json.loads((ao / "triplets" / "triplets.json").read_text())
    mapping = info["fashioniq_categories"]["map"]
    assert info["fashioniq_categories"]["spec"] == "auto" and set(mapping.values()) <= {"dress", "shirt", "toptee"}
    assert json.loads((root / "category_map.json").read_text()) == mapping
    assert json.loads((root / "categories.json").read_text()) == ["dress", "shirt", "toptee"]
    t = pl.read_parquet(ao / "triplets" / "triplets.parquet")
    objects = set(t["ref_obj"].unique().to_list()) | set(t["tgt_obj"].unique().to_list())
    assert set(mapping) == {c.replace(" ", "_") for c in objects}
    dropped = info["exports"]["fashioniq"]["dropped"]
    for split in ("train", "val", "test"):
        # what CLIP4Cir's scripts pass: all three categories
        rel = FashionIQDataset(root, split, ["dress", "toptee", "shirt"], "relative")
        classic = FashionIQDataset(root, split, ["dress", "toptee", "shirt"], "classic")
        rows = t.filter(pl.col("split") == split)
        of = {o: mapping[category_of({"ref_obj": o})] for o in objects}
        same = rows.filter(pl.col("ref_obj").replace_strict(of) == pl.col("tgt_obj").replace_strict(of))
        assert len(rel) == same.height == rows.height - sum(dropped[split].values())
        names = [classic[i][0] for i in range(len(classic))]
        assert len(names) == len(set(names))  # each category's gallery is its own
        for i in range(len(rel)):
            item = rel[i]
            assert len(item[2]) == 2
            assert rel.triplets[i]["candidate"] in names and rel.triplets[i]["target"] in names
    with pytest.raises(ValueError, match="dress_type"):
        FashionIQDataset(root, "val", ["heart"], "relative")  # the check is kept, and our names pass it


def test_fashioniq_explicit_mapping_and_objects(tmp_path, capfd):
    from test_triplets import config, make_cir_dataset

    from builders.triplets import build_triplets
    from builders.triplets.exports import fashioniq_mapping
    from curate.errors import CurateError

    rows = [{"ref_obj": o} for o in ["circle"] * 5 + ["square"] * 3 + ["star"] * 2 + ["paper plane"]]
    assert fashioniq_mapping(rows, "circle=shirt,*=toptee") == {"circle": "shirt", "paper_plane": "toptee",
                                                                "square": "toptee", "star": "toptee"}
    auto = fashioniq_mapping(rows, "auto")
    assert auto == {"circle": "dress", "square": "shirt", "star": "toptee", "paper_plane": "toptee"}
    assert fashioniq_mapping(rows, "paper plane=dress") == {"circle": "shirt", "paper_plane": "dress",
                                                            "square": "toptee", "star": "dress"}
    assert fashioniq_mapping(rows, "objects") == {"circle": "circle", "paper_plane": "paper_plane",
                                                  "square": "square", "star": "star"}
    with pytest.raises(CurateError, match="fashioniq-categories"):
        fashioniq_mapping(rows, "circle=hat")
    ds = make_cir_dataset(tmp_path / "ds", per_pair=4)
    out = tmp_path / "t"
    info = build_triplets(config(ds, out, formats=["fashioniq"], fashioniq_categories="circle=dress,*=shirt"))
    assert info["fashioniq_categories"]["map"] == {"circle": "dress", "square": "shirt", "star": "shirt"}
    # the command's refusal, in this process (main's exit status and what it wrote to stderr)
    from curate.cli import main

    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["triplets", str(ds), "--out", str(tmp_path / "bad"), "--fashioniq-categories", "circle=hat"])
    err = capfd.readouterr().err
    assert stop.value.code == 2 and "fashioniq-categories" in err and "Traceback" not in err


def test_cirr_export_loads_in_cirr_dataset(ao):
    t = pl.read_parquet(ao / "triplets" / "triplets.parquet")
    for split, name in (("train", "train"), ("val", "val"), ("test", "test1")):
        rel = CIRRDataset(ao / "triplets", name, "relative")
        classic = CIRRDataset(ao / "triplets", name, "classic")
        assert len(rel) == t.filter(pl.col("split") == split).height > 0
        items = [rel[i] for i in range(len(rel))]
        assert all(classic[i][1][0] > 0 for i in range(len(classic)))
        if split == "val":
            assert all(len(x[3]) == 6 for x in items)


# -- CIRCO ---------------------------------------------------------------------------------
def test_circo_export_has_semantic_aspects_from_the_edit_type(ao):
    from training.metrics.cir import circo_metrics

    t = pl.read_parquet(ao / "triplets" / "triplets.parquet")
    root = ao / "triplets" / "circo"
    for split in ("val", "test"):
        ds = CIRCODataset(root, split, "relative")
        sub = t.filter(pl.col("split") == split)
        assert len(ds) == sub.height > 0
        for i, r in enumerate(sub.iter_rows(named=True)):
            aspects = ds.get_semantic_aspects(i)
            assert aspects and set(aspects) <= set(CIRCO_ASPECTS)
            assert ("direct_addressing" in aspects) == (r["mode"] == "attribute") and "compare_change" in aspects
            assert ds[i]["relative_caption"] == r["edit_text"]
    ds = CIRCODataset(root, "val", "relative")
    # an oracle ranking: every query's ground truths first -> semantic mAP@10 = 1 where aspects occur
    preds = {q: list(ds.annotations[q]["gt_img_ids"]) + [0] * 50 for q in range(len(ds))}
    sem = circo_semantic_map10(ds, preds)
    assert sem["compare_change"] == pytest.approx(1.0)
    modes = set(t.filter(pl.col("split") == "val")["mode"])
    assert (sem["direct_addressing"] == pytest.approx(1.0)) if "attribute" in modes else np.isnan(sem["direct_addressing"])
    with open(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json") as f:
        index_ids = [im["id"] for im in json.load(f)["images"]]
    pos = {i: j for j, i in enumerate(index_ids)}
    sim = np.zeros((len(ds), len(index_ids)), np.float32)
    for q, a in enumerate(ds.annotations):
        for rank, g in enumerate(a["gt_img_ids"]):
            sim[q, pos[g]] = 10.0 - 0.01 * rank
    ours = circo_metrics(sim, index_ids, [a["reference_img_id"] for a in ds.annotations],
                         [a["target_img_id"] for a in ds.annotations], [a["gt_img_ids"] for a in ds.annotations],
                         semantic_aspects=[ds.get_semantic_aspects(q) for q in range(len(ds))])
    assert ours["semantic_map_at10"]["compare_change"] == pytest.approx(1.0)  # no longer NaN
    assert ours["semantic_map_at10"]["compare_change"] == pytest.approx(sem["compare_change"])


# -- clip-retrieval --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.system
def test_clip_retrieval_index_and_metadata_provider(ao, tmp_path):
    import faiss
    from clip_retrieval.clip_back import ParquetMetadataProvider

    meta = pl.read_parquet(sorted((ao / "embeddings" / "metadata").glob("*.parquet"))[0])
    for col in ("key", "shard", "caption", "image_path"):
        assert col in meta.columns and meta[col].null_count() == 0
    m = pl.read_parquet(ao / "manifest.parquet").sort("key")
    assert meta["key"].to_list() == m["key"].to_list() and meta["shard"].to_list() == m["shard"].to_list()
    index = tmp_path / "index"
    exe = Path(sys.executable).with_name("clip-retrieval")
    r = subprocess.run([str(exe), "index", "--embeddings_folder", str(ao / "embeddings"), "--index_folder", str(index)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-2000:]
    provider = ParquetMetadataProvider(str(index / "metadata"))
    emb = np.load(ao / "embeddings" / "img_emb" / "img_emb_0.npy")
    _, ids = faiss.read_index(str(index / "image.index")).search(emb[:3].astype(np.float32), 1)
    got = provider.get([int(i) for i in ids[:, 0]], ["key", "shard", "caption", "image_path"])
    assert [g["key"] for g in got] == m["key"].to_list()[:3]
    row = m.row(0, named=True)
    assert got[0]["shard"] == row["shard"] and got[0]["caption"] == f"a photo of a {row['attr']} {row['obj']}"
    assert got[0]["image_path"] == row["key"]
