"""Where a dataset's images are: the one way a trainer reaches an image, by key.

An :class:`ImageStore` holds a dataset's images either in shards (a curate dataset: key ->
shard, read through :class:`~training.data.ShardDataset` and ``curate.shards.iter_keys``) or as
files under a folder (the standard CZSL layout, ``ROOT/images/<key>``). Files are served in the
shard sample shape (``__key__`` + ``ext -> bytes``), so whatever decodes a sample decodes both.

- :meth:`ImageStore.samples`: one streaming pass over many images (feature extraction): an
  ``IterableDataset`` split over torchrun ranks x DataLoader workers by sample ranges
  (:class:`~training.data.ShardDataset` for shards, :class:`FileSamples` for files).
- :meth:`ImageStore.load` then :meth:`ImageStore.open`: random access (online training draws
  partners anywhere in the split): shard samples are read once and kept encoded in memory;
  files are read when opened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

from curate.errors import CurateError
from curate.images import open_rgb
from curate.shards import IMAGE_EXTS, Sample, image_of, iter_keys

from . import ShardDataset, consumer_of, consumer_range

log = logging.getLogger(__name__)


@dataclass
class ImageStore:
    """The images of the dataset at ``root``: files under ``folder``, or ``shards`` by key."""

    root: Path
    folder: Path | None = None                               # files: key = path under it
    shards: dict[str, Path] = field(default_factory=dict)    # shards: key -> shard path
    _bytes: dict[str, bytes] = field(default_factory=dict, repr=False)

    def samples(self, keys: Iterable[str], decode: Callable[[Sample], Any] | None = None,
                rank: int | None = None, world_size: int | None = None) -> IterableDataset:
        """The samples of ``keys`` (this consumer's share), each through ``decode``."""
        keys = list(keys)
        if self.folder is not None:
            return FileSamples(self.folder, keys, decode=decode, rank=rank, world_size=world_size)
        shards = sorted({self.shards[k] for k in keys})
        return ShardDataset(shards, keys=keys, decode=decode, rank=rank, world_size=world_size)

    def load(self, keys: Iterable[str]) -> int:
        """Keep the encoded images of ``keys`` for :meth:`open` (shards); how many are missing
        (a key of no shard, or absent from its shard)."""
        if self.folder is not None:
            return 0
        wanted = [k for k in keys if k not in self._bytes]
        for sample in iter_keys({k: self.shards[k] for k in wanted if k in self.shards}):
            img = image_of(sample)
            if img is not None:
                self._bytes[sample["__key__"]] = img[1]
        return sum(1 for k in wanted if k not in self._bytes)

    def read(self, key: str) -> bytes:
        """The encoded image of ``key`` (a shard image must be :meth:`load`-ed first)."""
        raw = self._bytes.get(key)
        if raw is None and self.folder is not None:
            return (self.folder / key).read_bytes()
        if raw is None:
            raise CurateError(f"image {key} not loaded", where=str(self.root))
        return raw

    def open(self, key: str, size: int | None = None, fit: str = "short") -> Any:
        """The decoded RGB image of ``key`` through ``curate.images.open_rgb``: ``size`` lets a JPEG
        decode at a DCT scale that still covers it (None: full size)."""
        return open_rgb(self.read(key), size, fit)


class FileSamples(IterableDataset):
    """Files under ``folder`` as shard-shaped samples (``__key__``, ``ext -> bytes``), in the
    order of ``keys``, split over ranks x workers by sample ranges as :class:`ShardDataset` is.
    An unreadable file is a sample without an image field (``decode`` decides what it means)."""

    def __init__(self, folder: Path, keys: list[str], *, decode: Callable[[Sample], Any] | None = None,
                 rank: int | None = None, world_size: int | None = None):
        self.folder, self.keys, self.decode = folder, keys, decode
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Any]:
        me, consumers = consumer_of(self.rank, self.world_size)
        lo, hi = consumer_range(len(self.keys), me, consumers)
        for key in self.keys[lo:hi]:
            sample: Sample = {"__key__": key}
            try:
                ext = Path(key).suffix.lower().lstrip(".")  # the field name only; PIL reads the content
                sample[ext if ext in IMAGE_EXTS else "jpg"] = (self.folder / key).read_bytes()
            except OSError as e:
                log.debug("unreadable image %s: %s", key, e)
            item = self.decode(sample) if self.decode is not None else sample
            if item is not None:
                yield item
