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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from curate.paths import cache_dir
from curate.shards import IMAGE_EXTS, ReadReport, image_of, iter_keys

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
    reports: list[ReadReport] = []
    pending: deque[Future] = deque()
    made: set[Path] = set()
    with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="media-writer") as pool:
        paths = {key: shard_dir / shard for key, shard in wanted.items()}
        for sample in iter_keys(paths, reports, exts=IMAGE_EXTS):
            key = sample["__key__"]
            img = image_of(sample)
            if img is None or key in out.paths:
                continue
            ext, data = img
            folder = media_dir / sample["__shard__"].removesuffix(".tar")
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            target = folder / f"{key}.{ext}"
            pending.append(pool.submit(_write_file, target, data))
            while len(pending) > MAX_PENDING:
                pending.popleft().result()
            out.paths[key] = target
            out.sha1[key] = hashlib.sha1(data).hexdigest()
            advance(1)
        while pending:
            pending.popleft().result()
    out.shard_errors = {r.shard: r.error for r in reports if r.error}
    out.missing = sorted(k for k in wanted if k not in out.paths)
    return out
