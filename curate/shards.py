"""WebDataset shards: a deterministic, atomic writer and a tolerant reader.

A shard is a plain POSIX tar whose members are ``KEY.EXT``; members sharing a key form one
sample (the WebDataset convention, so ``webdataset.WebDataset``, ``datasets.load_dataset
("webdataset")`` and plain ``tarfile`` all read them). Keys never contain dots or slashes.

Determinism: member headers carry fixed mtime/uid/gid/mode, so the same samples always give
the same bytes. Atomicity: a shard is written to a temp name and renamed when complete, next
to a ``NAME.stats.json`` with its sample count, size and extensions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import CurateError
from .fsutil import TMP_MARK, write_json

KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
FIXED_MTIME = 0
Sample = dict[str, Any]


def encode_value(ext: str, value: Any) -> bytes:
    """Encode a sample field by its extension: bytes pass through, dicts become JSON, arrays npy."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue()
    if isinstance(value, dict | list) or ext in ("json", "cls_json"):
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    if isinstance(value, str | int | float):
        return str(value).encode("utf-8")
    raise TypeError(f"cannot encode field .{ext} of type {type(value).__name__}")


def safe_key(key: str) -> str:
    """``key`` when it is a safe file name (letters, digits, ``_``, ``-``), else a safe, stable one.

    A key with spaces, non-ASCII letters or a folder (``dir_a/k``) becomes its characters with
    every other run replaced by ``_``, plus 8 hex digits of its SHA-1, so ``dir_a/k`` and
    ``dir_b/k`` stay distinct and the same key always maps to the same name.
    """
    if KEY_RE.match(key):
        return key
    stem = re.sub(r"[^A-Za-z0-9_\-]+", "_", key).strip("_")[:80] or "key"
    return f"{stem}-{hashlib.sha1(key.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise CurateError(
            f"invalid sample key {key!r}",
            fix="keys may hold only letters, digits, '_' and '-' (no dots or slashes)",
        )
    return key


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def stats_path(shard: str | os.PathLike) -> Path:
    p = Path(shard)
    return p.with_name(p.name[: -len(".tar")] + ".stats.json") if p.name.endswith(".tar") else p.with_name(p.name + ".stats.json")


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    """A member header as every shard curate writes has it: fixed mtime, mode 644, owner 0, no names."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_member_info(name, len(data)), io.BytesIO(data))


def rewrite_in_key_order(path: str | os.PathLike) -> None:
    """Rewrite a shard another tool wrote (img2dataset's, in download-completion order with write times in
    its headers) with its samples in key order and curate's own member headers, so its bytes do not depend
    on timing. Regular members only; names and data as read; the members of one sample keep their order;
    one member at a time (the shard is never held in memory). Written beside it, then moved over it."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}sorted")
    with tarfile.open(path) as src, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as dst:
        members = [m for m in src.getmembers() if m.isfile()]
        for m in sorted(members, key=lambda m: m.name.rsplit("/", 1)[-1].split(".", 1)[0]):  # stable sort
            dst.addfile(_member_info(m.name, m.size), src.extractfile(m))
    os.replace(tmp, path)


@dataclass
class ShardStats:
    shard: str
    count: int = 0
    bytes: int = 0
    extensions: dict[str, int] = field(default_factory=dict)
    first_key: str | None = None
    last_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


