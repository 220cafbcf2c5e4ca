"""Hostile tar shapes through the one reader (curate.shards.iter_shard): refused or counted,
never followed, never a hang; PAX / GNU / compressed shards read like plain ustar ones."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from curate.shards import ReadReport, iter_keys, iter_shard, safe_key, sample_meta, write_shard

pytestmark = pytest.mark.timeout(60)


def _info(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.type = kind
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], fmt=tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if ti.isfile() else None)
    return path


def _read(path: Path) -> tuple[list[dict], ReadReport]:
    rep = ReadReport(shard=path.name)
    return list(iter_shard(path, rep)), rep


GOOD = [(_info("good.jpg", b"IMG"), b"IMG"), (_info("good.json", b'{"a": 1}'), b'{"a": 1}')]


def test_unsafe_names_are_skipped_and_counted(tmp_path):
    p = _tar(tmp_path / "s.tar", [
        (_info("/etc/evil.jpg", b"x"), b"x"),
        (_info("../../escape.jpg", b"x"), b"x"),
        (_info("a/../../b.jpg", b"x"), b"x"),
        *GOOD,
    ])
    got, rep = _read(p)
    assert [s["__key__"] for s in got] == ["good"]
    assert got[0]["jpg"] == b"IMG"
    assert rep.error is None
    assert rep.skipped == {"absolute or odd member path": 1, "member path with '..'": 2}


@pytest.mark.parametrize("kind,reason", [
    (tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"),
    (tarfile.CHRTYPE, "character device"), (tarfile.BLKTYPE, "block device"),
    (tarfile.FIFOTYPE, "FIFO"), (tarfile.DIRTYPE, "directory"),
])
def test_links_devices_fifos_are_never_followed(tmp_path, kind, reason):
    ti = _info("evil.jpg", kind=kind, linkname="/etc/passwd")
    p = _tar(tmp_path / "s.tar", [(ti, b""), *GOOD])
    got, rep = _read(p)
    assert [s["__key__"] for s in got] == ["good"]
    assert rep.skipped == {reason: 1}
    assert all(b"root:" not in v for s in got for k, v in s.items() if not k.startswith("__"))


def test_gzipped_symlink_is_skipped_too(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(_info("evil.jpg", kind=tarfile.SYMTYPE, linkname="/etc/passwd"))
        for ti, data in GOOD:
            tar.addfile(ti, io.BytesIO(data))
    p = tmp_path / "s.tar"
    p.write_bytes(gzip.compress(buf.getvalue()))
    got, rep = _read(p)
    assert [s["__key__"] for s in got] == ["good"] and rep.skipped == {"symbolic link": 1}


def _raw_header(name: str, size: int) -> bytes:
    ti = _info(name)
    ti.size = size
    return ti.tobuf(tarfile.GNU_FORMAT)  # base-256 size field above 8 GiB - 1


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_huge_declared_size_is_never_read(tmp_path, fmt):
    size = 8 << 30
    if fmt == "gnu":
        head = _raw_header("big.jpg", size)
    else:
        ti = _info("big.jpg")
        ti.size = size
        head = ti.tobuf(tarfile.PAX_FORMAT)
    p = tmp_path / "s.tar"
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for ti, data in GOOD:
            tar.addfile(ti, io.BytesIO(data))
    body = good.getvalue()
    p.write_bytes(body[: 4 * 512] + head + b"x" * 4096)  # the good sample (2 members), then the liar
    got, rep = _read(p)
    assert [s["__key__"] for s in got] == ["good"]
    assert rep.error and "truncated" in rep.error


def test_truncated_member_drops_only_its_sample(tmp_path):
    p = _tar(tmp_path / "s.tar", [*GOOD, (_info("b.jpg", b"B" * 5000), b"B" * 5000)])
    data = p.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 3 * 512 + 1024 + 512 + 100])
    got, rep = _read(cut)
    assert [s["__key__"] for s in got] == ["good"] and rep.error


def test_duplicate_keys_keep_the_first_copy_whole(tmp_path):
    p = _tar(tmp_path / "s.tar", [
        (_info("a.jpg", b"A1"), b"A1"), (_info("a.json", b'{"c": 1}'), b'{"c": 1}'),
        (_info("b.jpg", b"B"), b"B"),
        (_info("a.jpg", b"A2"), b"A2"), (_info("a.txt", b"other caption"), b"other caption"),
    ])
    got, rep = _read(p)
    assert [s["__key__"] for s in got] == ["a", "b"]
    assert got[0]["jpg"] == b"A1" and "txt" not in got[0]  # never one copy's image with another's caption
    assert rep.skipped == {"duplicate key (a later copy, skipped)": 1}


def test_upper_case_extension_beside_lower_case(tmp_path):
    p = _tar(tmp_path / "s.tar", [(_info("a.jpg", b"lower"), b"lower"), (_info("a.JPG", b"UPPER"), b"UPPER")])
    got, rep = _read(p)
    assert len(got) == 1 and got[0]["jpg"] == b"lower"
    assert rep.skipped == {"duplicate field in one sample (first kept)": 1}
    p2 = _tar(tmp_path / "u.tar", [(_info("a.JPG", b"UPPER"), b"UPPER")])
    assert _read(p2)[0][0]["jpg"] == b"UPPER"


def test_pax_gnu_and_webdataset_shards_use_the_fast_reader(tmp_path):
    long = "x" * 120
    members = [(_info(f"{long}.jpg", b"L"), b"L"), (_info("caf\u00e9.jpg", b"C"), b"C"),
               (_info("m.jpg", b"M", mtime=1.5), b"M")]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        p = _tar(tmp_path / f"f{fmt}.tar", members, fmt=fmt)
        got, rep = _read(p)
        assert [s.get("__source_key__", s["__key__"]) for s in got] == [long, "caf\u00e9", "m"], fmt
        assert got[1]["__key__"] == safe_key("caf\u00e9") and rep.renamed == 1
        assert rep.error is None
    import webdataset as wds

    p = tmp_path / "wds.tar"
    with wds.TarWriter(str(p)) as w:  # what img2dataset writes (PAX headers, float mtimes)
        for i in range(3):
            w.write({"__key__": f"k{i}", "jpg": b"J" * (i + 1), "json": {"i": i}})
    got, rep = _read(p)
    assert [(s["__key__"], s["jpg"]) for s in got] == [("k0", b"J"), ("k1", b"JJ"), ("k2", b"JJJ")]
    assert rep.error is None


def test_fifo_or_device_in_place_of_a_shard_does_not_hang(tmp_path):
    fifo = tmp_path / "f.tar"
    os.mkfifo(fifo)  # open() for reading would block forever without a writer
    for path in (fifo, Path("/dev/zero")):
        got, rep = _read(path)
        assert got == [] and "not a regular file" in rep.error
    reports = []
    assert list(iter_keys({"k": tmp_path / "missing.tar"}, reports)) == []
    assert reports[0].error == "shard file missing"


def test_iter_keys_reads_only_wanted_keys(tmp_path):
    a = tmp_path / "a.tar"
    b = tmp_path / "b.tar"
    write_shard(a, [{"__key__": f"a{i}", "jpg": b"A", "json": {"i": i}} for i in range(5)])
    write_shard(b, [{"__key__": f"b{i}", "jpg": b"B", "json": {"i": i}} for i in range(5)])
    reports = []
    got = list(iter_keys({"a1": a, "b3": b, "a4": a, "zz": b}, reports, exts=("jpg",)))
    assert [s["__key__"] for s in got] == ["a1", "a4", "b3"]
    assert all(set(s) == {"__key__", "__shard__", "jpg"} for s in got)
    assert [r.shard for r in reports] == ["a.tar", "b.tar"] and not any(r.error for r in reports)


def test_unsafe_keys_get_safe_stable_distinct_names(tmp_path):
    p = _tar(tmp_path / "s.tar", [(_info("dir_a/k.jpg", b"A"), b"A"), (_info("dir_b/k.jpg", b"B"), b"B"),
                                  (_info("a b.jpg", b"S"), b"S"), (_info("\u00fcber.jpg", b"U"), b"U")])
    got, rep = _read(p)
    names = [s["__key__"] for s in got]
    assert len(set(names)) == 4 and rep.renamed == 4
    assert all(re_safe(n) for n in names)
    assert [s["__source_key__"] for s in got] == ["dir_a/k", "dir_b/k", "a b", "\u00fcber"]
    assert safe_key("dir_a/k") == names[0] and safe_key("plain-key_1") == "plain-key_1"
    # the keys filter takes the safe names a manifest holds
    assert [s["jpg"] for s in iter_shard(p, keys={names[1]})] == [b"B"]


def re_safe(name: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z0-9_\-]+", name) is not None


@pytest.mark.parametrize("raw,why", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deep"), (b'{"a": 1} trailing', "JSONDecodeError"),
    (b"\xff\xfe", "UnicodeDecodeError"), (b"[1, 2]", "not an object (list)"), (b'"text"', "not an object (str)"),
    (b"3", "not an object (int)"), (b"null", "not an object (NoneType)"),
])
def test_sidecars_that_are_not_json_objects_are_refused_with_a_reason(raw, why):
    rep = ReadReport("x")
    assert sample_meta({"__key__": "k", "json": raw}, rep) is None
    assert len(rep.skipped) == 1 and why in next(iter(rep.skipped))
    assert sample_meta({"__key__": "k"}, rep) == {} and sample_meta({"json": b'{"a": 1}'}) == {"a": 1}


def test_long_member_names_are_written_as_pax_and_reshard_keeps_every_sample(tmp_path):
    """A 240-character key (members over ustar's 100-byte name field) used to fail the whole reshard
    task with 'name is too long', losing the shard's good samples; the writer now adds PAX headers
    (as webdataset and img2dataset write) and names that fit stay plain ustar, byte for byte."""
    import subprocess
    import sys

    import webdataset as wds

    long_key = "k" * 240
    src = tmp_path / "in"
    src.mkdir()
    members = []
    for key in ("first", long_key, "last"):
        members += [(_info(f"{key}.jpg", b"IMG-" + key[:3].encode()), b"IMG-" + key[:3].encode()),
                    (_info(f"{key}.json", b'{"a": 1}'), b'{"a": 1}')]
    _tar(src / "src-000000.tar", members, fmt=tarfile.PAX_FORMAT)
    curate = str(Path(sys.executable).with_name("curate"))
    r = subprocess.run([curate, "shards", "reshard", str(src), "--out", str(tmp_path / "out"), "--workers", "1"],
                       capture_output=True, text=True, env={**os.environ, "CURATE_NO_PROGRESS": "1"}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = sorted((tmp_path / "out" / "shards").glob("*.tar"))
    keys = [s["__key__"] for p in out for s in _read(p)[0]]
    assert sorted(keys) == sorted(["first", long_key, "last"])
    assert sorted(s["__key__"] for p in out for s in wds.WebDataset([str(p) for p in out], shardshuffle=False)) \
        == sorted(keys)
    # names that fit are written as before: a short-named shard is byte-identical to a ustar one
    short = [("a", b"x")]
    write_shard(tmp_path / "pax.tar", [{"__key__": k, "jpg": v} for k, v in short])
    with tarfile.open(tmp_path / "ustar.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        info = _info("a.jpg", b"x", mtime=tarfile.open(tmp_path / "pax.tar").getmembers()[0].mtime, mode=0o644,
                     uid=0, gid=0, uname="", gname="")
        tar.addfile(info, io.BytesIO(b"x"))
    assert (tmp_path / "pax.tar").read_bytes() == (tmp_path / "ustar.tar").read_bytes()
