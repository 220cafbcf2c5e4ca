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
  files are read when opened. A reader that already holds the encoded image (read with its
  labels) hands it over with :meth:`ImageStore.keep`.
- :meth:`ImageStore.decoded`: one in-process pass that decodes as it reads and keeps nothing
  (features encoded once: CIR's galleries): files first, then shards in shard order.

``files`` maps a key to a file anywhere (a benchmark's gallery, an image folder's classes);
``folder`` serves every path under one folder. Every image is decoded by :func:`decode_image`
(``curate.images.open_rgb`` at the size the model needs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

from curate.errors import CurateError
from curate.images import open_rgb
from curate.shards import IMAGE_EXTS, Sample, image_of, iter_keys

from . import ShardDataset, consumer_of, consumer_range

log = logging.getLogger(__name__)


def decode_image(data: bytes, size: int | None = None, fit: str = "short", what: str = "") -> Any:
    """``data`` as an RGB PIL image (``curate.images.open_rgb``: a JPEG at the DCT scale that still
    covers ``size``), or None when it does not decode (logged with ``what``)."""
    try:
        return open_rgb(data, size, fit)
    except (OSError, ValueError) as e:
        log.debug("%s: undecodable image (%s)", what or "image", e)
        return None


@dataclass
class ImageStore:
    """The images of the dataset at ``root``: files (``files`` by key, or any path under ``folder``),
    or ``shards`` by key."""

    root: Path
    folder: Path | None = None                               # files: key = path under it
    shards: dict[str, Path] = field(default_factory=dict)    # shards: key -> shard path
    files: dict[str, Path] = field(default_factory=dict)     # files anywhere: key -> path
    _bytes: dict[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def of_dataset(cls, root: Path, rows: Any) -> ImageStore:
        """The images of a curate dataset's manifest ``rows`` (``key``, ``shard``): ``root/shards/SHARD``."""
        return cls(root, shards={str(k): root / "shards" / str(s) for k, s in rows.select("key", "shard").iter_rows()})

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
        wanted = [k for k in keys if k not in self._bytes and k not in self.files]
        for sample in iter_keys({k: self.shards[k] for k in wanted if k in self.shards}):
            img = image_of(sample)
            if img is not None:
                self._bytes[sample["__key__"]] = img[1]
        return sum(1 for k in wanted if k not in self._bytes)

    def __contains__(self, key: object) -> bool:
        """Whether ``key``'s image can be read now: held (loaded, kept) or an existing file."""
        path = self.file(key) if isinstance(key, str) and key not in self._bytes else None
        return key in self._bytes or (path is not None and path.is_file())

    def keep(self, key: str, data: bytes) -> None:
        """Hold the encoded image of ``key``, read by its reader with the labels (served before files)."""
        self._bytes[key] = data

    def file(self, key: str) -> Path | None:
        """The file that holds ``key``'s image, if the store has files."""
        path = self.files.get(key)
        return path if path is not None or self.folder is None else self.folder / key

    def read(self, key: str) -> bytes:
        """The encoded image of ``key`` (a shard image must be :meth:`load`-ed first)."""
        raw = self._bytes.get(key)
        path = self.file(key) if raw is None else None
        if path is not None:
            return path.read_bytes()
        if raw is None:
            raise CurateError(f"image {key} not loaded", where=str(self.root))
        return raw

    def open(self, key: str, size: int | None = None, fit: str = "short") -> Any:
        """The decoded RGB image of ``key`` through ``curate.images.open_rgb``: ``size`` lets a JPEG
        decode at a DCT scale that still covers it (None: full size)."""
        return open_rgb(self.read(key), size, fit)

    def decoded(self, keys: Iterable[str], size: int | None = None, fit: str = "short",
                full: Container[str] = ()) -> Iterator[tuple[str, Any]]:
        """``(key, RGB image)`` for every key with a decodable image, decoded as read, nothing kept.

        Kept images and files come first, in the order of ``keys``; a key whose file is missing or
        does not decode is then looked for in its shard (shards in order, ``iter_keys``). ``full``:
        keys decoded at full size whatever ``size`` (an image cropped before it is resized).
        A key with no image anywhere is simply absent."""
        left = []
        for key in dict.fromkeys(keys):
            img = self._decode_held(key, None if key in full else size, fit)
            if img is None:
                left.append(key)
                continue
            yield key, img
        for sample in iter_keys({k: self.shards[k] for k in left if k in self.shards}):
            key, img = sample["__key__"], image_of(sample)
            decoded = decode_image(img[1], None if key in full else size, fit, key) if img else None
            if decoded is not None:
                yield key, decoded

    def _decode_held(self, key: str, size: int | None, fit: str) -> Any:
        data, path = self._bytes.get(key), self.file(key)
        if data is None and path is not None and path.is_file():
            try:
                data = path.read_bytes()
            except OSError as e:
                log.warning("%s: unreadable image (%s)", path, e)
        img = decode_image(data, size, fit, key) if data is not None else None
        if data is not None and img is None:
            log.warning("%s: unreadable image", path if path is not None else key)
        return img


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
