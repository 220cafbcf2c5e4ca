"""`curate review`: sync into FiftyOne, incremental re-sync, verdicts pulled into the manifest.

One FiftyOne database for the whole module (conftest points FIFTYONE_DATABASE_DIR at a temp
folder); each test uses its own FiftyOne dataset name. Tests that need no database (bad
folders, busy port, aux labels, the fast tar reader) never import fiftyone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import make_tiny_dataset

from curate.errors import CurateError
from curate.manifest import read_manifest, write_manifest

CURATE = str(Path(sys.executable).with_name("curate"))


def run_cli(*args, **kw):
    return subprocess.run([CURATE, *args], capture_output=True, text=True, timeout=180, **kw)


RUN = uuid.uuid4().hex[:8]  # FiftyOne may attach to another process's database: keep names unique


@pytest.fixture(scope="module")
def fo():
    from annotations.database import connect

    fo = connect()
    yield fo
    for name in fo.list_datasets():
        if name.endswith(RUN) or name.endswith(f"{RUN}-triplets"):
            fo.delete_dataset(name)


def sync(folder: Path, name: str, **kw):
    from annotations.sync import SyncConfig, sync_dataset

    return sync_dataset(SyncConfig(dataset=folder, name=name, media_dir=folder.parent / f"media-{name}", **kw))


def uniq(name: str) -> str:
    return f"{name}-{RUN}"


# -- no database needed --------------------------------------------------------------------
def test_folder_without_manifest_is_a_clear_error(tmp_path):
    from annotations.sync import SyncConfig, sync_dataset

    (tmp_path / "empty").mkdir()
    with pytest.raises(CurateError, match="manifest"):
        sync_dataset(SyncConfig(dataset=tmp_path / "empty"))
    r = run_cli("review", str(tmp_path / "empty"), "--no-launch")
    assert r.returncode == 2
    assert "manifest.parquet" in r.stderr and "Traceback" not in r.stderr


def test_port_in_use_suggests_another_port(tiny_dataset):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("review", str(tiny_dataset), "--port", str(port))
    assert r.returncode == 2
    assert f"port {port}" in r.stderr and "--port" in r.stderr


def test_unreachable_database_uri_points_at_doctor(tiny_dataset):
    """--database-uri is honoured (no embedded mongod is started); failure names curate doctor."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    uri = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=1500"
    r = run_cli("review", str(tiny_dataset), "--no-launch", "--database-uri", uri)
    assert r.returncode == 2, r.stderr
    assert "curate doctor" in r.stderr and f"127.0.0.1:{port}" in r.stderr


