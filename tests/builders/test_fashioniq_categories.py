"""The FashionIQ export means what FashionIQ means: a triplet's reference and target are of one
category, each category has its own gallery; what cannot be placed is counted by reason, and
CLIP4Cir's loader and validation code (``compute_fiq_val_metrics``) run on every category."""

from __future__ import annotations

import io
import json
from operator import itemgetter

import numpy as np
import PIL.Image
import polars as pl
import torch
import torch.nn.functional as F
from official_loaders import FashionIQDataset

from builders.triplets.exports import export_fashioniq


def compute_fiq_val_metrics(relative_val_dataset, index_features, index_names, predict):
    """ABaldrati/CLIP4Cir src/validate.py ``compute_fiq_val_metrics`` with
    ``generate_fiq_val_predictions`` inlined; ``predict(reference_features, captions)`` stands for
    CLIP's text encoder and the combining function (reference features come from the gallery, as
    there: ``itemgetter(*reference_names)(name_to_feat)``)."""
    name_to_feat = dict(zip(index_names, index_features, strict=True))
    predicted, target_names = [], []
    for i in range(len(relative_val_dataset)):
        reference_name, target_name, captions = relative_val_dataset[i]
        predicted.append(F.normalize(predict(itemgetter(reference_name)(name_to_feat), captions), dim=-1))
        target_names.append(target_name)
    predicted_features = torch.stack(predicted)
    index_features = F.normalize(index_features, dim=-1).float()
    distances = 1 - predicted_features @ index_features.T
    sorted_indices = torch.argsort(distances, dim=-1).cpu()
    sorted_index_names = np.array(index_names)[sorted_indices]
    labels = torch.tensor(
        sorted_index_names == np.repeat(np.array(target_names), len(index_names)).reshape(len(target_names), -1))
    assert torch.equal(torch.sum(labels, dim=-1).int(), torch.ones(len(target_names)).int())
    recall_at10 = (torch.sum(labels[:, :10]) / len(labels)).item() * 100
    recall_at50 = (torch.sum(labels[:, :50]) / len(labels)).item() * 100
    return recall_at10, recall_at50


def _row(i, split, ref, ref_obj, tgt, tgt_obj, negatives=(), gt=()):
    return {"id": f"t{i}", "split": split, "reference": ref, "target": tgt, "ref_obj": ref_obj, "tgt_obj": tgt_obj,
            "negatives": list(negatives), "gt": list(gt) or [tgt], "edit_text": f"edit {i}",
            "edit_text_2": f"other {i}"}


def _triplets():
    """Objects circle, square, star; images named by object. Val: 2 circle->circle, 1 square->square,
    2 star->star (kept); circle->square, star->circle (cross); one with no target object, one with
    an object of no name (unknown). Negatives cross categories, as hard negatives do."""
    rows = [
        _row(0, "val", "c1", "circle", "c2", "circle", negatives=["s1", "c3"]),
        _row(1, "val", "c3", "circle", "c1", "circle", negatives=["p1"]),
        _row(2, "val", "s1", "square", "s2", "square", negatives=["c1", "p2"]),
        _row(3, "val", "p1", "star", "p2", "star", negatives=["s2"]),
        _row(4, "val", "p2", "star", "p1", "star", negatives=["x9"]),
        _row(5, "val", "c2", "circle", "s2", "square"),
        _row(6, "val", "p1", "star", "c3", "circle"),
        _row(7, "val", "c1", "circle", "u1", None),
        _row(8, "val", "u2", "", "c2", "circle"),
        _row(9, "train", "c1", "circle", "c3", "circle", negatives=["s1"]),
        _row(10, "train", "s1", "square", "c1", "circle"),
        _row(11, "test", "p1", "star", "p2", "star"),
    ]
    return pl.DataFrame(rows)


def _staged(tmp_path, df):
    staged = tmp_path / "staged"
    staged.mkdir()
    names = set(df["reference"]) | set(df["target"]) | {n for v in df["negatives"] for n in v}
    for k, name in enumerate(sorted(names)):
        buf = io.BytesIO()
        PIL.Image.new("RGB", (8, 8), (k * 20 % 255, 40, 90)).save(buf, "JPEG")
        (staged / f"{name}.jpg").write_bytes(buf.getvalue())
    return staged


def test_only_same_category_triplets_with_disjoint_galleries(tmp_path, caplog):
    df = _triplets()
    counts = export_fashioniq(df, tmp_path, _staged(tmp_path, df), "circle=dress,square=shirt,star=toptee")
    root = tmp_path / "fashioniq"
    assert counts["dropped"] == {"val": {"cross_category": 2, "unknown_category": 2},
                                 "train": {"cross_category": 1, "unknown_category": 0},
                                 "test": {"cross_category": 0, "unknown_category": 0}}
    assert "5 of 12 triplets left out: 3 cross categories" in caplog.text
    assert (counts["dress.val"], counts["shirt.val"], counts["toptee.val"]) == (2, 1, 2)
    galleries = {c: json.loads((root / "image_splits" / f"split.{c}.val.json").read_text())
                 for c in ("dress", "shirt", "toptee")}
    assert galleries == {"dress": ["c1", "c2", "c3"], "shirt": ["s1", "s2"], "toptee": ["p1", "p2"]}
    for split in ("train", "val", "test"):
        per = [set(json.loads((root / "image_splits" / f"split.{c}.{split}.json").read_text()))
               for c in ("dress", "shirt", "toptee")]
        assert sum(len(g) for g in per) == len(set().union(*per))  # disjoint
        for c in ("dress", "shirt", "toptee"):
            rel = FashionIQDataset(root, split, [c], "relative")
            classic = FashionIQDataset(root, split, [c], "classic")
            gallery = {classic[i][0] for i in range(len(classic))}
            assert all(t["candidate"] in gallery and t["target"] in gallery for t in rel.triplets)


def test_clip4cir_validation_runs_on_every_category(tmp_path):
    df = _triplets()
    export_fashioniq(df, tmp_path, _staged(tmp_path, df), "auto")
    root = tmp_path / "fashioniq"
    g = torch.Generator().manual_seed(0)
    ran = []
    for c in json.loads((root / "categories.json").read_text()):
        classic = FashionIQDataset(root, "val", [c], "classic")
        rel = FashionIQDataset(root, "val", [c], "relative")
        if not len(rel):
            continue
        names = [classic[i][0] for i in range(len(classic))]
        feats = torch.randn(len(names), 16, generator=g)
        r10, r50 = compute_fiq_val_metrics(rel, feats, names, lambda ref, caps: ref + 0.1)
        assert 0 <= r10 <= r50 == 100.0  # a category's gallery is under 50 images: every target is found
        ran.append(c)
    assert ran


def test_categories_unknown_to_the_mapping_are_counted_and_reported(tmp_path, caplog):
    rows = [_row(0, "val", "a1", "", "a2", ""), _row(1, "val", "b1", None, "b2", None),
            _row(2, "val", "c1", "circle", "c2", "circle")]
    df = pl.DataFrame(rows)
    counts = export_fashioniq(df, tmp_path, _staged(tmp_path, df), "auto")
    assert counts["dropped"]["val"] == {"cross_category": 0, "unknown_category": 2}
    assert counts["category_map"] == {"circle": "dress"}
    assert "2 with an object of no known category" in caplog.text
    assert json.loads((tmp_path / "fashioniq" / "captions" / "cap.dress.val.json").read_text())[0]["candidate"] == "c1"
