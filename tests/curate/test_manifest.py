"""Manifest: parquet read/write/append/update, ID lists as the way to filter without re-sharding."""

from __future__ import annotations

import stat

import polars as pl
import pytest

from curate.dataset import Dataset
from curate.errors import CurateError
from curate.manifest import (
    append_manifest,
    filter_by_ids,
    read_id_list,
    read_manifest,
    update_manifest,
    write_id_list,
    write_manifest,
)


def rows(keys, shard="a-000000.tar", **cols) -> pl.DataFrame:
    data = {"key": list(keys), "shard": [shard] * len(keys)}
    data.update({k: list(v) for k, v in cols.items()})
    return pl.DataFrame(data)


def test_write_read_round_trip_sorted_and_byte_stable(tmp_path):
    df = rows(["c", "a", "b"], attr=["red", "blue", "green"], score=[0.3, 0.1, 0.2])
    p = write_manifest(df, tmp_path)
    assert p == tmp_path / "manifest.parquet"
    got = read_manifest(tmp_path)
    assert got["key"].to_list() == ["a", "b", "c"]
    assert got.filter(pl.col("key") == "c")["attr"].item() == "red"
    first = p.read_bytes()
    write_manifest(df.sample(fraction=1.0, shuffle=True, seed=3), tmp_path / "manifest.parquet")
    assert p.read_bytes() == first  # row order in, same bytes out
    # written via a temp file, yet readable like any other file (not mkstemp's 0600)
    (tmp_path / "plain").write_bytes(b"")
    assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_missing_columns_and_duplicates_are_errors(tmp_path):
    with pytest.raises(CurateError, match="lacks column"):
        write_manifest(pl.DataFrame({"key": ["a"]}), tmp_path)
    with pytest.raises(CurateError, match="duplicate key"):
        write_manifest(rows(["a", "b", "a"]), tmp_path)
    assert not (tmp_path / "manifest.parquet").exists()


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(CurateError, match="no manifest.parquet"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(CurateError, match="cannot read manifest") as e:
        read_manifest(tmp_path)
    assert str(tmp_path / "manifest.parquet") in e.value.message


def test_append_keeps_keys_unique_and_fills_new_columns(tmp_path):
    write_manifest(rows(["a", "b"], attr=["x", "y"]), tmp_path)
    df = append_manifest(tmp_path, rows(["c"], shard="a-000001.tar", split=["test"]))
    got = read_manifest(tmp_path)
    assert got.height == 3 == df.height
    assert got.filter(pl.col("key") == "c")["split"].item() == "test"
    assert got.filter(pl.col("key") == "a")["split"].item() is None
    with pytest.raises(CurateError, match="duplicate key"):
        append_manifest(tmp_path, rows(["a"]))
    assert read_manifest(tmp_path).height == 3  # the failed append changed nothing


def test_append_creates_missing_manifest(tmp_path):
    append_manifest(tmp_path / "new.parquet", rows(["z"]))
    assert read_manifest(tmp_path / "new.parquet")["key"].to_list() == ["z"]


def test_update_sets_columns_of_matching_rows_only(tmp_path):
    write_manifest(rows(["a", "b", "c"], review_status=[None, None, None], attr=["x", "y", "z"]), tmp_path)
    updates = pl.DataFrame({"key": ["b", "c"], "review_status": ["reject", "accept"], "note": ["blurry", None]})
    update_manifest(tmp_path, updates)
    got = read_manifest(tmp_path)
    assert got["review_status"].to_list() == [None, "reject", "accept"]
    assert got["attr"].to_list() == ["x", "y", "z"]
    assert got["note"].to_list() == [None, "blurry", None]
    kept = read_manifest(tmp_path, include_rejected=False)
    assert kept["key"].to_list() == ["a", "c"]


def test_id_list_round_trip_and_filter(tmp_path):
    df = rows([f"k{i}" for i in range(10)])
    p = write_id_list(tmp_path / "ids.txt", ["k7", "k2", "k7", "k9"])
    assert p.read_text() == "k2\nk7\nk9\n"
    assert read_id_list(p) == ["k2", "k7", "k9"]
    assert filter_by_ids(df, p)["key"].to_list() == ["k2", "k7", "k9"]
    assert filter_by_ids(df, ["k0"])["key"].to_list() == ["k0"]
    with pytest.raises(CurateError, match="ID list not found"):
        read_id_list(tmp_path / "missing.txt")


def test_id_list_selects_samples_without_resharding(tiny_dataset):
    """A subset is a text file of keys: the dataset's shards are read, never rewritten."""
    ds = Dataset(tiny_dataset)
    before = {p.name: p.stat().st_mtime_ns for p in ds.shard_dir.iterdir()}
    keys = ds.manifest().filter(pl.col("obj") == "star")["key"].to_list()
    ids = write_id_list(tiny_dataset / "stars.txt", keys)
    got = dict(ds.images(read_id_list(ids)))
    assert sorted(got) == sorted(keys) and all(v[:2] == b"\xff\xd8" for v in got.values())
    assert {p.name: p.stat().st_mtime_ns for p in ds.shard_dir.iterdir()} == before