def test_embedded_database_that_cannot_start_points_at_doctor(tiny_dataset, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_PRIVATE_DATABASE_PORT"}  # no shared mongod
    env["FIFTYONE_DATABASE_DIR"] = str(blocker)
    r = run_cli("review", str(tiny_dataset), "--no-launch", env=env)
    assert r.returncode == 2, r.stderr
    assert "cannot start" in r.stderr and "curate doctor" in r.stderr and "Traceback" not in r.stderr


def test_aux_labels_keys_folded_for_the_review_and_bad_lines_refused(tmp_path):
    from annotations.aux_labels import read_aux_labels

    p = tmp_path / "aux_label.jsonl"
    p.write_text("\n".join([json.dumps({"Red_Circle": ["Round", "bright", "smooth"]}),
                            json.dumps({"blue square": ["boxy", "cool", "flat"]}), ""]))
    assert read_aux_labels(p).by_pair == {"red circle": ["round", "bright", "smooth"],
                                          "blue square": ["boxy", "cool", "flat"]}
    # one policy with the trainer (curate.aux_labels): a malformed line is refused with its number
    p.write_text(json.dumps({"red circle": ["round"]}) + "\n" + json.dumps({"pair": "blue square", "aux": ["boxy"]}))
    with pytest.raises(CurateError, match=r"aux_label.jsonl:2: line 2 holds 2 pairs"):
        read_aux_labels(p)


# -- with the database -----------------------------------------------------------------------
def test_sync_creates_dataset_with_fields_views_and_aux(fo, tmp_path):
    folder = make_tiny_dataset(tmp_path / "ds-a")
    (folder / "aux_label.jsonl").write_text(json.dumps({"red circle": ["round", "bright", "smooth"]}) + "\n")
    rep = sync(folder, uniq("t-sync"))
    df = read_manifest(folder)
    ds = fo.load_dataset(uniq("t-sync"))
    assert rep.added == len(ds) == df.height and ds.persistent
    s = ds.match(fo.ViewField("key") == "red_circle_001").first()
    row = df.filter(pl.col("key") == "red_circle_001").row(0, named=True)
    assert (s.attr.label, s.obj.label, s.pair.label) == (row["attr"], row["obj"], row["pair"])
    assert s.split == row["split"] and s.source == row["source"] and s.score_comp == pytest.approx(row["score_comp"])
    assert s.aux_attrs == ["round", "bright", "smooth"] and rep.aux_matched == 3
    assert Path(s.filepath).read_bytes()[:2] == b"\xff\xd8"  # a real JPEG file extracted from the shard
    views = ds.list_saved_views()
    assert {"lowest composition score", "near-duplicates"} <= set(views)
    assert sum(v.startswith("pair ") for v in views) == df["pair"].n_unique()
    low = ds.load_saved_view("lowest composition score").values("score_comp")
    assert low == sorted(df["score_comp"].to_list())
    assert ds.load_saved_view("pair red circle").count() == df.filter(pl.col("pair") == "red circle").height


def test_missing_image_row_is_skipped_and_listed(fo, tmp_path):
    folder = make_tiny_dataset(tmp_path / "ds-b", objects=("circle",), attrs=("red",))
    df = read_manifest(folder)
    ghost = df.head(1).with_columns(pl.lit("red_circle_ghost").alias("key"))
    write_manifest(pl.concat([df, ghost]), folder)
    rep = sync(folder, uniq("t-missing"))
    assert rep.missing == ["red_circle_ghost"]
    assert rep.added == df.height and "red_circle_ghost" not in fo.load_dataset(uniq("t-missing")).distinct("key")


def test_near_duplicates_from_identical_images_and_embeddings(fo, tmp_path):
    from annotations.sync import _groups, near_duplicate_pairs

    m = np.eye(4, dtype=np.float32)
    m[3] = m[1]
    assert _groups(list("abcd"), near_duplicate_pairs(m, 0.97)) == {"b": "b", "d": "b"}
    folder = make_tiny_dataset(tmp_path / "ds-dup", objects=("circle",), attrs=("red",))
    # copy one image's bytes to a second key's shard by re-writing the dataset with a duplicate
    from curate.shards import ShardWriter, iter_shard

    samples = [s for p in sorted((folder / "shards").glob("*.tar")) for s in iter_shard(p)]
    samples[2]["jpg"] = samples[0]["jpg"]
    for p in (folder / "shards").glob("*"):
        p.unlink()
    with ShardWriter(folder / "shards", prefix="tiny") as w:
        for s in samples:
            w.write({"__key__": s["__key__"], "jpg": s["jpg"], "json": s["json"]})
    rep = sync(folder, uniq("t-dup"))
    ds = fo.load_dataset(uniq("t-dup"))
    assert rep.dup_groups == 1
    assert sorted(ds.load_saved_view("near-duplicates").values("key")) == sorted(
        [samples[0]["__key__"], samples[2]["__key__"]])


def test_embeddings_are_pushed_and_find_near_duplicates(fo, tmp_path):
    folder = make_tiny_dataset(tmp_path / "ds-emb", objects=("circle",), attrs=("red", "blue"))
    keys = read_manifest(folder)["key"].to_list()
    rng = np.random.default_rng(0)
    m = rng.normal(size=(len(keys), 8)).astype(np.float32)
    m[1] = m[0] + 0.01  # a near-duplicate of the first sample
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    emb = folder / "embeddings"
    (emb / "img_emb").mkdir(parents=True)
    (emb / "metadata").mkdir()
    np.save(emb / "img_emb" / "img_emb_0.npy", m)
    pl.DataFrame({"key": keys}).write_parquet(emb / "metadata" / "metadata_0.parquet")
    (emb / "embeddings.json").write_text(json.dumps({"model": "test", "dim": 8}))
    rep = sync(folder, uniq("t-emb"))
    ds = fo.load_dataset(uniq("t-emb"))
    assert rep.embeddings and rep.dup_groups == 1
    got = dict(zip(ds.values("key"), ds.values("embedding"), strict=True))
    assert np.allclose(got[keys[2]], m[2])
    assert sorted(ds.load_saved_view("near-duplicates").values("key")) == sorted(keys[:2])


def test_resync_adds_only_new_and_keeps_tags_and_edits(fo, tmp_path):
    folder = make_tiny_dataset(tmp_path / "ds-c", objects=("circle", "square"))
    small = read_manifest(folder)
    full = small
    write_manifest(small.filter(pl.col("obj") == "circle"), folder)  # the dataset before it grew
    first = sync(folder, uniq("t-grow"))
    ds = fo.load_dataset(uniq("t-grow"))
    s = ds.match(fo.ViewField("key") == "red_circle_000").first()
    s.tags.append("reject")
    s.attr.label = "crimson"
    s.save()
    write_manifest(full, folder)  # the dataset grew
    second = sync(folder, uniq("t-grow"))
    ds.reload()
    assert first.added == full.filter(pl.col("obj") == "circle").height
    assert second.added == full.height - first.added and second.existing == first.added
    assert len(ds) == full.height == len(set(ds.values("key")))
    s = ds.match(fo.ViewField("key") == "red_circle_000").first()
    assert s.tags == ["reject"] and s.attr.label == "crimson"
    assert sync(folder, uniq("t-grow")).added == 0


def test_pull_writes_verdicts_idempotently_and_rejected_are_excluded(fo, tmp_path):
    from annotations.verdicts import pull_verdicts
    from curate.dataset import Dataset

    folder = make_tiny_dataset(tmp_path / "ds-d")
    sync(folder, uniq("t-pull"))
    ds = fo.load_dataset(uniq("t-pull"))
    F = fo.ViewField
    rej = ds.match(F("key") == "blue_star_002").first()
    rej.tags.append("reject")
    rej.save()
    acc = ds.match(F("key") == "green_square_001").first()
    acc.tags.append("accept")
    acc.save()
    fix = ds.match(F("key") == "yellow_circle_000").first()
    fix.attr.label = "golden"
    fix.obj.label = "disc"
    fix.save()
    rep = pull_verdicts(folder, name=uniq("t-pull"))
    assert (rep.changed, rep.rejected, rep.accepted, rep.corrected) == (3, 1, 2, 1)
    df = read_manifest(folder, include_rejected=True)
    row = {r["key"]: r for r in df.iter_rows(named=True)}
    assert row["blue_star_002"]["review_status"] == "reject" and row["green_square_001"]["review_status"] == "accept"
    y = row["yellow_circle_000"]
    assert (y["attr"], y["obj"], y["pair"], y["attr_original"], y["obj_original"], y["review_status"]) == (
        "golden", "disc", "golden disc", "yellow", "circle", "accept")
    assert y["review_time"] and row["red_circle_000"]["review_status"] is None
    before = (folder / "manifest.parquet").read_bytes()
    again = pull_verdicts(folder, name=uniq("t-pull"))
    assert again.changed == 0 and not again.written and (folder / "manifest.parquet").read_bytes() == before
    # rejected rows are gone by default everywhere the manifest is read, kept on request
    assert "blue_star_002" not in read_manifest(folder, include_rejected=False)["key"].to_list()
    assert "blue_star_002" not in Dataset(folder).manifest()["key"].to_list()
    assert "blue_star_002" in Dataset(folder).manifest(include_rejected=True)["key"].to_list()
    # un-rejecting in the App clears the verdict on the next pull
    rej.tags.remove("reject")
    rej.save()
    assert pull_verdicts(folder, name=uniq("t-pull")).changed == 1
    assert read_manifest(folder).filter(pl.col("key") == "blue_star_002")["review_status"].to_list() == [None]


def test_pull_reports_keys_no_longer_in_manifest(fo, tmp_path):
    from annotations.verdicts import ORPHANS_FILE, pull_verdicts

    folder = make_tiny_dataset(tmp_path / "ds-e", objects=("circle",))
    sync(folder, uniq("t-orphan"))
    ds = fo.load_dataset(uniq("t-orphan"))
    s = ds.match(fo.ViewField("key") == "red_circle_000").first()
    s.tags.append("reject")
    s.save()
    df = read_manifest(folder)
    write_manifest(df.filter(pl.col("key") != "red_circle_000"), folder)  # the row left the manifest
    rep = pull_verdicts(folder, name=uniq("t-orphan"))
    assert rep.orphans == ["red_circle_000"]
    kept = [json.loads(line) for line in (folder / ORPHANS_FILE).read_text().splitlines()]
    tagged = s.last_modified_at.replace(microsecond=0).isoformat() + "+00:00"  # when the reviewer tagged it
    assert kept == [{"key": "red_circle_000", "status": "reject", "attr": "red", "obj": "circle", "time": tagged}]
    assert "reject" in ds.match(fo.ViewField("key") == "red_circle_000").first().tags  # nothing lost in FiftyOne
    assert read_manifest(folder).height == df.height - 1


def test_triplets_become_a_grouped_dataset(fo, tmp_path):
    from annotations.triplets import sync_triplets
    from curate.dataset import Dataset

    folder = make_tiny_dataset(tmp_path / "ds-f", objects=("circle", "star"), attrs=("red", "blue"))
    sync(folder, uniq("t-trip"))
    tdir = folder / "triplets"
    tdir.mkdir()
    pl.DataFrame({
        "id": ["t0", "t1", "t2"], "reference": ["red_circle_000", "blue_star_001", "red_star_000"],
        "target": ["blue_circle_000", "red_star_002", "nowhere_999"],
        "edit_text": ["make it blue", "make it red", "x"], "mode": ["attribute"] * 3, "split": ["test"] * 3,
        "ref_attr": ["red", "blue", "red"], "ref_obj": ["circle", "star", "star"],
        "tgt_attr": ["blue", "red", "x"], "tgt_obj": ["circle", "star", "x"],
        "negatives": [["red_star_001"], [], []],
    }).write_parquet(tdir / "triplets.parquet")
    d = Dataset(folder)
    args = (fo, tdir, uniq("t-trip"), d.manifest(include_rejected=True), d.shard_dir, folder.parent / "media-t-trip")
    rep = sync_triplets(*args)
    assert rep.added == 2 and rep.skipped == ["t2"]
    ds = fo.load_dataset(uniq("t-trip") + "-triplets")
    assert ds.media_type == "group" and set(ds.group_slices) == {"reference", "target"}
    ref = ds.select_group_slices("reference").match(fo.ViewField("triplet_id") == "t0").first()
    tgt = ds.select_group_slices("target").match(fo.ViewField("triplet_id") == "t0").first()
    assert (ref.key, tgt.key, ref.edit_text, tgt.attr.label) == ("red_circle_000", "blue_circle_000",
                                                                 "make it blue", "blue")
    assert ref.group.id == tgt.group.id
    assert sync_triplets(*args).added == 0 and len(ds.select_group_slices("reference")) == 2
