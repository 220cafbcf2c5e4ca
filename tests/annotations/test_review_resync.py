"""`curate review` after a rebuild: FiftyOne stays in step with the manifest (issue 16).

New and changed fields reach samples FiftyOne already holds, samples that left the manifest
are tagged ``stale`` (or removed), images whose shard changed are extracted again, the
dataset's media type is ``image``, and the reviewers' tags and label edits survive all of it.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import polars as pl
import pytest
from conftest import make_tiny_dataset

from curate.manifest import read_manifest, write_manifest

RUN = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def fo():
    from annotations.database import connect

    fo = connect()
    yield fo
    for name in fo.list_datasets():
        if name.endswith(RUN):
            fo.delete_dataset(name)


def sync(folder: Path, name: str, **kw):
    from annotations.sync import SyncConfig, sync_dataset

    return sync_dataset(SyncConfig(dataset=folder, name=f"{name}-{RUN}", media_dir=folder.parent / f"media-{name}",
                                   **kw))


def sample(fo, name: str, key: str):
    return fo.load_dataset(f"{name}-{RUN}").match(fo.ViewField("key") == key).first()


def reshard(folder: Path, prefix: str, new_image: str | None = None) -> None:
    """Rewrite the shards under new names (a rebuild with another layout), the image of ``new_image``
    re-encoded; the manifest's shard column follows."""
    import io

    from PIL import Image

    from curate.shards import ShardWriter, iter_shard

    samples = [s for p in sorted((folder / "shards").glob("*.tar")) for s in iter_shard(p)]
    for s in samples:
        if s["__key__"] == new_image:
            buf = io.BytesIO()
            Image.open(io.BytesIO(s["jpg"])).rotate(90).save(buf, format="JPEG", quality=70)
            s["jpg"] = buf.getvalue()
    for p in (folder / "shards").glob("*"):
        p.unlink()
    where = {}
    with ShardWriter(folder / "shards", prefix=prefix, maxcount=5) as w:
        for s in samples:
            where[s["__key__"]] = w.write({"__key__": s["__key__"], "jpg": s["jpg"], "json": s["json"]})
    df = read_manifest(folder)
    write_manifest(df.with_columns(pl.col("key").replace_strict(where).alias("shard")), folder)


def test_new_dataset_has_media_type_image_and_old_ones_are_fixed(fo, tmp_path):
    folder = make_tiny_dataset(tmp_path / "ds-mt", objects=("circle",), attrs=("red", "blue"))
    sync(folder, "t-mt")
    ds = fo.load_dataset(f"t-mt-{RUN}")
    assert ds.media_type == "image" and ds.first().media_type == "image"
    # a dataset an older version made: documents inserted, no media type on the dataset
    legacy = fo.Dataset(f"t-legacy-{RUN}", persistent=True)
    legacy._sample_collection.insert_one({"filepath": "/nowhere.jpg", "_media_type": "image", "tags": [],
                                          "_dataset_id": legacy._doc.id, "_rand": 0.9995})
    legacy.reload()
    assert legacy.media_type is None and len(legacy) == 1
    sync(folder, "t-legacy")
    legacy = fo.load_dataset(f"t-legacy-{RUN}")
    assert legacy.media_type == "image" and len(legacy) == 1 + read_manifest(folder).height


