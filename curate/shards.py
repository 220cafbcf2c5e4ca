"""WebDataset shards: a deterministic, atomic writer and a tolerant reader.

A shard is a plain POSIX tar whose members are ``KEY.EXT``; members sharing a key form one
sample (the WebDataset convention, so ``webdataset.WebDataset``, ``datasets.load_dataset
("webdataset")`` and plain ``tarfile`` all read them). Keys never contain dots or slashes.

Determinism: member headers carry fixed mtime/uid/gid/mode, so the same samples always give
the same bytes. Atomicity: a shard is written to a temp name and renamed when complete, next
to a ``NAME.stats.json`` with its sample count, size and extensions.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def decode_value(ext: str, data: bytes) -> Any:
    """Inverse of :func:`encode_value` for json/npy/txt; images stay bytes."""
    if ext.endswith("json"):
        return json.loads(data)
    if ext == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if ext in ("txt", "cls", "caption"):
        return data.decode("utf-8")
    return data


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


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


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
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        prefix: str = "shard",
        maxcount: int = 10_000,
        maxsize: int = 1 << 30,
        start: int = 0,
        write_stats: bool = True,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.index = start
        self.write_stats = write_stats
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
        name = shard_name(self.prefix, self.index)
        self._tmp = self.folder / f"{name}{TMP_MARK}{os.getpid()}"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
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
    """Write exactly one shard at ``path`` (atomic), whatever its size; returns its stats."""
    path = Path(path)
    if not path.name.endswith(".tar"):
        raise CurateError(f"shard path must end with .tar: {path}")
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    st = ShardStats(shard=path.name)
    keys: set[str] = set()
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                key = check_key(str(sample["__key__"]))
                if key in keys:
                    raise CurateError(f"duplicate key {key!r}", where=str(path))
                keys.add(key)
                for ext, v in sample.items():
                    if ext.startswith("__"):
                        continue
                    _add_member(tar, f"{key}.{ext}", encode_value(ext, v))
                    st.extensions[ext] = st.extensions.get(ext, 0) + 1
                st.count += 1
                st.first_key = st.first_key or key
                st.last_key = key
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        st.bytes = tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    st.extra = dict(extra_stats or {})
    write_json(stats_path(path), st.to_dict())
    return st


@dataclass
class ReadReport:
    """What a tolerant read of one shard saw: samples read and the error that stopped it."""

    shard: str
    samples: int = 0
    error: str | None = None


def iter_shard(path: str | os.PathLike, report: ReadReport | None = None, strict: bool = False) -> Iterator[Sample]:
    """Yield samples (``__key__``, ``__shard__``, ``ext -> bytes``) from one tar, streaming.

    A corrupt or truncated tar stops the iteration after the last complete sample; the
    reason goes into ``report.error`` (or raises ``CurateError`` when ``strict``).
    """
    path = Path(path)
    report = report if report is not None else ReadReport(shard=path.name)
    current: Sample | None = None
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                prefix = os.path.dirname(member.name)
                full_key = f"{prefix}/{key}" if prefix else key
                if current is None or current["__key__"] != full_key:
                    # a new key starts: the previous sample is complete, even if this
                    # member's data turns out to be truncated
                    if current is not None:
                        report.samples += 1
                        yield current
                    current = {"__key__": full_key, "__shard__": path.name}
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} truncated")
                current[ext] = data
            _check_end_of_archive(tar, path)
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
        report.error = f"{type(e).__name__}: {e}"
        if strict:
            raise CurateError(f"corrupt or truncated shard ({report.error})", where=str(path),
                              fix="re-create or remove this shard") from e
        # the sample in progress may be incomplete: drop it
        return
    if current is not None:
        report.samples += 1
        yield current


def _check_end_of_archive(tar: tarfile.TarFile, path: Path) -> None:
    """Raise if an uncompressed tar stops without its zero end-of-archive block.

    ``tarfile`` ends iteration silently when the file is cut at (or inside) a member
    header, so a truncated shard would otherwise read as a shorter valid one whose last
    sample may miss fields.
    """
    if getattr(tar.fileobj, "comptype", "tar") != "tar":
        return  # compressed stream: the decompressor reports truncation itself
    with open(path, "rb") as f:
        f.seek(tar.offset)
        block = f.read(tarfile.BLOCKSIZE)
    if block != tarfile.NUL * tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"truncated or corrupt at byte {tar.offset} (no end-of-archive block)")


def zlib_error() -> type[BaseException]:
    import zlib

    return zlib.error


def list_shards(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand a folder, a glob, a brace pattern ``a-{000..009}.tar`` or a list into sorted shard paths."""
    import glob

    from braceexpand import braceexpand

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