class ShardWriter:
    """Write samples into ``{prefix}-{NNNNNN}.tar`` shards under ``folder``.

    A new shard starts when ``maxcount`` samples or ``maxsize`` bytes would be exceeded.
    ``start`` sets the first shard index (a stage writing one output per input task uses the
    task's index so names never collide across workers). Use as a context manager; on an
    exception the shard in progress is discarded, never left half-written under its name.
    ``name`` writes exactly one shard under that file name, even an empty one (see
    :func:`write_shard`); ``extra_stats`` are added to each shard's ``.stats.json``.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        prefix: str = "shard",
        maxcount: int = 10_000,
        maxsize: int = 1 << 30,
        start: int = 0,
        write_stats: bool = True,
        name: str | None = None,
        extra_stats: dict[str, Any] | None = None,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.index = start
        self.write_stats = write_stats
        self.name = name
        self.extra_stats = dict(extra_stats or {})
        self.written: list[Path] = []
        self.stats: list[ShardStats] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._cur: ShardStats | None = None
        self._keys: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self) -> None:
        if self.name is not None and self.written:
            raise CurateError(f"more samples than fit in the single shard {self.name}")
        name = self.name or shard_name(self.prefix, self.index)
        self._tmp = self.folder / f"{name}{TMP_MARK}{os.getpid()}"
        # PAX: a member name over ustar's 100 bytes (a 240-character key) gets a PAX header, as
        # webdataset and img2dataset write; names that fit are written exactly as ustar writes them
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)
        self._cur = ShardStats(shard=name)
        self._keys = set()

    def _finish(self) -> None:
        if self._tar is None:
            return
        assert self._tmp is not None and self._cur is not None
        self._tar.close()
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        final = self.folder / self._cur.shard
        self._cur.bytes = self._tmp.stat().st_size
        self._cur.extra = dict(self.extra_stats)
        os.replace(self._tmp, final)
        if self.write_stats:
            write_json(stats_path(final), self._cur.to_dict())
        self.written.append(final)
        self.stats.append(self._cur)
        self._tar = None
        self._tmp = None
        self._cur = None
        self.index += 1

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
            self._tar = None

    def close(self) -> None:
        if self.name is not None and self._tar is None and not self.written:
            self._open()  # the single-shard form writes its file even when empty
        self._finish()

    # -- writing ---------------------------------------------------------------------
    def write(self, sample: Sample) -> str:
        """Write one sample (``__key__`` plus ``ext -> value``); returns the shard name."""
        key = check_key(str(sample["__key__"]))
        members = [(f"{key}.{ext}", encode_value(ext, v)) for ext, v in sample.items() if not ext.startswith("__")]
        if not members:
            raise CurateError(f"sample {key!r} has no fields to write")
        size = sum(len(d) + 1024 for _, d in members)
        if self._cur is not None and (
            self._cur.count >= self.maxcount or (self._cur.count > 0 and self._cur.bytes + size > self.maxsize)
        ):
            self._finish()
        if self._tar is None:
            self._open()
        assert self._tar is not None and self._cur is not None
        if key in self._keys:
            raise CurateError(f"duplicate key {key!r} in shard {self._cur.shard}")
        self._keys.add(key)
        for name, data in members:
            _add_member(self._tar, name, data)
            ext = name.split(".", 1)[1]
            self._cur.extensions[ext] = self._cur.extensions.get(ext, 0) + 1
        self._cur.count += 1
        self._cur.bytes += size
        self._cur.first_key = self._cur.first_key or key
        self._cur.last_key = key
        return self._cur.shard

    def write_all(self, samples: Iterable[Sample]) -> list[Path]:
        for s in samples:
            self.write(s)
        return self.written


def write_shard(path: str | os.PathLike, samples: Iterable[Sample], extra_stats: dict | None = None) -> ShardStats:
    """Write exactly one shard at ``path`` (atomic), whatever its size (empty too); returns its stats.

    The single-file form of :class:`ShardWriter` (a stage writing one output shard per task).
    """
    path = Path(path)
    if not path.name.endswith(".tar"):
        raise CurateError(f"shard path must end with .tar: {path}")
    with ShardWriter(path.parent, name=path.name, maxcount=1 << 62, maxsize=1 << 62,
                     extra_stats=extra_stats) as w:
        w.write_all(samples)
    return w.stats[0]


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
"""Image field extensions, in order of preference, for every stage (lower case: the reader
lower-cases extensions, so ``KEY.JPG`` is an image too)."""

MAX_MEMBER_BYTES = 1 << 31
"""A member declaring more than this (2 GiB) is skipped, never read into memory."""

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular, contiguous file
_SKIP_TYPES = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device",
               b"5": "directory", b"6": "FIFO"}
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


@dataclass
class ReadReport:
    """What a tolerant read of one shard saw.

    ``samples`` yielded; ``error`` the reason the read stopped early (truncated or corrupt
    archive); ``skipped`` member or sample counts by reason (links, devices, unsafe names,
    duplicate keys ...); ``examples`` the first few ``(member, reason)`` pairs for the log.
    """

    shard: str
    samples: int = 0
    error: str | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, str]] = field(default_factory=list)
    renamed: int = 0  # keys that were not safe file names, yielded under a safe key (see safe_key)

    def skip(self, member: str, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < 20:
            self.examples.append((member, reason))


class _Corrupt(Exception):
    """The archive stops being readable here; the sample in progress is dropped."""


@dataclass
class _Member:
    name: str
    size: int
    kind: bytes  # typeflag
    offset: int = 0  # of the data, in an uncompressed tar


def _octal(field_: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 when the high bit is set."""
    if field_ and field_[0] & 0x80:
        n = int.from_bytes(field_[1:], "big")
        return -n if field_[0] & 0x40 else n
    text = field_.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError as e:
        raise _Corrupt(f"bad numeric field {field_!r}") from e