def test_resync_after_rebuild_updates_fields_marks_stale_and_keeps_review(fo, tmp_path):
    folder = make_tiny_dataset(tmp_path / "ds-rb", objects=("circle", "square"), attrs=("red", "blue"))
    first = sync(folder, "t-rb")
    df = read_manifest(folder)
    assert first.added == df.height and first.updated == 0 and first.stale == 0
    # a reviewer works in the App
    s = sample(fo, "t-rb", "red_circle_000")
    s.tags.append("reject")
    s.attr.label = "crimson"
    s.save()
    # the rebuild: one score changes, one becomes missing, a new column appears, a sample leaves,
    # the split of another changes, the shards get new names
    gone = "blue_square_002"
    rebuilt = (df.filter(pl.col("key") != gone)
               .with_columns(pl.when(pl.col("key") == "red_circle_000").then(0.99)
                             .when(pl.col("key") == "blue_circle_001").then(float("nan"))
                             .otherwise(pl.col("score_comp")).alias("score_comp"),
                             pl.when(pl.col("key") == "red_square_001").then(pl.lit("test"))
                             .otherwise(pl.col("split")).alias("split"),
                             (pl.col("score_comp") * 2).alias("quality")))
    write_manifest(rebuilt, folder)
    old_path = sample(fo, "t-rb", "red_square_000").filepath
    reshard(folder, "rebuilt", new_image="red_square_000")
    second = sync(folder, "t-rb")
    ds = fo.load_dataset(f"t-rb-{RUN}")
    assert second.added == 0 and second.existing == rebuilt.height
    assert second.updated == rebuilt.height  # every sample: new shard name and the new column
    assert second.stale == 1 and second.stale_removed == 0
    # shards renamed: each image read again; the one whose bytes changed is written, the others reused
    assert second.media_refreshed == 1
    moved = sample(fo, "t-rb", "red_square_000")
    assert moved.filepath != old_path and "rebuilt-" in moved.filepath and Path(moved.filepath).exists()
    assert moved.image_sha1 != sample(fo, "t-rb", "red_square_001").image_sha1
    s = sample(fo, "t-rb", "red_circle_000")
    assert s.score_comp == pytest.approx(0.99) and s.quality == pytest.approx(2 * df.filter(
        pl.col("key") == "red_circle_000")["score_comp"][0])
    assert s.tags == ["reject"] and s.attr.label == "crimson"  # the reviewer's work is kept
    assert Path(s.filepath).exists() and s.shard.startswith("rebuilt-")
    assert sample(fo, "t-rb", "red_square_001").split == "test"
    nan_sample = sample(fo, "t-rb", "blue_circle_001")
    assert nan_sample.score_comp is None  # the value became missing: unset, not a stale number
    assert "quality" in ds.get_field_schema() and len(ds.exists("quality")) == rebuilt.height
    stale = ds.load_saved_view("stale")
    assert stale.values("key") == [gone] and "stale" in sample(fo, "t-rb", gone).tags
    assert "stale" not in set(ds.distinct("tags")) - {"stale"}
    # nothing changed since: a third sync writes nothing, extracts nothing
    third = sync(folder, "t-rb")
    assert (third.added, third.updated, third.media_refreshed, third.stale) == (0, 0, 0, 1)
    # the sample comes back: its stale tag goes; then another leaves and is removed on request
    write_manifest(df.with_columns(pl.col("key").is_in(rebuilt["key"].to_list()).alias("_k"))
                   .filter(pl.col("_k") | (pl.col("key") == gone)).drop("_k")
                   .join(read_manifest(folder).select("key", "shard"), on="key", how="left", suffix="_new")
                   .with_columns(pl.coalesce("shard_new", "shard").alias("shard")).drop("shard_new"), folder)
    back = sync(folder, "t-rb")
    assert back.stale == 0 and "stale" not in sample(fo, "t-rb", gone).tags
    current = read_manifest(folder)
    write_manifest(current.filter(pl.col("key") != "blue_circle_000"), folder)
    removed = sync(folder, "t-rb", remove_stale=True)
    ds = fo.load_dataset(f"t-rb-{RUN}")
    assert removed.stale == removed.stale_removed == 1
    assert "blue_circle_000" not in ds.distinct("key") and len(ds) == current.height - 1
    assert not math.isnan(removed.seconds)


def test_resync_restores_deleted_media_files(fo, tmp_path):
    folder = make_tiny_dataset(tmp_path / "ds-media", objects=("star",), attrs=("green",))
    sync(folder, "t-media")
    s = sample(fo, "t-media", "green_star_000")
    Path(s.filepath).unlink()  # the media cache was cleaned
    rep = sync(folder, "t-media")
    assert rep.media_refreshed == 1 and rep.updated == 0
    assert Path(sample(fo, "t-media", "green_star_000").filepath).read_bytes()[:2] == b"\xff\xd8"


def test_views_are_saved_in_bulk_and_load(fo, tmp_path):
    folder = make_tiny_dataset(tmp_path / "ds-views", objects=("circle", "star"), attrs=("red", "blue", "green"))
    rep = sync(folder, "t-views")
    ds = fo.load_dataset(f"t-views-{RUN}")
    df = read_manifest(folder)
    pair_views = [v for v in rep.views if v.startswith("pair ")]
    assert len(pair_views) == df["pair"].n_unique() == 6
    assert set(pair_views) <= set(ds.list_saved_views())
    for p, n in df.group_by("pair").len().iter_rows():
        assert ds.load_saved_view(f"pair {p}").count() == n
    again = sync(folder, "t-views")
    assert sorted(again.views) == sorted(rep.views) and len(ds.list_saved_views()) == len(set(rep.views))


def test_resync_keeps_metadata_fiftyone_computed(fo, tmp_path):
    folder = make_tiny_dataset(tmp_path / "ds-meta", objects=("star",), attrs=("red",))
    sync(folder, "t-meta")
    ds = fo.load_dataset(f"t-meta-{RUN}")
    ds.compute_metadata(overwrite=True)  # what a user may run: adds size_bytes, mime_type, channels
    before = sample(fo, "t-meta", "red_star_000").metadata
    assert before.size_bytes > 0
    rep = sync(folder, "t-meta")
    after = sample(fo, "t-meta", "red_star_000").metadata
    assert rep.updated == 0 and after.size_bytes == before.size_bytes and after.width == 64
