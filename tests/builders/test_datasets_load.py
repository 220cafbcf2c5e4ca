"""Every output opens where users load data, with no extra arguments (issue 16).

One dataset is built per session (`curate build imagenet-ao` on the small demo world: a folder
pool, the demo generator, a tiny random CLIP) and mined for triplets; then each output (the
dataset shards, the triplet shards, the pool and generated-candidate shards) is opened with
``datasets.load_dataset(FOLDER)`` and with ``webdataset`` in a 2-worker DataLoader, and every
JSON field is checked to have one type in every sample. Shards and manifest that disagree are
reported by the loaders, never read silently; the card shows the data (contact sheets, funnel)
and builds on a dataset of one pair and on one with no rare pair.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest

CURATE = str(Path(sys.executable).with_name("curate"))
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MIN_SHARDS = 8  # the build's default min_shards_per_split
WORKERS = 2


@pytest.fixture(scope="module")
def ao(ao_with_triplets) -> Path:
    return ao_with_triplets


def outputs(ao: Path) -> dict[str, Path]:
    return {"dataset": ao, "triplets": ao / "triplets", "pool": ao / "pool" / "shards",
            "generated": ao / "generated" / "shards"}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A private `datasets` cache: each load really reads the shards."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path / "hf-cache"


def shards_of(folder: Path) -> list[Path]:
    return sorted((folder / "shards").glob("*.tar")) if (folder / "shards").is_dir() else sorted(folder.glob("*.tar"))


# -- one type per JSON field ------------------------------------------------------------------
def test_every_json_field_has_one_type_in_every_sample(ao):
    from curate.hub import scan_shards

    for name, folder in outputs(ao).items():
        schema = scan_shards(shards_of(folder))
        assert schema.samples > 0 and schema.problems == [], (name, schema.problems)
        assert "null" not in json.dumps(schema.json), name
    m = pl.read_parquet(ao / "manifest.parquet")
    from curate.shards import iter_shard

    metas = {s["__key__"]: json.loads(s["json"]) for p in shards_of(ao) for s in iter_shard(p)}
    gen = m.filter(pl.col("source") == "generator")["key"].to_list()
    pool = m.filter(pl.col("source") == "pool")["key"].to_list()
    assert gen and pool  # both sources: the null-then-float case of the issue is there
    assert {metas[k]["score_retrieval"] for k in gen} == {-1.0}  # the documented sentinel
    assert all(isinstance(metas[k]["score_retrieval"], float) and metas[k]["score_retrieval"] > -1 for k in pool)


def test_shard_counts_cover_the_default_workers(ao):
    m = pl.read_parquet(ao / "manifest.parquet")
    for split, g in m.group_by("split"):
        n = g.height
        shards = g["shard"].unique().to_list()
        assert len(shards) == min(n, MIN_SHARDS), (split, n, shards)
        assert all(s.startswith(f"imagenet-ao-{split[0]}-") for s in shards)
    for folder in (ao / "pool" / "shards", ao / "generated" / "shards"):  # intermediate: their cards say how
        n = len(shards_of(folder))
        assert f"smallest split has {n} shard(s)" in (folder / "README.md").read_text()


# -- datasets ---------------------------------------------------------------------------------
def test_load_dataset_with_no_arguments(ao, hf_cache):
    import datasets

    m = pl.read_parquet(ao / "manifest.parquet")
    for name, folder in outputs(ao).items():
        ds = datasets.load_dataset(str(folder))
        sizes = {s: d.num_rows for s, d in ds.items()}
        if name == "dataset":
            assert sizes == dict(m.group_by("split").len().iter_rows())
            row = ds["val"][0]
            assert row["jpg"].size[0] > 0 and row["json"]["key"] == row["__key__"]
            assert ds["val"].features["json"]["score_retrieval"].dtype == "float64"
        elif name == "triplets":
            t = pl.read_parquet(folder / "triplets.parquet")
            assert sizes == dict(t.group_by("split").len().iter_rows())
            row = ds["train"][0]
            assert row["ref.jpg"].size[0] > 0 and row["tgt.jpg"].size[0] > 0
            assert isinstance(row["json"]["negatives"], list) and row["json"]["id"] == row["__key__"]
        else:
            assert sizes == {"train": sum(1 for p in shards_of(folder) for _ in _keys(p))}


def test_load_dataset_webdataset_builder_infers_the_types(ao, hf_cache):
    """The issue's command, without `features=`: type inference from the first samples now holds."""
    import datasets

    m = pl.read_parquet(ao / "manifest.parquet")
    for split in ("val", "test"):
        files = sorted(str(p) for p in (ao / "shards").glob(f"imagenet-ao-{split}-*.tar"))
        ds = datasets.load_dataset("webdataset", data_files={split: files}, split=split)
        assert ds.num_rows == m.filter(pl.col("split") == split).height
        assert set(ds["json"][0]) >= {"attr", "obj", "score_retrieval", "rare"}


