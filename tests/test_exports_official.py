"""Every export opens in its official loader, unmodified (issue 16).

The loaders are transcribed as test oracles (their parsing and file access, the
preprocessing left out), each citing its source:

* ``CompositionDataset``: ExplainableML/czsl ``data/dataset.py`` (``parse_split``,
  ``get_split_info``, ``ImageLoader``) — TRIDENT reads the same layout;
* ``FashionIQDataset`` and ``CIRRDataset``: ABaldrati/CLIP4Cir ``src/data_utils.py``, **with**
  the ``dress_type should be in ['dress', 'shirt', 'toptee']`` check;
* ``CIRCODataset``: miccunifi/CIRCO ``src/dataset.py`` plus ``get_semantic_aspects`` as
  ``src/evaluation.py`` calls it, and that script's semantic mAP@10;
* clip-retrieval: the real ``clip-retrieval index`` command and its ``ParquetMetadataProvider``.

The dataset and triplets are the session's build (``test_datasets_load.built_ao``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import polars as pl
import pytest
from test_datasets_load import built_ao

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def ao(tmp_path_factory, small_world, tiny_clip_spec) -> Path:
    return built_ao(tmp_path_factory, small_world, tiny_clip_spec)


def opened(path: Path) -> tuple[int, int]:
    with PIL.Image.open(path) as im:
        return im.convert("RGB").size


# -- CZSL ----------------------------------------------------------------------------------
class CompositionDataset:
    """ExplainableML/czsl data/dataset.py: the split files, the .t7 metadata, images under images/."""

    def __init__(self, root: Path, phase: str, split: str = "compositional-split-natural"):
        import torch

        self.root, self.phase, self.split = root, phase, split
        self.attrs, self.objs, self.pairs, self.train_pairs, self.val_pairs, self.test_pairs = self.parse_split()
        data = torch.load(root / f"metadata_{split}.t7", weights_only=True)  # official: torch.load(path)
        self.train_data, self.val_data, self.test_data = [], [], []
        for instance in data:
            image, attr, obj, settype = instance["image"], instance["attr"], instance["obj"], instance["set"]
            curr_data = [image, attr, obj]
            if attr == "NA" or (attr, obj) not in self.pairs or settype == "NA":
                continue
            if settype == "train":
                self.train_data.append(curr_data)
            elif settype == "val":
                self.val_data.append(curr_data)
            else:
                self.test_data.append(curr_data)
        self.data = {"train": self.train_data, "val": self.val_data, "test": self.test_data}[phase]

    def parse_split(self):
        def parse_pairs(pair_list):
            with open(pair_list) as f:
                pairs = f.read().strip().split("\n")
                pairs = [line.split() for line in pairs]
                pairs = list(map(tuple, pairs))
            attrs, objs = zip(*pairs, strict=True)
            return attrs, objs, pairs

        tr_attrs, tr_objs, tr_pairs = parse_pairs(self.root / self.split / "train_pairs.txt")
        vl_attrs, vl_objs, vl_pairs = parse_pairs(self.root / self.split / "val_pairs.txt")
        ts_attrs, ts_objs, ts_pairs = parse_pairs(self.root / self.split / "test_pairs.txt")
        all_attrs = sorted(set(tr_attrs + vl_attrs + ts_attrs))
        all_objs = sorted(set(tr_objs + vl_objs + ts_objs))
        all_pairs = sorted(set(tr_pairs + vl_pairs + ts_pairs))
        return all_attrs, all_objs, all_pairs, tr_pairs, vl_pairs, ts_pairs

    def __getitem__(self, index):
        image, attr, obj = self.data[index]
        img = opened(self.root / "images" / image)  # ImageLoader: Image.open(ospj(root, img)).convert('RGB')
        return img, self.attrs.index(attr), self.objs.index(obj), self.pairs.index((attr, obj))

    def __len__(self):
        return len(self.data)


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
class FashionIQDataset:
    """ABaldrati/CLIP4Cir src/data_utils.py FashionIQDataset; ``base_path / 'fashionIQ_dataset'`` = root."""

    def __init__(self, root: Path, split: str, dress_types: list[str], mode: str):
        self.root, self.mode, self.dress_types, self.split = root, mode, dress_types, split
        if mode not in ["relative", "classic"]:
            raise ValueError("mode should be in ['relative', 'classic']")
        if split not in ["test", "train", "val"]:
            raise ValueError("split should be in ['test', 'train', 'val']")
        for dress_type in dress_types:
            if dress_type not in ["dress", "shirt", "toptee"]:
                raise ValueError("dress_type should be in ['dress', 'shirt', 'toptee']")
        self.triplets: list[dict] = []
        for dress_type in dress_types:
            with open(root / "captions" / f"cap.{dress_type}.{split}.json") as f:
                self.triplets.extend(json.load(f))
        self.image_names: list = []
        for dress_type in dress_types:
            with open(root / "image_splits" / f"split.{dress_type}.{split}.json") as f:
                self.image_names.extend(json.load(f))

    def __getitem__(self, index):
        if self.mode == "relative":
            image_captions = self.triplets[index]["captions"]
            reference_name = self.triplets[index]["candidate"]
            if self.split == "train":
                reference_image = opened(self.root / "images" / f"{reference_name}.jpg")
                target_name = self.triplets[index]["target"]
                target_image = opened(self.root / "images" / f"{target_name}.jpg")
                return reference_image, target_image, image_captions
            if self.split == "val":
                return reference_name, self.triplets[index]["target"], image_captions
            return reference_name, opened(self.root / "images" / f"{reference_name}.jpg"), image_captions
        image_name = self.image_names[index]
        return image_name, opened(self.root / "images" / f"{image_name}.jpg")

    def __len__(self):
        return len(self.triplets) if self.mode == "relative" else len(self.image_names)


def test_fashioniq_export_passes_clip4cir_category_check(ao):
    root = ao / "triplets" / "fashioniq"
    info = json.loads((ao / "triplets" / "triplets.json").read_text())
    mapping = info["fashioniq_categories"]["map"]
    assert info["fashioniq_categories"]["spec"] == "auto" and set(mapping.values()) <= {"dress", "shirt", "toptee"}
    assert json.loads((root / "category_map.json").read_text()) == mapping
    assert json.loads((root / "categories.json").read_text()) == ["dress", "shirt", "toptee"]
    t = pl.read_parquet(ao / "triplets" / "triplets.parquet")
    assert set(mapping) == {c.replace(" ", "_") for c in t["ref_obj"].unique().to_list()}
    for split in ("train", "val", "test"):
        # what CLIP4Cir's scripts pass: all three categories
        rel = FashionIQDataset(root, split, ["dress", "toptee", "shirt"], "relative")
        classic = FashionIQDataset(root, split, ["dress", "toptee", "shirt"], "classic")
        assert len(rel) == t.filter(pl.col("split") == split).height
        names = {classic[i][0] for i in range(len(classic))}
        for i in range(len(rel)):
            item = rel[i]
            assert len(item[2]) == 2
            assert rel.triplets[i]["candidate"] in names and rel.triplets[i]["target"] in names
    with pytest.raises(ValueError, match="dress_type"):
        FashionIQDataset(root, "val", ["heart"], "relative")  # the check is kept, and our names pass it


def test_fashioniq_explicit_mapping_and_objects(tmp_path):
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
    r = subprocess.run([str(Path(sys.executable).with_name("curate")), "triplets", str(ds), "--out",
                        str(tmp_path / "bad"), "--fashioniq-categories", "circle=hat"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "fashioniq-categories" in r.stderr and "Traceback" not in r.stderr


class CIRRDataset:
    """ABaldrati/CLIP4Cir src/data_utils.py CIRRDataset; ``base_path / 'cirr_dataset'`` = root."""

    def __init__(self, root: Path, split: str, mode: str):
        if split not in ["test1", "train", "val"]:
            raise ValueError("split should be in ['test1', 'train', 'val']")
        self.root, self.split, self.mode = root, split, mode
        with open(root / "cirr" / "captions" / f"cap.rc2.{split}.json") as f:
            self.triplets = json.load(f)
        with open(root / "cirr" / "image_splits" / f"split.rc2.{split}.json") as f:
            self.name_to_relpath = json.load(f)

    def __getitem__(self, index):
        if self.mode == "relative":
            group_members = self.triplets[index]["img_set"]["members"]
            reference_name = self.triplets[index]["reference"]
            rel_caption = self.triplets[index]["caption"]
            if self.split == "train":
                reference_image = opened(self.root / self.name_to_relpath[reference_name])
                target_image = opened(self.root / self.name_to_relpath[self.triplets[index]["target_hard"]])
                return reference_image, target_image, rel_caption
            if self.split == "val":
                return reference_name, self.triplets[index]["target_hard"], rel_caption, group_members
            return self.triplets[index]["pairid"], reference_name, rel_caption, group_members
        image_name = list(self.name_to_relpath.keys())[index]
        return image_name, opened(self.root / self.name_to_relpath[image_name])

    def __len__(self):
        return len(self.triplets) if self.mode == "relative" else len(self.name_to_relpath)


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
class CIRCODataset:
    """miccunifi/CIRCO src/dataset.py CIRCODataset (+ get_semantic_aspects, as src/evaluation.py calls it)."""

    def __init__(self, data_path: Path, split: str, mode: str):
        if split not in ["test", "val"]:
            raise ValueError("split should be in ['test', 'val']")
        self.split, self.mode = split, mode
        with open(data_path / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json") as f:
            imgs_info = json.load(f)
        self.img_paths = [data_path / "COCO2017_unlabeled" / "unlabeled2017" / i["file_name"] for i in imgs_info["images"]]
        self.img_ids = [i["id"] for i in imgs_info["images"]]
        self.img_ids_indexes_map = {str(img_id): i for i, img_id in enumerate(self.img_ids)}
        with open(data_path / "annotations" / f"{split}.json") as f:
            self.annotations: list[dict] = json.load(f)
        self.max_num_gts = 23

    def get_target_img_ids(self, index) -> dict:
        return {"target_img_id": self.annotations[index]["target_img_id"],
                "gt_img_ids": self.annotations[index]["gt_img_ids"]}

    def get_semantic_aspects(self, index) -> list[str]:
        return self.annotations[index]["semantic_aspects"]

    def __getitem__(self, index) -> dict:
        if self.mode == "relative":
            a = self.annotations[index]
            reference_img_id = str(a["reference_img_id"])
            out = {"reference_img": opened(self.img_paths[self.img_ids_indexes_map[reference_img_id]]),
                   "relative_caption": a["relative_caption"], "shared_concept": a["shared_concept"],
                   "query_id": str(a["id"])}
            if self.split == "val":
                target_img_id = str(a["target_img_id"])
                gt_img_ids = [str(x) for x in a["gt_img_ids"]]
                out["target_img"] = opened(self.img_paths[self.img_ids_indexes_map[target_img_id]])
                out["gt_img_ids"] = gt_img_ids + [""] * (self.max_num_gts - len(gt_img_ids))
            return out
        return {"img": opened(self.img_paths[index]), "img_id": str(self.img_ids[index])}

    def __len__(self):
        return len(self.annotations) if self.mode == "relative" else len(self.img_ids)


CIRCO_ASPECTS = ["cardinality", "addition", "negation", "direct_addressing", "compare_change",
                 "comparative_statement", "statement_with_conjunction", "spatial_relations_background", "viewpoint"]


def circo_semantic_map10(ds: CIRCODataset, predictions: dict[int, list[int]]) -> dict[str, float]:
    """miccunifi/CIRCO src/evaluation.py compute_metrics: the semantic mAP@10 part."""
    from collections import defaultdict

    semantic_aps_at10 = defaultdict(list)
    for query_id, preds in predictions.items():
        gt_img_ids = ds.get_target_img_ids(int(query_id))["gt_img_ids"]
        preds = np.array(preds, dtype=int)
        ap_labels = np.isin(preds, gt_img_ids)
        precisions = np.cumsum(ap_labels, axis=0) * ap_labels
        precisions = precisions / np.arange(1, ap_labels.shape[0] + 1)
        for aspect in ds.get_semantic_aspects(int(query_id)):
            semantic_aps_at10[aspect].append(float(np.sum(precisions[:10]) / min(len(gt_img_ids), 10)))
    return {a: float(np.mean(semantic_aps_at10[a])) if semantic_aps_at10[a] else float("nan") for a in CIRCO_ASPECTS}


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
