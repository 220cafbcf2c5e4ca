"""Hostile shards and image folders through whole stages: good samples are never lost, bad ones are
counted with a reason, keys never become unsafe file names."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from curate.shards import iter_shard

CURATE = str(Path(sys.executable).with_name("curate"))
pytestmark = pytest.mark.timeout(300)


def _jpeg(seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _hostile_shard(path: Path) -> Path:
    members = [
        ("good.jpg", _jpeg(0)), ("good.json", b'{"caption": "a good one"}'),
        ("dir_a/k.jpg", _jpeg(1)), ("dir_b/k.jpg", _jpeg(2)),  # same stem in two folders
        ("with space.jpg", _jpeg(3)), ("\u00fcber.jpg", _jpeg(4)),
        ("/abs/evil.jpg", _jpeg(5)), ("../escape.jpg", _jpeg(6)),
        ("deep.jpg", _jpeg(7)), ("deep.json", b"[" * 100_000 + b"]" * 100_000),
        ("listcap.jpg", _jpeg(8)), ("listcap.json", b'{"caption": ["not", "a", "string"]}'),
        ("garbage.jpg", _jpeg(9)), ("garbage.json", b'{"caption": "x"} trailing'),
        ("noimage.json", b'{"caption": "no image here"}'),
        ("dup.jpg", _jpeg(10)), ("other.jpg", _jpeg(11)), ("dup.JPG", _jpeg(12)),
    ]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        dev = tarfile.TarInfo("fifo.jpg")
        dev.type = tarfile.FIFOTYPE
        tar.addfile(dev)
    return path


def test_reshard_keeps_every_good_sample_of_a_hostile_shard(tmp_path):
    (tmp_path / "in").mkdir()
    src = _hostile_shard(tmp_path / "in" / "h.tar")
    out = tmp_path / "out"
    r = subprocess.run([CURATE, "shards", "reshard", str(src), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    keys = pl.read_parquet(out / "manifest.parquet")["key"].to_list()
    assert len(keys) == 11 and len(set(keys)) == 11  # 11 keys; unsafe names, the later duplicate and the FIFO skipped
    assert all(k.replace("-", "").replace("_", "").isalnum() and k.isascii() for k in keys)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["renamed_keys"] == 4
    skipped = stats["skipped"]
    assert skipped["absolute or odd member path"] == 1 and skipped["member path with '..'"] == 1
    assert skipped["FIFO"] == 1 and skipped["duplicate key (a later copy, skipped)"] == 1
    assert skipped["invalid JSON sidecar (nested too deep)"] == 1
    assert skipped["invalid JSON sidecar (JSONDecodeError)"] == 1
    written = {s["__key__"]: s for p in sorted((out / "shards").glob("*.tar")) for s in iter_shard(p)}
    assert "json" not in written["deep"] and "json" not in written["garbage"]  # dropped, not copied
    assert json.loads(written["good"]["json"]) == {"caption": "a good one"}


def test_embed_counts_bad_sidecars_and_missing_images_and_names_keys_safely(tmp_path, tiny_clip_spec):
    (tmp_path / "in").mkdir()
    src = _hostile_shard(tmp_path / "in" / "h.tar")
    emb = tmp_path / "emb"
    r = subprocess.run([CURATE, "embed", str(src), "--model", tiny_clip_spec, "--out", str(emb), "--workers", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = json.loads((emb / "embeddings.json").read_text())
    assert info["counts"]["images"] == 10 and info["bad_keys"] == ["noimage"]
    assert info["skipped"]["no image field"] == 1
    assert info["skipped"]["caption is not a string (list)"] == 1
    assert info["renamed_keys"] == 4
    meta = pl.read_parquet(next((emb / "metadata").glob("*.parquet")))
    assert not any(k.startswith(("/", "..")) or "/" in k for k in meta["key"].to_list())
    assert dict(zip(meta["key"], meta["caption"], strict=True))["good"] == "a good one"


def _png16() -> bytes:
    arr = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((200, 0, 0), (0, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def test_folder_pool_keys_are_unique_and_gif_and_16bit_png_decode(tmp_path):
    from builders.imagenet_ao.pool import folder_keys, pack_folder
    from curate.executor import LocalExecutor
    from curate.images import open_rgb

    folder = tmp_path / "pool"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_jpeg(0))
    (folder / "a.png").write_bytes(_png16())
    (folder / "anim.gif").write_bytes(_gif())
    (folder / "b.webp").write_bytes(_jpeg(1))  # a JPEG named .webp: decodable, packed
    assert folder_keys(["a.jpg", "a.png", "anim.gif"]) == ["a_jpg", "a_png", "anim"]
    shards, rejected = pack_folder(folder, tmp_path / "shards", LocalExecutor(1), min_resolution=16)
    got = {s["__key__"]: s for p in shards for s in iter_shard(p)}
    assert sorted(got) == ["a_jpg", "a_png", "anim", "b"] and rejected == []
    first = np.asarray(open_rgb(got["anim"]["gif"]))
    assert first.shape == (40, 40, 3) and first[..., 0].mean() > 150  # the first frame (red)
    grey = np.asarray(open_rgb(got["a_png"]["png"]))
    assert 100 < grey.mean() < 155  # scaled from 16 bits, not clipped to white
    assert np.asarray(Image.open(io.BytesIO(got["a_png"]["png"])).convert("RGB")).mean() > 250  # what PIL alone does


def test_reshard_reports_a_key_present_in_two_inputs(tmp_path):
    from curate.shards import write_shard

    write_shard(tmp_path / "in" / "a.tar", [{"__key__": "k1", "txt": "first"}, {"__key__": "k2", "txt": "x"}])
    write_shard(tmp_path / "in" / "b.tar", [{"__key__": "k1", "txt": "second"}])
    out = tmp_path / "out"
    r = subprocess.run([CURATE, "shards", "reshard", str(tmp_path / "in"), "--out", str(out)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    m = pl.read_parquet(out / "manifest.parquet")
    assert m["key"].to_list() == ["k1", "k2"] and m["source_shard"][0].endswith("a.tar")  # the first input wins
    dups = json.loads((out / "stats.json").read_text())["duplicate_keys_across_inputs"]
    assert [d["key"] for d in dups] == ["k1"] and len(dups[0]["shards"]) == 2