def _keys(shard: Path):
    from curate.shards import iter_shard

    for s in iter_shard(shard, exts=()):
        yield s["__key__"]


# -- webdataset in a 2-worker DataLoader -----------------------------------------------------
def _read_with_workers(urls: list[str]) -> list[str]:
    import torch
    import webdataset as wds

    pipe = wds.WebDataset(urls, shardshuffle=False, empty_check=True).to_tuple("__key__", "json")
    loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=WORKERS)
    return [k for k, _ in loader]


def test_webdataset_dataloader_with_two_workers_reads_every_sample_once(ao):
    """Dataset and triplet splits have a shard per worker: plain webdataset, 2 workers."""
    for name in ("dataset", "triplets"):
        folder = outputs(ao)[name]
        groups: dict[str, list[Path]] = {}
        for p in shards_of(folder):
            split = p.name.split("-")[-2] if name == "dataset" else p.name.split("-")[0]
            groups.setdefault(split, []).append(p)
        assert set(groups) == {"train", "val", "test"}
        for split, paths in groups.items():
            assert len(paths) >= WORKERS
            want = sorted(k for p in paths for k in _keys(p))
            got = _read_with_workers([str(p) for p in paths])
            assert sorted(got) == want, (name, split)


def _card_code(folder: Path) -> str:
    text = (folder / "README.md").read_text()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_card_code_runs_as_written(ao, hf_cache):
    """The card's own snippet (datasets, then webdataset with 2 workers) on every output, including
    the pool and candidate shards, which may have fewer shards than workers."""
    import glob

    for name, folder in outputs(ao).items():
        code = _card_code(folder)
        assert "load_dataset(FOLDER)" in code and "num_workers=workers" in code
        ns: dict = {}
        exec(re.sub(r'^FOLDER = ".*"$', f"FOLDER = {str(folder)!r}", code, flags=re.M), ns)  # the card's code
        assert sum(d.num_rows for d in ns["ds"].values()) > 0
        want = sorted(k for p in ns["urls"] for k in _keys(Path(p)))
        got = sorted(s["__key__"] for s in ns["loader"])
        assert got == want and want, name
        if name in ("pool", "generated"):
            assert ns["urls"] == sorted(glob.glob(str(folder / "*.tar")))


# -- shards and manifest that disagree are reported ------------------------------------------
def _copy(ao: Path, dest: Path) -> Path:
    shutil.copytree(ao, dest, ignore=shutil.ignore_patterns("pool", "generated", "triplets", "exports", ".curate"))
    return dest


