"""`curate triplets --format ...,genecis`: per-query small galleries in GeneCIS's record format, added
without changing a byte of the other exports."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import polars as pl
import pytest
from conftest import make_tiny_dataset
from PIL import Image

from builders.triplets import TripletsConfig, build_triplets
from curate.errors import CurateError
from training.cir.data import read_genecis

DEFAULT = ["shards", "cirr", "circo", "fashioniq"]


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("genecis")
    ds = make_tiny_dataset(root / "ds", per_pair=5)
    plain, with_g = root / "plain", root / "with-genecis"
    build_triplets(TripletsConfig(dataset=str(ds), out=str(plain), max_per_pair=3, formats=DEFAULT))
    build_triplets(TripletsConfig(dataset=str(ds), out=str(with_g), max_per_pair=3, formats=[*DEFAULT, "genecis"]))
    return plain, with_g


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def test_other_exports_are_byte_identical(two_builds):
    plain, with_g = two_builds
    for name in ("cirr", "circo", "fashioniq", "shards"):
        assert same_tree(plain / name, with_g / name), name
    assert (plain / "triplets.parquet").read_bytes() == (with_g / "triplets.parquet").read_bytes()
    assert not (plain / "genecis").exists()


def test_genecis_records_are_the_triplets_with_their_negatives(two_builds):
    _, out = two_builds
    df = pl.read_parquet(out / "triplets.parquet")
    ids = json.loads((out / "genecis" / "image_ids.json").read_text())
    key_of = {v: k for k, v in ids.items()}
    seen = 0
    for split in ("val", "test"):
        rows = {r["id"]: r for r in df.filter(pl.col("split") == split).iter_rows(named=True)}
        for task in ("change_attribute", "change_object"):
            path = out / "genecis" / split / f"{task}.json"
            if not path.exists():
                continue
            for item in json.loads(path.read_text()):
                r = rows[item["curate_triplet_id"]]
                assert key_of[item["reference"]["val_image_id"]] == r["reference"]
                assert key_of[item["target"]["val_image_id"]] == r["target"]
                gallery = [key_of[g["val_image_id"]] for g in item["gallery"]]
                assert gallery == r["negatives"] and r["target"] not in gallery and r["reference"] not in gallery
                assert not set(gallery) & set(r["gt"])  # no other valid target hides in the gallery
                assert item["condition"] == r["new_word"]
                assert task == {"attribute": "change_attribute", "object": "change_object"}[r["mode"]]
                for g in [item["reference"], item["target"], *item["gallery"]]:
                    with Image.open(out / "genecis" / "images" / f"{g['val_image_id']:012d}.jpg") as im:
                        assert im.size == (64, 64)
                seen += 1
    assert seen > 0
    info = json.loads((out / "triplets.json").read_text())
    assert "genecis" in info["exports"] and "coco_root" in info["export_roots"]["genecis"]
    splits = read_genecis(out / "genecis", "test")
    assert splits and all(q.gallery[0] == q.target for s in splits for q in s.queries)


def test_unknown_format_still_refused(tmp_path):
    with pytest.raises(CurateError, match="genecis"):
        TripletsConfig(dataset=str(tmp_path), out=str(tmp_path / "o"), formats=["cirr", "genecsi"]).validate()
