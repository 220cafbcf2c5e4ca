"""The one training loader: every sample exactly once per epoch across ranks x workers, no hang,
review verdicts honoured, features by key."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import polars as pl
import pytest
from torch.utils.data import DataLoader

from curate.manifest import read_manifest, write_manifest
from curate.shards import ShardWriter
from training.data import ShardDataset, consumer_range, dataset_samples, triplet_samples
from training.data.features import FeatureTable

pytestmark = pytest.mark.timeout(120)


def _shards(tmp_path, n_samples: int, n_shards: int):
    per = -(-n_samples // n_shards)
    with ShardWriter(tmp_path / "shards", prefix="s", maxcount=per) as w:
        for i in range(n_samples):
            w.write({"__key__": f"k{i:04d}", "json": {"i": i}})
    assert len(w.written) == n_shards
    return tmp_path / "shards"


def _epoch(folder, epoch: int, ranks: int = 2, workers: int = 2, shuffle: int = 0) -> list[str]:
    seen = []
    for rank in range(ranks):
        ds = ShardDataset(folder, decode=lambda s: s["__key__"], shuffle=shuffle, seed=3, rank=rank,
                          world_size=ranks)
        ds.set_epoch(epoch)
        seen += list(DataLoader(ds, batch_size=None, num_workers=workers))
    return seen


@pytest.mark.parametrize("n_shards", [1, 3])
@pytest.mark.parametrize("shuffle", [0, 7])
def test_every_sample_once_across_2_ranks_x_2_workers(tmp_path, n_shards, shuffle):
    folder = _shards(tmp_path, 23, n_shards)
    expected = [f"k{i:04d}" for i in range(23)]
    orders = []
    for epoch in range(2):
        seen = _epoch(folder, epoch, shuffle=shuffle)
        assert Counter(seen) == Counter(expected)  # no duplicate, nothing dropped
        orders.append(seen)
    if shuffle:
        assert orders[0] != orders[1]


def test_more_consumers_than_samples_does_not_hang(tmp_path):
    folder = _shards(tmp_path, 3, 1)
    assert sorted(_epoch(folder, 0, ranks=2, workers=3)) == ["k0000", "k0001", "k0002"]


def test_ranges_are_balanced():
    sizes = [b - a for a, b in (consumer_range(23, c, 4) for c in range(4))]
    assert sum(sizes) == 23 and max(sizes) - min(sizes) <= 1


def test_decode_filters_and_keys(tmp_path):
    folder = _shards(tmp_path, 10, 2)
    ds = ShardDataset(folder, keys={"k0001", "k0007"}, decode=lambda s: json.loads(s["json"])["i"])
    assert sorted(ds) == [1, 7]
    odd = ShardDataset(folder, decode=lambda s: None if json.loads(s["json"])["i"] % 2 else s["__key__"])
    assert len(list(odd)) == 5 and len(odd) == 10


def test_review_verdicts_and_triplets(tiny_dataset, tmp_path):
    df = read_manifest(tiny_dataset)
    bad = df["key"][0]
    df = df.with_columns(pl.when(pl.col("key") == bad).then(pl.lit("reject")).otherwise(pl.col("review_status")
                         if "review_status" in df.columns else pl.lit(None, pl.String)).alias("review_status"))
    write_manifest(df, tiny_dataset)
    keys = dataset_samples(tiny_dataset)["key"].to_list()
    assert bad not in keys and len(keys) == df.height - 1
    assert bad in dataset_samples(tiny_dataset, include_rejected=True)["key"].to_list()
    train = dataset_samples(tiny_dataset, split="train")
    assert set(train["split"]) == {"train"}
    ds = ShardDataset(tiny_dataset / "shards", keys=keys, decode=lambda s: s["__key__"])
    assert sorted(ds) == sorted(keys)
    # triplets whose reference or target was rejected are left out
    trip = tmp_path / "trip"
    trip.mkdir()
    other = [k for k in keys if k != bad]
    pl.DataFrame({"id": ["t0", "t1"], "reference": [bad, other[0]], "target": [other[1], other[2]],
                  "split": ["train", "train"]}).write_parquet(trip / "triplets.parquet")
    (trip / "triplets.json").write_text(json.dumps({"source_dataset": str(tiny_dataset)}))
    assert triplet_samples(trip)["id"].to_list() == ["t1"]
    assert triplet_samples(trip, include_rejected=True)["id"].to_list() == ["t0", "t1"]


def test_feature_table_reads_clip_retrieval_layout(tmp_path):
    from curate.embed.store import part_paths, save_npy, save_parquet

    emb = tmp_path / "emb"
    mat = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    npy, meta = part_paths(emb, "0", "img")
    save_npy(npy, mat)
    save_parquet(meta, pl.DataFrame({"key": ["a", "b", "c", "d"]}))
    table = FeatureTable.load(emb)
    have, rows = table.rows(["c", "zz", "a"])
    assert have == ["c", "a"] and rows.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(rows[0], mat[2] / np.linalg.norm(mat[2]), atol=1e-6)


# -- one way to reach an image: ImageStore over files or shards ---------------------------------
def _image_stores(tmp_path, n: int = 7):
    """The same n images as files (CZSL layout, key = path under images/) and in shards (key = stem)."""
    from trident_helpers import draw

    from curate.shards import iter_shard
    from training.data.images import ImageStore

    folder = tmp_path / "root" / "images"
    folder.mkdir(parents=True)
    raw = {f"k{i:02d}": draw(("red", "blue", "green")[i % 3], "circle", seed=i) for i in range(n)}
    with ShardWriter(tmp_path / "shards", prefix="s", maxcount=3) as w:
        for key, data in raw.items():
            (folder / f"{key}.jpg").write_bytes(data)
            w.write({"__key__": key, "jpg": data})
    shards = {}
    for path in w.written:
        shards.update({s["__key__"]: path for s in iter_shard(path, exts=())})
    files = ImageStore(tmp_path / "root", folder=folder)
    in_shards = ImageStore(tmp_path / "ds", shards=shards)
    return raw, files, in_shards


def test_image_store_serves_files_and_shards_alike(tmp_path):
    from curate.errors import CurateError
    from curate.shards import image_of

    raw, files, in_shards = _image_stores(tmp_path)
    for store, keys in ((files, [f"{k}.jpg" for k in raw]), (in_shards, list(raw))):
        seen = []
        for rank in range(2):  # 2 ranks x 2 workers: every image once, with its bytes
            ds = store.samples(keys, decode=lambda s: (s["__key__"], image_of(s)[1]), rank=rank, world_size=2)
            seen += list(DataLoader(ds, batch_size=None, num_workers=2))
        assert sorted(k.removesuffix(".jpg") for k, _ in seen) == sorted(raw)
        assert all(data == raw[k.removesuffix(".jpg")] for k, data in seen)
    with pytest.raises(CurateError, match="not loaded"):
        in_shards.open("k01")
    assert in_shards.load(["k01", "k02", "nope"]) == 1
    assert np.array_equal(np.asarray(in_shards.open("k01")), np.asarray(files.open("k01.jpg")))
    missing = list(files.samples(["k00.jpg", "gone.jpg"]))
    assert [s["__key__"] for s in missing] == ["k00.jpg", "gone.jpg"] and image_of(missing[1]) is None


def test_token_cache_same_rows_from_files_or_shards_resumes_and_serves_online_alike(tmp_path, tiny_clip_spec):
    import torch

    from curate.errors import CurateError
    from training.data.features import TokenCache, TokenFeatures, build_token_cache, open_token_cache
    from training.trident.backbone import Backbone

    raw, files, in_shards = _image_stores(tmp_path)
    backbone = Backbone(tiny_clip_spec, "cpu")
    fc, stats = open_token_cache(tmp_path / "cf", files, [f"{k}.jpg" for k in raw] + ["gone.jpg"], backbone)
    assert stats == {"cached_before": 0, "computed": len(raw), "unreadable": 1}
    sc, _ = open_token_cache(tmp_path / "cs", in_shards, list(raw), backbone)
    fi, si = fc.index(), sc.index()
    rows_f = fc.gather(np.array([fi[f"{k}.jpg"] for k in raw]))
    rows_s = sc.gather(np.array([si[k] for k in raw]))
    assert all(np.array_equal(a, b) for a, b in zip(rows_f, rows_s, strict=True))
    again = build_token_cache(tmp_path / "cf", files, [f"{k}.jpg" for k in raw], backbone)
    assert again == {"cached_before": len(raw), "computed": 0, "unreadable": 0}
    with pytest.raises(CurateError, match="backbone"):
        TokenCache.open(tmp_path / "cf", "mini:other", files.root)
    keys = list(raw)[:4]
    cached = [torch.cat(x) for x in zip(*TokenFeatures(in_shards, None, sc).batches(keys, size=3), strict=True)]
    online = [torch.cat(x) for x in zip(*TokenFeatures(in_shards, backbone, None).batches(keys, size=3), strict=True)]
    for c, o in zip(cached, online, strict=True):
        assert torch.allclose(c.float(), o, atol=1e-2 * float(o.abs().max()))


def test_image_store_decoded_pass_files_then_shards_kept_bytes_and_full_size(tmp_path):
    """ImageStore.decoded (CIR's galleries): files in key order, a missing or broken file falls back to
    its shard, shard images in shard order, ``full`` keys at full size, kept bytes served first."""
    from curate.images import open_rgb
    from training.data.images import ImageStore

    raw, files, in_shards = _image_stores(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xffnot a jpeg")
    store = ImageStore(tmp_path, shards=in_shards.shards,
                       files={"k03": files.folder / "k03.jpg", "k01": tmp_path / "broken.jpg",
                              "k05": tmp_path / "gone.jpg"})
    assert "k03" in store and "k05" not in store and "k02" not in store
    got = list(store.decoded(["k03", "k01", "k05", "k00", "nowhere"], size=8, full={"k00"}))
    assert [k for k, _ in got] == ["k03", "k00", "k01", "k05"]  # k00 and k01 share the first shard
    images = dict(got)
    assert images["k03"].size == (8, 8) and images["k00"].size == (32, 32)  # 32 px at 1/4 scale; k00 full size
    assert np.array_equal(np.asarray(images["k01"]), np.asarray(open_rgb(raw["k01"], 8)))  # from its shard
    store.keep("k03", raw["k04"])  # kept bytes come before the file
    assert np.array_equal(np.asarray(store.open("k03")), np.asarray(open_rgb(raw["k04"])))
    assert store.load(["k06", "k03"]) == 0 and store.read("k06") == raw["k06"]


def test_image_store_of_dataset_and_zero_shot_sets_read_through_it(tmp_path):
    from training.data.images import ImageStore
    from training.zeroshot import EvalSet

    raw, files, in_shards = _image_stores(tmp_path)
    rows = pl.DataFrame({"key": ["k00", "k04"], "shard": [in_shards.shards["k00"].name, in_shards.shards["k04"].name]})
    ds = ImageStore.of_dataset(tmp_path, rows)
    assert ds.shards == {"k00": tmp_path / "shards" / in_shards.shards["k00"].name,
                         "k04": tmp_path / "shards" / in_shards.shards["k04"].name}
    assert ds.load(["k00", "k04"]) == 0 and ds.read("k04") == raw["k04"]
    held = EvalSet("s", ["k01", "k02"], ["red", "blue"], ["circle", "circle"], [raw["k01"], raw["k02"]]).image_store()
    on_disk = EvalSet("f", ["a", "b"], [None, None], ["circle", "circle"], None,
                      files=[files.folder / "k01.jpg", files.folder / "k02.jpg"]).image_store()
    assert held.read("k02") == raw["k02"] and on_disk.read("b") == raw["k02"]