def _checksum_ok(head: bytes) -> bool:
    want = _octal(head[148:156])
    unsigned = sum(head[:148]) + 8 * 32 + sum(head[156:])
    return want == unsigned


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d key=value\n"`` records of a PAX extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError as e:
            raise _Corrupt("bad PAX record") from e
        if length <= 0:
            raise _Corrupt("bad PAX record length")
        rec = data[sp + 1:pos + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _PlainTar:
    """Members of an uncompressed tar read straight from the 512-byte headers.

    Why not ``tarfile``: its stream mode spends most of a read parsing headers (this is
    ~10x faster on many small members). Handles ustar, PAX extended headers (``path``,
    ``size``; img2dataset/webdataset write them) and GNU long names; anything else
    (sparse files, unknown types) is skipped with a reason. A declared size beyond the end
    of the file is reported as truncation without reading it.
    """

    def __init__(self, f: BinaryIO, file_size: int):
        self.f = f
        self.file_size = file_size
        self.pos = 0  # offset of the next header

    def members(self) -> Iterator[_Member]:
        f = self.f
        pending: dict[str, str] = {}
        long_name: str | None = None
        while True:
            f.seek(self.pos)
            head = f.read(_BLOCK)
            if len(head) < _BLOCK:
                raise _Corrupt(f"truncated at byte {self.pos} (no end-of-archive block)")
            if head == _ZERO_BLOCK:
                return
            if not _checksum_ok(head):
                raise _Corrupt(f"invalid tar header at byte {self.pos}")
            kind = head[156:157]
            size = _octal(head[124:136])
            if "size" in pending:
                try:
                    size = int(pending["size"])
                except ValueError as e:
                    raise _Corrupt("bad PAX size") from e
            data_at = self.pos + _BLOCK
            if size < 0:
                raise _Corrupt(f"negative member size at byte {self.pos}")
            self.pos = data_at + size + (-size) % _BLOCK
            if kind in (b"x", b"g", b"L", b"K"):
                if size > 1 << 20 or data_at + size > self.file_size:
                    raise _Corrupt(f"bad extended header at byte {data_at - _BLOCK}")
                f.seek(data_at)
                meta = f.read(size)
                if kind == b"x":
                    pending = _pax_records(meta)
                elif kind == b"L":
                    long_name = meta.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                continue  # global headers and GNU long link names change nothing we use
            name = head[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if head[257:262] == b"ustar" and head[345] != 0:
                prefix = head[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                name = f"{prefix}/{name}"
            name = pending.get("path", long_name or name)
            pending, long_name = {}, None
            yield _Member(name, size, kind, data_at)

    def read(self, m: _Member) -> bytes:
        if m.offset + m.size > self.file_size:  # checked first: a huge declared size is never allocated
            raise _Corrupt(f"member {m.name} truncated (declares {m.size} bytes past the end of the file)")
        self.f.seek(m.offset)
        data = self.f.read(m.size)
        if len(data) != m.size:
            raise _Corrupt(f"member {m.name} truncated")
        return data


class _StreamTar:
    """Fallback for compressed shards: ``tarfile`` in stream mode, same member interface."""

    def __init__(self, path: Path | BinaryIO):
        self.tar = tarfile.open(path, "r|*") if isinstance(path, Path) else tarfile.open(fileobj=path, mode="r|*")
        self._cur: tarfile.TarInfo | None = None

    def members(self) -> Iterator[_Member]:
        kinds = {tarfile.SYMTYPE: b"2", tarfile.LNKTYPE: b"1", tarfile.CHRTYPE: b"3", tarfile.BLKTYPE: b"4",
                 tarfile.DIRTYPE: b"5", tarfile.FIFOTYPE: b"6"}
        for info in self.tar:
            self._cur = info
            yield _Member(info.name, info.size, b"0" if info.isfile() else kinds.get(info.type, b"?"))

    def read(self, m: _Member) -> bytes:
        f = self.tar.extractfile(self._cur) if self._cur is not None else None
        data = f.read() if f is not None else b""
        if len(data) != m.size:
            raise _Corrupt(f"member {m.name} truncated")
        return data

    def close(self) -> None:
        self.tar.close()


def _unsafe(name: str) -> str | None:
    """Why a member name cannot become a key (None when it can)."""
    if not name or name.startswith("/") or "\\" in name:
        return "absolute or odd member path"
    if any(part == ".." for part in name.split("/")):
        return "member path with '..'"
    if "\0" in name or any(ord(c) < 32 for c in name):
        return "control characters in member name"
    return None


def iter_shard(
    path: str | os.PathLike,
    report: ReadReport | None = None,
    strict: bool = False,
    keys: Container[str] | None = None,
    exts: Container[str] | None = None,
) -> Iterator[Sample]:
    """Yield samples (``__key__``, ``__shard__``, ``ext -> bytes``) from one tar, streaming.

    The one shard reader of the toolkit. Members ``PREFIX/KEY.EXT`` sharing a key form a
    sample (the WebDataset convention: the key is the name up to the first dot of the base
    name; extensions are lower-cased). Only the data of samples in ``keys`` and of fields in
    ``exts`` is read (the rest is skipped by seeking), when given.

    Never followed or created: links, devices, FIFOs, directories, absolute names and
    names with ``..`` are skipped and counted in ``report.skipped``. A key that is not a safe
    file name (spaces, non-ASCII letters, a folder) is yielded under :func:`safe_key` (the
    original in ``__source_key__``, counted in ``report.renamed``), so no stage ever builds a
    path from an untrusted name. A key that comes back
    after another key's members (a duplicate) is skipped whole, so one copy's image is never
    paired with another copy's caption; a field repeated within a sample keeps its first
    copy. A corrupt or truncated tar stops the iteration after the last complete sample; the
    reason goes into ``report.error`` (or raises ``CurateError`` when ``strict``).
    """
    from .storage import is_remote, open_read

    remote = is_remote(path)  # s3://, gs://: read through fsspec (a seekable file, the same parsers)
    path = str(path) if remote else Path(path)
    name = str(path).rsplit("/", 1)[-1] if remote else path.name
    report = report if report is not None else ReadReport(shard=name)
    group = _SampleGrouper(name, report, keys, exts)
    try:
        if not remote and not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise _Corrupt("not a regular file")
        with open_read(path) if remote else open(path, "rb", buffering=1 << 20) as f:
            magic = f.read(6)
            f.seek(0)
            reader: _PlainTar | _StreamTar
            if magic.startswith(_COMPRESSED):
                reader = _StreamTar(f if remote else path)
            else:
                reader = _PlainTar(f, f.size if remote else os.fstat(f.fileno()).st_size)
            try:
                for m in reader.members():
                    # a new key completes the previous sample before this member's data is read,
                    # so a truncated member never costs the sample before it
                    done = group.start(m)
                    if done is not None:
                        yield done
                    group.take(m, reader)
            finally:
                if isinstance(reader, _StreamTar):
                    reader.close()
    except (_Corrupt, tarfile.TarError, EOFError, OSError, zlib_error()) as e:
        report.error = f"{type(e).__name__}: {e}" if not isinstance(e, _Corrupt) else f"ReadError: {e}"
        if strict:
            raise CurateError(f"corrupt or truncated shard ({report.error})", where=str(path),
                              fix="re-create or remove this shard") from e
        return  # the sample in progress may be incomplete: drop it
    last = group.finish()
    if last is not None:
        yield last


class _SampleGrouper:
    """Members -> samples for :func:`iter_shard`: the skip rules, key grouping and field selection.

    ``start(member)`` returns the previous sample when the member begins a new key (complete
    before the member's data is read); ``take(member, reader)`` reads the member's data into the
    current sample when it is wanted; ``finish()`` returns the last sample.
    """

    def __init__(self, shard: str, report: ReadReport, keys: Container[str] | None, exts: Container[str] | None):
        self.shard, self.report, self.keys, self.exts = shard, report, keys, exts
        self.current: Sample | None = None
        self.seen: set[str] = set()
        self.skip_key: str | None = None  # a duplicate (or unwanted) key whose members are being skipped
        self._wanted: str | None = None   # the extension of the member ``take`` should read

    def start(self, m: Any) -> Sample | None:
        self._wanted = None
        report = self.report
        if m.kind not in _REGULAR:
            report.skip(m.name, _SKIP_TYPES.get(m.kind, f"unsupported member type {m.kind!r}"))
            return None
        why = _unsafe(m.name)
        if why:
            report.skip(m.name, why)
            return None
        prefix, _, base = m.name.rpartition("/")
        if "." not in base:
            report.skip(m.name, "member name without extension")
            return None
        stem, ext = base.split(".", 1)
        key, ext = (f"{prefix}/{stem}" if prefix else stem), ext.lower()
        done = None
        if self.current is None or self.current.get("__source_key__", self.current["__key__"]) != key:
            done = self._complete()
            if not self._begin(key):
                return done
        if self.current is None:
            return done  # members of a skipped key
        if ext in self.current:
            report.skip(m.name, "duplicate field in one sample (first kept)")
        elif self.exts is not None and ext not in self.exts:
            pass
        elif m.size > MAX_MEMBER_BYTES:
            report.skip(m.name, f"member larger than {MAX_MEMBER_BYTES} bytes")
        else:
            self._wanted = ext
        return done

    def _complete(self) -> Sample | None:
        done, self.current = self.current, None
        if done is not None:
            self.report.samples += 1
        return done

    def _begin(self, key: str) -> bool:
        """A new key: the current sample unless it is a duplicate or not among ``keys``."""
        if key in self.seen:
            if self.skip_key != key:
                self.report.skip(key, "duplicate key (a later copy, skipped)")
            self.skip_key = key
            return False
        self.seen.add(key)
        self.skip_key = None
        name = safe_key(key)
        if self.keys is not None and name not in self.keys:
            self.skip_key = key
            return False
        self.current = {"__key__": name, "__shard__": self.shard}
        if name != key:
            self.current["__source_key__"] = key
            self.report.renamed += 1
        return True

    def take(self, m: Any, reader: Any) -> None:
        if self._wanted is not None and self.current is not None:
            self.current[self._wanted] = reader.read(m)
        self._wanted = None

    def finish(self) -> Sample | None:
        return self._complete()


def image_of(sample: Sample) -> tuple[str, bytes] | None:
    """``(ext, bytes)`` of a sample's image field (the first of :data:`IMAGE_EXTS` present)."""
    for ext in IMAGE_EXTS:
        data = sample.get(ext)
        if data:
            return ext, data
    return None


def sample_meta(sample: Sample, report: ReadReport | None = None) -> dict[str, Any] | None:
    """The sample's JSON sidecar as a dict: ``{}`` when it has none, None when it is not a plain
    JSON object (invalid UTF-8 or JSON, trailing garbage, nested too deep, an array, a string,
    a number, null); the reason is counted in ``report``. Every stage reads sidecars this way."""
    raw = sample.get("json")
    if raw is None:
        return {}
    try:
        value = json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        why = "nested too deep" if isinstance(e, RecursionError) else type(e).__name__
        if report is not None:
            report.skip(f"{sample.get('__key__')}.json", f"invalid JSON sidecar ({why})")
        return None
    if not isinstance(value, dict):
        if report is not None:
            report.skip(f"{sample.get('__key__')}.json", f"JSON sidecar is not an object ({type(value).__name__})")
        return None
    return value


def iter_keys(
    wanted: Mapping[str, str | os.PathLike],
    reports: list[ReadReport] | None = None,
    exts: Container[str] | None = None,
) -> Iterator[Sample]:
    """Samples for ``key -> shard path``, streaming each shard that holds them once, in shard order.

    The one "fetch these keys" helper. Keys absent from their shard are simply not yielded
    (compare with ``wanted`` to list them); a missing shard file or a read error goes into
    the shard's ``ReadReport`` appended to ``reports``.
    """
    by_shard: dict[str, set[str]] = {}
    for key, shard in wanted.items():
        by_shard.setdefault(str(shard), set()).add(key)
    for shard in sorted(by_shard):
        rep = ReadReport(shard=Path(shard).name)
        if not Path(shard).exists():
            rep.error = "shard file missing"
        else:
            yield from iter_shard(shard, rep, keys=by_shard[shard], exts=exts)
        if reports is not None:
            reports.append(rep)


def zlib_error() -> type[BaseException]:
    import zlib

    return zlib.error


def list_shards(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand a folder, a glob, a brace pattern ``a-{000..009}.tar`` or a list into sorted shard paths."""
    import glob

    from braceexpand import braceexpand

    from .paths import must_exist

    if isinstance(spec, str | os.PathLike):
        specs = [spec]
    else:
        specs = list(spec)
    out: list[Path] = []
    for s in specs:
        s = str(s)
        p = Path(s)
        if p.is_dir():
            out.extend(sorted(p.glob("*.tar")))
            continue
        must_exist(s, fix="give a folder holding *.tar, a shard file, a glob or a brace pattern")  # not "no shards"
        for pat in braceexpand(s):
            hits = sorted(glob.glob(pat))
            if not hits and Path(pat).exists():
                hits = [pat]
            out.extend(Path(h) for h in hits if h.endswith(".tar") and TMP_MARK not in h)
    if not out:
        raise CurateError(f"no .tar shards found at {', '.join(map(str, specs))}",
                          fix="pass a folder holding *.tar, a glob or a brace pattern like 'shards/{000000..000009}.tar'")
    return out


def read_stats(shard: str | os.PathLike) -> dict[str, Any] | None:
    p = stats_path(shard)
    if p.exists():
        return json.loads(p.read_text())
    return None
