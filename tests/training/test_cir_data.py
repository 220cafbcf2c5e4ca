"""training/cir data readers: our triplet folders and the official CIRR / CIRCO / FashionIQ / GeneCIS
layouts, and every bad input of issue 13 section 5 (counted and skipped, never a crash).

Also hosts the helpers the other tests/test_cir_*.py files import (a tiny triplets folder mined
with a tiny random CLIP, images written as files).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import COLORS, make_tiny_dataset

from training.cir.benchmark import evaluate_cir
from training.cir.data import (
    ImageSource,
    read_circo,
    read_cirr,
    read_fashioniq,
    read_genecis,
    read_ours,
    read_splits,
    vg_crop,
)
from training.metrics.cir import circo_metrics, cirr_metrics, fashioniq_metrics

ALL_FORMATS = ["shards", "cirr", "circo", "fashioniq", "genecis"]


def build_tiny_triplets(root: Path, spec: str, formats: list[str] | None = None) -> Path:
    """A tiny dataset (3 objects x 4 colours x 6 images) and its triplets, mined with ``spec``."""
    from builders.triplets import TripletsConfig, build_triplets

    ds = make_tiny_dataset(root / "ds", per_pair=6)
    out = root / "triplets"
    build_triplets(TripletsConfig(dataset=str(ds), out=str(out), max_per_pair=4, model=spec, device="cpu",
                                  formats=formats or ALL_FORMATS))
    return out


_SHARED: dict[str, Path] = {}


def shared_tiny_triplets(tmp_path_factory, spec: str) -> Path:
    """One tiny triplets folder (every format) per test session, for the tests that only read it."""
    if spec not in _SHARED:
        _SHARED[spec] = build_tiny_triplets(tmp_path_factory.mktemp("cir-shared"), spec)
    return _SHARED[spec]


def write_png(path: Path, color: tuple[int, int, int], size: int = 40) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(color) + len(path.name))
    arr = np.clip(np.zeros((size, size, 3)) + np.array(color) + rng.integers(-25, 25, (size, size, 3)), 0, 255)
    Image.fromarray(arr.astype(np.uint8)).save(path)


COLOR_LIST = list(COLORS.values())


def encode(spec: str, paths: list[Path]) -> np.ndarray:
    from PIL import Image

    from curate.embed.backends import cached_model

    return cached_model(spec, "cpu").encode_images([Image.open(p).convert("RGB") for p in paths])


@pytest.fixture(scope="module")
def tiny_trip(tmp_path_factory, tiny_clip_spec) -> Path:
    return shared_tiny_triplets(tmp_path_factory, tiny_clip_spec)


# -- our folders and their exports agree -------------------------------------------------------
def test_ours_and_exports_read_the_same_queries(tiny_trip):
    ours = read_ours(tiny_trip, "test")
    cirr = read_cirr(tiny_trip, "test")
    circo = read_circo(tiny_trip / "circo", "test")
    assert ours.queries and len(ours.queries) == len(cirr.queries) == len(circo.queries)
    assert [q.reference for q in ours.queries] == [q.reference for q in cirr.queries]
    assert [q.target for q in ours.queries] == [q.target for q in cirr.queries]
    assert set(ours.index) == set(cirr.index)
    # CIRCO names images by integer id; the alias maps them back to dataset keys (shared features)
    assert [circo.images.key(q.reference) for q in circo.queries] == [q.reference for q in ours.queries]
    assert all(len(q.group) == 6 and q.target in q.group for q in cirr.queries)
    genecis = read_genecis(tiny_trip / "genecis", "test")
    assert {s.name for s in genecis} <= {"genecis change_attribute", "genecis change_object"}
    for s in genecis:
        assert all(q.gallery[0] == q.target and q.target not in q.gallery[1:] for q in s.queries)


def test_ours_equals_cirr_format_recall(tiny_trip, tiny_clip_spec, tmp_path):
    ours = evaluate_cir("baseline:sum", tiny_trip, "ours", "test", out=tmp_path / "e1",
                        backbone=tiny_clip_spec, device="cpu")
    cirr = evaluate_cir("baseline:sum", tiny_trip, "cirr", "test", out=tmp_path / "e2",
                        backbone=tiny_clip_spec, device="cpu")
    mo, mc = ours["results"][0]["metrics"], cirr["results"][0]["metrics"]
    for k in (1, 5, 10, 50):
        assert mo[f"recall_at{k}"] == mc[f"recall_at{k}"]
    assert {"map_at5", "hard_recall_at1"} <= set(mo) and "group_recall_at1" in mc
    assert (tmp_path / "e2" / "recall_submission_test1.json").exists()
    assert (tmp_path / "e1" / "report.md").read_text().count("|") > 10


# -- bad input: triplets naming images that do not exist ---------------------------------------
def test_triplets_naming_missing_images_are_counted_and_skipped(tiny_trip, tiny_clip_spec, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_trip, broken, ignore=shutil.ignore_patterns("images", "shards"))
    df = pl.read_parquet(broken / "triplets.parquet")
    first_test = df.with_row_index().filter(pl.col("split") == "test")["index"][0]
    ghost = df.with_columns(pl.when(pl.int_range(pl.len()) == first_test).then(pl.lit("ghost-image"))
                            .otherwise(pl.col("reference")).alias("reference"))
    ghost.write_parquet(broken / "triplets.parquet")
    report = evaluate_cir("baseline:image", broken, "ours", "test", out=tmp_path / "ev", backbone=tiny_clip_spec,
                          device="cpu")
    res = report["results"][0]
    assert res["skipped"] == {"reference image missing": 1}
    assert res["queries"] == len(read_ours(tiny_trip, "test").queries) - 1
    assert 0.0 <= res["metrics"]["recall_at1"] <= 1.0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["results"][0]["skipped_examples"]


def test_target_equal_to_reference_is_skipped(tiny_trip, tmp_path):
    broken = tmp_path / "same"
    shutil.copytree(tiny_trip, broken, ignore=shutil.ignore_patterns("images", "shards"))
    df = pl.read_parquet(broken / "triplets.parquet")
    test_ids = df.filter(pl.col("split") == "test")["id"].to_list()[:2]
    df.with_columns(pl.when(pl.col("id").is_in(test_ids)).then(pl.col("reference")).otherwise(pl.col("target"))
                    .alias("target")).write_parquet(broken / "triplets.parquet")
    split = read_ours(broken, "test")
    assert split.skipped["target is the reference"] == 2
    assert all(q.target != q.reference for q in split.queries)


# -- the official CIRR layout ----------------------------------------------------------------
def make_cirr(root: Path, split: str = "val") -> tuple[Path, list[str]]:
    names = [f"img{i:02d}" for i in range(12)]
    rel = {n: f"./{split}/{i % 3}/{n}.png" for i, n in enumerate(names)}
    for i, n in enumerate(names):
        write_png(root / rel[n], COLOR_LIST[i % 4])
    rel["img99"] = f"./{split}/0/img99.png"  # listed, but the file is missing
    group = names[:6]
    caps = [
        {"pairid": 1, "reference": "img00", "target_hard": "img01", "caption": "make it blue", "img_set":
         {"id": 0, "members": group}},
        {"pairid": 2, "reference": "img02", "target_hard": "img03", "caption": "make it red", "img_set":
         {"id": 0, "members": group}},
        {"pairid": 3, "reference": "img04", "target_hard": "img05", "caption": "green", "img_set":
         {"id": 0, "members": group}},
        {"pairid": 4, "reference": "img01", "target_hard": "img01", "caption": "same", "img_set":
         {"id": 0, "members": group}},                                   # target is the reference
        {"pairid": 5, "reference": "img06", "target_hard": "img07", "caption": "short set", "img_set":
         {"id": 1, "members": names[6:11]}},                              # 5 members
        {"pairid": 6, "reference": "img08", "target_hard": "img09", "caption": "no set", "img_set":
         {"id": 2, "members": []}},                                       # empty
        {"pairid": 2, "reference": "img04", "target_hard": "img02", "caption": "again", "img_set":
         {"id": 0, "members": group}},                                    # duplicate pair id
        {"pairid": 7, "reference": "img99", "target_hard": "img00", "caption": "ghost", "img_set":
         {"id": 3, "members": ["img99", *names[:5]]}},                    # reference image file missing
    ]
    if split == "test1":
        for c in caps:
            c.pop("target_hard")
    (root / "cirr" / "captions").mkdir(parents=True)
    (root / "cirr" / "image_splits").mkdir(parents=True)
    (root / "cirr" / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(caps))
    (root / "cirr" / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps(rel))
    return root, names


def test_cirr_bad_queries_counted_metrics_match_official(tmp_path, tiny_clip_spec):
    root, names = make_cirr(tmp_path / "cirr_dataset")
    report = evaluate_cir("baseline:sum", root, "cirr", "val", out=tmp_path / "ev", backbone=tiny_clip_spec,
                          device="cpu")
    res = report["results"][0]
    assert res["skipped"] == {"target is the reference": 1, "img_set is empty or not 6 images": 2,
                              "duplicate query id": 1, "reference image missing": 1}
    assert res["queries"] == 3 and res["gallery"] == 12
    # the same numbers straight from the official-code replica on features computed here
    from curate.embed.backends import cached_model

    enc = cached_model(tiny_clip_spec, "cpu")
    gal = encode(tiny_clip_spec, [root / "val" / str(i % 3) / f"{n}.png" for i, n in enumerate(names)])
    refs, tgts, texts = ["img00", "img02", "img04"], ["img01", "img03", "img05"], ["make it blue", "make it red",
                                                                                       "green"]
    q = gal[[names.index(r) for r in refs]] + enc.encode_texts(texts)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    expected = cirr_metrics(q @ gal.T, names, refs, tgts, [names[:6]] * 3)
    for k, v in expected.items():
        assert res["metrics"][k] == pytest.approx(v, abs=1e-6)
    # the submission files: one entry per kept pair id, reference removed, subset within the group
    recall = json.loads((tmp_path / "ev" / "recall_submission_val.json").read_text())
    subset = json.loads((tmp_path / "ev" / "recall_subset_submission_val.json").read_text())
    assert recall.pop("version") == "rc2" and recall.pop("metric") == "recall"
    assert subset.pop("version") == "rc2" and subset.pop("metric") == "recall_subset"
    assert sorted(recall) == sorted(subset) == ["1", "2", "3"]
    for pid, ref in zip(("1", "2", "3"), refs, strict=True):
        assert ref not in recall[pid] and len(recall[pid]) == 11 and len(set(recall[pid])) == 11
        assert len(subset[pid]) == 3 and set(subset[pid]) <= set(names[:6]) - {ref}


def test_cirr_test_split_writes_submission_without_duplicates(tmp_path, tiny_clip_spec):
    root, _ = make_cirr(tmp_path / "cirr_dataset", "test1")
    report = evaluate_cir("baseline:text", root, "cirr", "test", out=tmp_path / "ev", backbone=tiny_clip_spec,
                          device="cpu")
    res = report["results"][0]
    assert res["metrics"] == {} and res["skipped"]["duplicate query id"] == 1
    recall = json.loads((tmp_path / "ev" / "recall_submission_test1.json").read_text())
    keys = [k for k in recall if k not in ("version", "metric")]
    assert sorted(keys) == ["1", "2", "3", "4"]  # no targets on test: only the repeated id 2 is dropped


def test_cirr_folder_error_is_clear(tmp_path):
    from curate.errors import CurateError

    with pytest.raises(CurateError, match="not a CIRR folder"):
        read_splits(tmp_path, "cirr", "val")


# -- the official CIRCO layout ---------------------------------------------------------------
def make_circo(root: Path, n: int = 60) -> Path:
    info = []
    for i in range(1, n + 1):
        fname = f"{i:012d}.jpg"
        write_png(root / "COCO2017_unlabeled" / "unlabeled2017" / fname, COLOR_LIST[i % 4])
        info.append({"id": i, "file_name": fname})
    (root / "COCO2017_unlabeled" / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").write_text(
        json.dumps({"images": info}))
    val = [{"id": 0, "reference_img_id": 1, "target_img_id": 2, "relative_caption": "is blue",
            "shared_concept": "a thing", "gt_img_ids": [2, 6, 10], "semantic_aspects": ["cardinality"]},
           {"id": 1, "reference_img_id": 3, "target_img_id": 4, "relative_caption": "is red",
            "shared_concept": "a thing", "gt_img_ids": [4, 8], "semantic_aspects": ["addition", "viewpoint"]},
           {"id": 2, "reference_img_id": 5, "target_img_id": 7, "relative_caption": "none",
            "shared_concept": "x", "gt_img_ids": []},                       # no ground truth
           {"id": 3, "reference_img_id": 9, "target_img_id": 9, "relative_caption": "self",
            "shared_concept": "x", "gt_img_ids": [9]}]                       # target is the reference
    test = [{"id": i, "reference_img_id": i + 1, "relative_caption": "is green", "shared_concept": "c"}
            for i in range(5)] + [{"id": 0, "reference_img_id": 9, "relative_caption": "dup", "shared_concept": "c"}]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "val.json").write_text(json.dumps(val))
    (root / "annotations" / "test.json").write_text(json.dumps(test))
    return root


def test_circo_no_ground_truth_skipped_metrics_match_official(tmp_path, tiny_clip_spec):
    root = make_circo(tmp_path / "CIRCO")
    report = evaluate_cir("baseline:sum", root, "circo", "val", out=tmp_path / "ev", backbone=tiny_clip_spec,
                          device="cpu")
    res = report["results"][0]
    assert res["skipped"] == {"no ground truth": 1, "target is the reference": 1}
    from curate.embed.backends import cached_model

    paths = [root / "COCO2017_unlabeled" / "unlabeled2017" / f"{i:012d}.jpg" for i in range(1, 61)]
    gal = encode(tiny_clip_spec, paths)
    q = gal[[0, 2]] + cached_model(tiny_clip_spec, "cpu").encode_texts(["is blue", "is red"])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = [str(i) for i in range(1, 61)]
    exp = circo_metrics(q @ gal.T, ids, ["1", "3"], ["2", "4"], [["2", "6", "10"], ["4", "8"]],
                        [["cardinality"], ["addition", "viewpoint"]])
    for k in ("map_at5", "map_at10", "map_at25", "map_at50", "recall_at50"):
        assert res["metrics"][k] == pytest.approx(exp[k], abs=1e-9)
    assert res["metrics"]["semantic_map_at10"]["cardinality"] == pytest.approx(exp["semantic_map_at10"]["cardinality"])


def test_circo_test_submission(tmp_path, tiny_clip_spec):
    root = make_circo(tmp_path / "CIRCO")
    evaluate_cir("baseline:text", root, "circo", "test", out=tmp_path / "ev", backbone=tiny_clip_spec, device="cpu")
    sub = json.loads((tmp_path / "ev" / "circo_submission_test.json").read_text())
    assert sorted(sub) == ["0", "1", "2", "3", "4"]  # the repeated id 0 was dropped, counted
    assert all(len(v) == 50 and len(set(v)) == 50 for v in sub.values())
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["results"][0]["skipped"] == {"duplicate query id": 1}


# -- the official FashionIQ layout -------------------------------------------------------------
def test_fashioniq_categories_and_average(tmp_path, tiny_clip_spec):
    root = tmp_path / "fashionIQ_dataset"
    for cat in ("dress", "shirt"):
        names = [f"{cat}{i}" for i in range(8)]
        for i, n in enumerate(names):
            write_png(root / "images" / f"{n}.png", COLOR_LIST[i % 4])
        caps = [{"candidate": names[i], "target": names[i + 1], "captions": ["is red.", "has dots "]}
                for i in range(0, 6, 2)] + [{"candidate": names[7], "target": names[7], "captions": ["x", "y"]}]
        (root / "captions").mkdir(parents=True, exist_ok=True)
        (root / "image_splits").mkdir(parents=True, exist_ok=True)
        (root / "captions" / f"cap.{cat}.val.json").write_text(json.dumps(caps))
        (root / "image_splits" / f"split.{cat}.val.json").write_text(json.dumps(names))
    splits = read_fashioniq(root, "val")
    assert [s.name for s in splits] == ["fashioniq dress val", "fashioniq shirt val"]
    assert all(s.skipped == {"target is the reference": 1} for s in splits)
    report = evaluate_cir("baseline:text", root, "fashioniq", "val", out=tmp_path / "ev",
                          backbone=tiny_clip_spec, device="cpu")
    names_ = [r["name"] for r in report["results"]]
    assert names_ == ["fashioniq dress val", "fashioniq shirt val", "fashioniq average val"]
    avg = report["results"][-1]["metrics"]
    d, s = report["results"][0]["metrics"], report["results"][1]["metrics"]
    assert avg["average_recall_at10"] == pytest.approx((d["recall_at10"] + s["recall_at10"]) / 2)
    # text-only queries use CLIP4Cir's joined caption: identical texts -> identical recalls to a direct call
    from curate.embed.backends import cached_model

    names = [f"dress{i}" for i in range(8)]
    gal = encode(tiny_clip_spec, [root / "images" / f"{n}.png" for n in names])
    t = cached_model(tiny_clip_spec, "cpu").encode_texts(["Is red and has dots"] * 3)
    exp = fashioniq_metrics(t @ gal.T, names, ["dress1", "dress3", "dress5"])
    assert d["recall_at10"] == pytest.approx(exp["recall_at10"])


# -- GeneCIS records -----------------------------------------------------------------------------
def test_genecis_official_records_modal_gallery_and_vg_crop(tmp_path, tiny_clip_spec):
    root = tmp_path / "genecis"
    for i in range(1, 9):
        write_png(root / "images" / f"{i:012d}.jpg", COLOR_LIST[i % 4])
        write_png(root / "images" / f"{100 + i}.jpg", COLOR_LIST[i % 4], size=60)

    def coco(i: int) -> dict:
        return {"val_image_id": i}

    items = [{"reference": coco(1), "target": coco(2), "gallery": [coco(3), coco(4), coco(5)], "condition": "red"},
             {"reference": coco(2), "target": coco(6), "gallery": [coco(7), coco(8), coco(1)], "condition": "blue"},
             {"reference": coco(3), "target": coco(4), "gallery": [coco(5)], "condition": "odd"}]   # not modal
    vg = [{"reference": {"image_id": 101, "instance_bbox": [5, 5, 20, 30]},
           "target": {"image_id": 102, "instance_bbox": [0, 0, 10, 10]},
           "gallery": [{"image_id": 103, "instance_bbox": [1, 2, 30, 20]}], "condition": "color"}]
    (root / "change_object.json").write_text(json.dumps(items))
    (root / "focus_attribute.json").write_text(json.dumps(vg))
    splits = read_genecis(root, "test")
    obj = next(s for s in splits if s.name == "genecis change_object")
    assert len(obj.queries) == 2 and sum(obj.skipped.values()) == 1
    att = next(s for s in splits if s.name == "genecis focus_attribute")
    name = att.queries[0].reference
    assert name in att.images.crops
    (_, img), = list(att.images.load([name]))
    assert img.size[0] == img.size[1]  # cropped around the box, padded to a square as the official loader
    report = evaluate_cir("baseline:image", root, "genecis", "test", out=tmp_path / "ev", backbone=tiny_clip_spec,
                          device="cpu")
    assert [r["name"] for r in report["results"]][-1] == "genecis average test"
    assert set(report["results"][0]["metrics"]) == {"recall_at1", "recall_at2", "recall_at3"}


def test_vg_crop_matches_official_arithmetic():
    from PIL import Image

    img = Image.new("RGB", (100, 80))
    out = vg_crop(img, (10, 20, 30, 10))
    # left = 10 - 0.7*30 -> 0, top = 20 - 7 = 13, right = min(100, 0 + 1.7*30) = 51, bottom = 13 + 17 = 30
    assert out.size == (51, 51)


def test_image_source_reads_files_then_dataset_shards(tiny_trip):
    split = read_ours(tiny_trip, "test")
    loaded = dict(split.images.load(split.index[:3]))
    assert set(loaded) == set(split.index[:3]) and all(im.mode == "RGB" for im in loaded.values())
    shards_only = ImageSource(shards=split.images.shards)
    assert set(dict(shards_only.load(split.index[:3]))) == set(split.index[:3])
    assert list(ImageSource().load(["nothing"])) == []
