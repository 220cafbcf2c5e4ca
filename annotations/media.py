"""Extracting images from shards into a media folder: FiftyOne needs one file per image.

Shards are read sequentially, each once, and only the keys asked for are written (a re-sync
asks only for keys FiftyOne does not hold yet, or whose image moved). Files are written with bare ``os.open`` /
``os.write``, no temp name, no fsync: creating files dominates the sync's cost, and the folder
is a cache rebuilt from shards. A file half-written by a killed run belongs to a key that was
never inserted, so the next sync asks for it again and overwrites it.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from curate.paths import cache_dir
from curate.shards import IMAGE_EXTS, ReadReport, image_of, iter_keys

WRITER_THREADS = 4  # file creation waits on the filesystem, not the GIL: overlap it with tar parsing
BATCH = 64          # files per writer task
MAX_PENDING = 16    # batches in flight (bounds the image bytes held in memory)


def default_media_dir(name: str) -> Path:
    """``CACHE/review/NAME/media``: outside the dataset folder, which may be read-only."""
    return cache_dir() / "review" / name / "media"


@dataclass
class Extracted:
    """Where each key's image went (a path string), plus what could not be found."""

    paths: dict[str, str] = field(default_factory=dict)
    sha1: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    shard_errors: dict[str, str] = field(default_factory=dict)
    reused: set[str] = field(default_factory=set)  # keys whose earlier file was kept (``keep``)


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _write_batch(batch: list[tuple[str, str, bytes]]) -> list[tuple[str, str]]:
    """Write a batch of files and hash their bytes (both release the GIL); returns ``(key, sha1)``."""
    out = []
    for key, path, data in batch:
        _write_file(path, data)
        out.append((key, hashlib.sha1(data).hexdigest()))
    return out


def extract_images(
    shard_dir: Path,
    wanted: dict[str, str],
    media_dir: Path,
    advance: Callable[[int], None] = lambda n: None,
    keep: dict[str, tuple[str, str]] | None = None,
) -> Extracted:
    """Write the image of every ``key -> shard`` in ``wanted`` to ``media_dir/SHARD_STEM/KEY.EXT``.

    ``keep`` maps keys to the ``(path, sha1)`` of a file extracted earlier: when that file still
    exists and the shard's image has the same SHA-1, it is reused, not written again (a re-sync
    after the shards were renamed). The shards are parsed sequentially in this thread; files are
    written and hashed in batches by a few threads (no per-file task, path object or fsync).
    """
    keep = keep or {}
    out = Extracted()
    reports: list[ReadReport] = []
    pending: deque[Future] = deque()
    made: set[str] = set()
    batch: list[tuple[str, str, bytes]] = []
    shard_paths = {shard: str(shard_dir / shard) for shard in set(wanted.values())}

    def collect(future: Future) -> None:
        out.sha1.update(future.result())

    with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="media-writer") as pool:
        for sample in iter_keys({key: shard_paths[shard] for key, shard in wanted.items()}, reports,
                                exts=IMAGE_EXTS):
            key = sample["__key__"]
            img = image_of(sample)
            if img is None or key in out.paths:
                continue
            ext, data = img
            if key in keep:
                sha1 = hashlib.sha1(data).hexdigest()
                if keep[key][1] == sha1 and os.path.exists(keep[key][0]):
                    out.paths[key], out.sha1[key] = keep[key][0], sha1
                    out.reused.add(key)
                    advance(1)
                    continue
            folder = os.path.join(media_dir, sample["__shard__"].removesuffix(".tar"))
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            target = f"{folder}/{key}.{ext}"
            batch.append((key, target, data))
            out.paths[key] = target
            if len(batch) >= BATCH:
                pending.append(pool.submit(_write_batch, batch))
                batch = []
                while len(pending) > MAX_PENDING:
                    collect(pending.popleft())
            advance(1)
        if batch:
            pending.append(pool.submit(_write_batch, batch))
        while pending:
            collect(pending.popleft())
    out.shard_errors = {r.shard: r.error for r in reports if r.error}
    out.missing = sorted(k for k in wanted if k not in out.paths)
    return out
