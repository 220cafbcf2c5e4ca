"""Shard writer/reader: limits, determinism, atomicity, and read-back by the tools people use."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from curate.errors import CurateError
from curate.fsutil import TMP_MARK
from curate.shards import (
    ReadReport,
    ShardWriter,
    iter_shard,
    list_shards,
    read_stats,
    shard_name,
    write_shard,
)


def jpeg(seed: int, side: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_samples(n: int, side: int = 24) -> list[dict]:
    """Real JPEGs (random pixels, so sizes are roughly proportional to ``side**2``)."""
    return [
        {"__key__": f"s{i:04d}", "jpg": jpeg(i, side), "json": {"i": i, "label": f"item {i}"},
         "txt": f"caption {i}"}
        for i in range(n)
    ]


def write(folder: Path, samples: list[dict], **kw) -> ShardWriter:
    with ShardWriter(folder, **kw) as w:
        w.write_all(samples)
    return w


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_maxcount_splits_and_names_are_deterministic(tmp_path):
    w = write(tmp_path / "a", make_samples(25), prefix="x", maxcount=10)
    assert [p.name for p in w.written] == [shard_name("x", i) for i in range(3)]
    assert [s.count for s in w.stats] == [10, 10, 5]
    st = read_stats(w.written[0])
    assert st["count"] == 10 and st["first_key"] == "s0000" and st["last_key"] == "s0009"
    assert st["extensions"] == {"jpg": 10, "json": 10, "txt": 10}
    assert st["bytes"] == w.written[0].stat().st_size


def test_start_index_offsets_names(tmp_path):
    w = write(tmp_path, make_samples(3), prefix="p", maxcount=2, start=7)
    assert [p.name for p in w.written] == ["p-000007.tar", "p-000008.tar"]


def test_maxsize_limits_bytes(tmp_path):
    samples = make_samples(20, side=48)
    w = write(tmp_path, samples, maxsize=20_000)
    assert len(w.written) > 3
    assert sum(s.count for s in w.stats) == 20
    # a shard holds more than one sample, and no shard is far past the limit
    assert all(s.count >= 1 for s in w.stats)
    assert all(p.stat().st_size <= 20_000 + 10240 for p in w.written)


def test_same_samples_give_same_bytes(tmp_path):
    write(tmp_path / "a", make_samples(12), maxcount=5)
    write(tmp_path / "b", make_samples(12), maxcount=5)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_exception_leaves_no_partial_shard(tmp_path):
    samples = make_samples(7)
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, maxcount=5) as w:
            for s in samples:
                w.write(s)
            raise RuntimeError("killed mid-shard")
    names = sorted(p.name for p in tmp_path.iterdir())
    # the complete first shard stays; the one in progress vanished, no temp file is left
    assert names == ["shard-000000.stats.json", "shard-000000.tar"]
    assert not any(TMP_MARK in n for n in names)


def test_bad_and_duplicate_keys_are_refused(tmp_path):
    with ShardWriter(tmp_path) as w:
        with pytest.raises(CurateError, match="invalid sample key"):
            w.write({"__key__": "a.b", "txt": "x"})
        w.write({"__key__": "ok", "txt": "x"})
        with pytest.raises(CurateError, match="duplicate key"):
            w.write({"__key__": "ok", "txt": "y"})
    with pytest.raises(CurateError, match="must end with .tar"):
        write_shard(tmp_path / "x.zip", [])


def test_write_shard_single_file_with_extra_stats(tmp_path):
    st = write_shard(tmp_path / "one.tar", make_samples(4), extra_stats={"source": "test"})
    assert st.count == 4
    assert read_stats(tmp_path / "one.tar")["source"] == "test"
    assert [s["__key__"] for s in iter_shard(tmp_path / "one.tar")] == [f"s{i:04d}" for i in range(4)]


def test_read_back_with_tarfile(tmp_path):
    samples = make_samples(6)
    w = write(tmp_path, samples, maxcount=100)
    with tarfile.open(w.written[0]) as tar:
        members = tar.getmembers()
        got = {m.name: tar.extractfile(m).read() for m in members}
    assert [m.name for m in members][:3] == ["s0000.jpg", "s0000.json", "s0000.txt"]
    for s in samples:
        assert got[f"{s['__key__']}.jpg"] == s["jpg"]
        assert json.loads(got[f"{s['__key__']}.json"]) == s["json"]
        assert got[f"{s['__key__']}.txt"].decode() == s["txt"]
    assert all(m.mtime == 0 and m.uid == 0 for m in members)


def test_read_back_with_webdataset(tmp_path):
    import webdataset as wds

    samples = make_samples(9)
    w = write(tmp_path, samples, maxcount=4)
    urls = [str(p) for p in w.written]
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    for g, s in zip(got, samples, strict=True):
        assert g["jpg"] == s["jpg"]
        assert json.loads(g["json"]) == s["json"]
        assert g["txt"].decode() == s["txt"]


def test_read_back_with_hf_datasets(tmp_path):
    from datasets import load_dataset

    samples = make_samples(7)
    w = write(tmp_path / "shards", samples, maxcount=3)
    ds = load_dataset("webdataset", data_files={"train": [str(p) for p in w.written]}, split="train",
                      cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 7
    rows = sorted(ds, key=lambda r: r["__key__"])
    from PIL import Image

    for r, s in zip(rows, samples, strict=True):
        assert r["__key__"] == s["__key__"]
        assert r["txt"] == s["txt"]
        assert r["json"] == s["json"]
        assert np.array_equal(np.asarray(r["jpg"]), np.asarray(Image.open(io.BytesIO(s["jpg"]))))


def test_iter_shard_round_trip_and_npy(tmp_path):
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_shard(tmp_path / "e.tar", [{"__key__": "k1", "npy": emb, "json": {"a": 1}}])
    (s,) = list(iter_shard(tmp_path / "e.tar"))
    assert s["__key__"] == "k1" and s["__shard__"] == "e.tar"
    assert np.array_equal(np.load(io.BytesIO(s["npy"])), emb)


def _member_offsets(path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data + m.size) for m in tar.getmembers()]


def test_truncated_shard_stops_after_last_complete_sample(tmp_path):
    samples = make_samples(5)
    w = write(tmp_path, samples)
    data = w.written[0].read_bytes()
    offsets = _member_offsets(w.written[0])
    # cut inside sample 2's data, inside its last header, and exactly where sample 3 starts
    # (sample 2 may then lack fields): samples 0-1 come back intact and the damage is reported
    s2 = [o for o in offsets if o[0].startswith("s0002.")]
    s3_start = next(o[1] for o in offsets if o[0].startswith("s0003."))
    for cut in (s2[0][1] + 700, s2[-1][1] + 100, s3_start):
        p = tmp_path / f"cut-{cut}.tar"
        p.write_bytes(data[:cut])
        rep = ReadReport(shard=p.name)
        got = list(iter_shard(p, rep))
        expect = 2
        assert [g["__key__"] for g in got] == [s["__key__"] for s in samples[:expect]], cut
        assert all(g["jpg"] == s["jpg"] for g, s in zip(got, samples, strict=False))
        assert rep.error and rep.samples == expect, (cut, rep)
        with pytest.raises(CurateError, match="corrupt or truncated"):
            list(iter_shard(p, strict=True))


def test_garbage_and_empty_files_are_reported(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 100)
    (tmp_path / "empty.tar").write_bytes(b"")
    for name in ("junk.tar", "empty.tar"):
        rep = ReadReport(shard=name)
        assert list(iter_shard(tmp_path / name, rep)) == []
        assert rep.error


def test_intact_shard_reports_no_error(tmp_path):
    w = write(tmp_path, make_samples(3))
    rep = ReadReport(shard="x")
    assert len(list(iter_shard(w.written[0], rep))) == 3
    assert rep.error is None and rep.samples == 3


def test_list_shards_patterns(tmp_path):
    w = write(tmp_path / "d", make_samples(10), prefix="p", maxcount=2)
    (tmp_path / "d" / f"p-000009.tar{TMP_MARK}123").write_bytes(b"")
    assert list_shards(tmp_path / "d") == w.written
    assert list_shards(str(tmp_path / "d" / "p-*.tar")) == w.written
    assert list_shards(str(tmp_path / "d" / "p-{000001..000003}.tar")) == w.written[1:4]
    assert list_shards([str(w.written[4]), str(w.written[0])]) == [w.written[4], w.written[0]]
    with pytest.raises(CurateError, match="no .tar shards"):
        list_shards(str(tmp_path / "nothing-*.tar"))


def test_fast_tar_reader_matches_tarfile(tiny_dataset, tmp_path):
    """Moved from test_review (the review media code had its own fast reader; it is now iter_shard's)."""
    for shard in sorted((tiny_dataset / "shards").glob("*.tar")):
        fast = [(s["__key__"], "jpg", s["jpg"]) for s in iter_shard(shard)]
        with tarfile.open(shard) as tar:
            slow = [(m.name.split(".", 1)[0], "jpg", tar.extractfile(m).read()) for m in tar if m.name.endswith(".jpg")]
        assert fast == slow and fast
    # a truncated shard yields the complete images before the cut and reports the error
    shard = sorted((tiny_dataset / "shards").glob("*.tar"))[0]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    rep = ReadReport("cut.tar")
    got = list(iter_shard(cut, rep))
    assert 0 < len(got) < len(list(iter_shard(shard))) and rep.error
    # names with folders: the key keeps the folder (the WebDataset convention)
    write_shard(tmp_path / "nested.tar", [{"__key__": "k1", "jpg": b"abc"}])
    assert [s["__key__"] for s in iter_shard(tmp_path / "nested.tar")] == ["k1"]
