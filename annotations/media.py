"""Extracting images from shards into a media folder: FiftyOne needs one file per image.

Shards are read sequentially, each once, and only the keys asked for are written (a re-sync
asks only for keys FiftyOne does not hold yet). Files are written with bare ``os.open`` /
``os.write``, no temp name, no fsync: creating files dominates the sync's cost, and the folder
is a cache rebuilt from shards. A file half-written by a killed run belongs to a key that was
never inserted, so the next sync asks for it again and overwrites it.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from curate.paths import cache_dir
from curate.shards import ReadReport, iter_shard

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
WRITER_THREADS = 4  # file creation waits on the filesystem, not the GIL: overlap it with tar parsing
MAX_PENDING = 512


def default_media_dir(name: str) -> Path:
    """``CACHE/review/NAME/media``: outside the dataset folder, which may be read-only."""
    return cache_dir() / "review" / name / "media"


@dataclass
class Extracted:
    """Where each key's image went, plus what could not be found."""

    paths: dict[str, Path] = field(default_factory=dict)
    sha1: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    shard_errors: dict[str, str] = field(default_factory=dict)


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def iter_plain_tar(path: Path) -> Iterator[tuple[str, str, bytes]] | None:
    """``(key, ext, data)`` straight from the 512-byte headers of an uncompressed ustar shard.

    Why: ``tarfile``'s stream mode spends most of a sync parsing headers. Our shards are plain
    ustar with flat ``KEY.EXT`` names (curate.shards writes them so); for anything else
    (compressed, pax/GNU long names, folders) this returns None and the caller uses
    :func:`curate.shards.iter_shard`. A truncated shard raises ``ValueError``.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    if len(head) < 512 or head[257:262] != b"ustar":
        return None
    return _plain_members(path)


def _plain_members(path: Path) -> Iterator[tuple[str, str, bytes]]:
    with open(path, "rb", buffering=1 << 20) as f:
        while True:
            head = f.read(512)
            if len(head) < 512:
                raise ValueError("truncated header")
            if head == _ZERO_BLOCK:
                return
            if head[257:262] != b"ustar" or head[156:157] not in (b"0", b"\0") or head[345:346] != b"\0":
                raise _NotPlain
            name = head[:100].split(b"\0", 1)[0].decode("utf-8")
            size = int(head[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"member {name} truncated")
            f.seek((-size) % 512, os.SEEK_CUR)
            if "/" in name or "." not in name:
                raise _NotPlain
            key, ext = name.split(".", 1)
            yield key, ext, data


class _NotPlain(Exception):
    """A member this fast reader does not handle; the caller falls back to tarfile."""


_ZERO_BLOCK = bytes(512)


def iter_images(path: Path, report: ReadReport) -> Iterator[tuple[str, str, bytes]]:
    """``(key, ext, image bytes)`` per sample of one shard: the fast reader, else ``iter_shard``."""
    plain = iter_plain_tar(path)
    seen: set[str] = set()
    if plain is not None:
        try:
            for key, ext, data in plain:
                if ext in IMAGE_EXTS and key not in seen:
                    seen.add(key)
                    yield key, ext, data
            return
        except ValueError as e:
            report.error = f"truncated shard ({e})"
            return
        except (_NotPlain, UnicodeDecodeError):
            pass  # fall through: tarfile handles it (samples already yielded are skipped)
    for sample in iter_shard(path, report):
        img = _image_of(sample)
        if img is not None and sample["__key__"] not in seen:
            yield sample["__key__"], img[0], img[1]


def _image_of(sample: dict) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTS:
        data = sample.get(ext)
        if data:
            return ext, data
    return None


def extract_images(
    shard_dir: Path,
    wanted: dict[str, str],
    media_dir: Path,
    advance: Callable[[int], None] = lambda n: None,
) -> Extracted:
    """Write the image of every ``key -> shard`` in ``wanted`` to ``media_dir/SHARD_STEM/KEY.EXT``.

    The shards are parsed sequentially in this thread; the file writes go to a few threads.
    """
    out = Extracted()
    by_shard: dict[str, set[str]] = {}
    for key, shard in wanted.items():
        by_shard.setdefault(shard, set()).add(key)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="media-writer") as pool:
        for shard in sorted(by_shard):
            keys = by_shard[shard]
            folder = media_dir / Path(shard).name.removesuffix(".tar")
            folder.mkdir(parents=True, exist_ok=True)
            path = shard_dir / shard
            report = ReadReport(shard=shard)
            if path.exists():
                for key, ext, data in iter_images(path, report):
                    if key not in keys:
                        continue
                    target = folder / f"{key}.{ext}"
                    pending.append(pool.submit(_write_file, target, data))
                    while len(pending) > MAX_PENDING:
                        pending.popleft().result()
                    out.paths[key] = target
                    out.sha1[key] = hashlib.sha1(data).hexdigest()
                    advance(1)
            else:
                report.error = "shard file missing"
            if report.error:
                out.shard_errors[shard] = report.error
            out.missing.extend(sorted(keys - out.paths.keys()))
        while pending:
            pending.popleft().result()
    return out