def _drop_from_shard(shard: Path, key: str) -> None:
    from curate.shards import ShardWriter, iter_shard

    samples = [s for s in iter_shard(shard) if s["__key__"] != key]
    shard.unlink()
    with ShardWriter(shard.parent, name=shard.name) as w:
        for s in samples:
            w.write({k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")})


def test_manifest_and_shards_that_disagree_are_reported(ao, tmp_path, hf_cache, caplog):
    import datasets
    from datasets.exceptions import NonMatchingSplitsSizesError

    from builders.imagenet_ao.exports import export

    ds = _copy(ao, tmp_path / "broken")
    m = pl.read_parquet(ds / "manifest.parquet")
    gone = m.filter(pl.col("split") == "val").row(0, named=True)
    _drop_from_shard(ds / "shards" / gone["shard"], gone["key"])  # a manifest key with no sample
    with pytest.raises(NonMatchingSplitsSizesError):
        datasets.load_dataset(str(ds))
    # exports list only what is there, and say what is not
    with caplog.at_level("WARNING"):
        root = export("czsl", ds)
    import torch

    meta = torch.load(root / "metadata_compositional-split-natural.t7", weights_only=True)
    assert len(meta) == m.height - 1 and gone["key"] not in {Path(r["image"]).stem for r in meta}
    assert gone["key"] in caplog.text and "no image" in caplog.text
    report = json.loads((root / "export.json").read_text())
    assert report["missing_images"] == [gone["key"]] and report["images"] == m.height - 1
    from training.zeroshot import load_eval_set

    rare = load_eval_set(ds, "rare", rare_only=gone["rare"])  # the zero-shot reader counts it too
    assert rare.missing == 1 and gone["key"] not in rare.keys
    # a sample in the shards that the manifest does not list: counted again by datasets
    ds2 = _copy(ao, tmp_path / "extra")
    from curate.shards import ShardWriter, iter_shard

    shard = ds2 / "shards" / gone["shard"]
    samples = list(iter_shard(shard))
    shard.unlink()
    with ShardWriter(shard.parent, name=shard.name) as w:
        for s in samples + [{**samples[0], "__key__": "stray-sample"}]:
            w.write({k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")})
    with pytest.raises(NonMatchingSplitsSizesError):
        datasets.load_dataset(str(ds2))
    from builders.imagenet_ao.exports import consistency

    c = consistency(ds2)
    assert c.shards_only == ["stray-sample"] and c.manifest_only == []
    assert consistency(ds).manifest_only == [gone["key"]]


# -- the card --------------------------------------------------------------------------------
def test_card_header_and_pictures(ao):
    from huggingface_hub import DatasetCard
    from PIL import Image

    card = DatasetCard.load(ao / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "other" and data["size_categories"] == ["n<1K"]
    assert "zero-shot-image-classification" in data["task_categories"]
    files = {f["split"]: f["path"] for f in data["configs"][0]["data_files"]}
    assert files == {s: f"shards/imagenet-ao-{s}-*.tar" for s in files} and set(files) <= {"train", "val", "test"}
    names = [f["name"] for f in data["dataset_info"]["features"]]
    assert names == ["jpg", "json", "__key__", "__url__"]
    m = pl.read_parquet(ao / "manifest.parquet")
    for split in files:
        with Image.open(ao / f"sheet_{split}.png") as im:
            assert im.width > 600 and im.height > 100
        assert f"sheet_{split}.png" in card.text
    with Image.open(ao / "funnel.png") as im:
        assert im.width > 400
    assert "score_retrieval" in card.text and "-1.0" in card.text and "load_dataset" in card.text
    rare = m.filter(pl.col("rare"))["pair"].unique().to_list()
    assert rare


def test_card_of_a_single_pair_and_of_no_rare_pair(tmp_path):
    """Edge datasets: one pair only (no rare one), and several common pairs with no rare pair."""
    from conftest import make_tiny_dataset
    from PIL import Image

    from builders.imagenet_ao.card import sheet_rows, write_card

    for name, objects, attrs in (("one", ("circle",), ("red",)), ("common", ("circle", "star"), ("red", "blue"))):
        ds = make_tiny_dataset(tmp_path / name, objects=objects, attrs=attrs)
        m = pl.read_parquet(ds / "manifest.parquet").with_columns(pl.lit(False).alias("rare"))
        info = {"name": name, "versions": {}, "config": {"max_cooccurrence": 0, "model": "x"},
                "counts": {"samples": m.height, "pairs": m["pair"].n_unique(), "rare_pairs_kept": 0,
                           "seen_pairs_kept": m["pair"].n_unique(), "captions_scanned": 0, "nmi": 0.0,
                           "splits": dict(m.group_by("split").len().iter_rows())},
                "funnel": [{"stage": "vocabulary", "count": 1, "removed": 0, "note": ""},
                           {"stage": "candidates", "count": m.height, "removed": 0, "note": ""},
                           {"stage": "written", "count": m.height, "removed": 0, "note": ""}]}
        write_card(ds, info, m)
        text = (ds / "README.md").read_text()
        assert "No rare pair was kept" in text and text.startswith("---\n")
        for split in ("train", "val", "test"):
            rows, total = sheet_rows(m, split)
            assert total == m.filter(pl.col("split") == split)["pair"].n_unique()
            assert all(not rare for _, rare, _ in rows)
            with Image.open(ds / f"sheet_{split}.png") as im:
                im.load()
        assert (ds / "funnel.png").exists()
