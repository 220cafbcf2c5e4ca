"""The fed embedding path: decode worker processes keep one model per device busy.

Why: on a GPU the forward pass of a CLIP ViT is faster than one CPU core can decode and resize
JPEGs, so decoding in the model's process (or in a thread beside it) leaves the GPU idle most
of the time. Here a ``torch.utils.data.DataLoader`` sits between the shard and the model:

- its *sampler is the shard reader*: ``curate.shards.iter_shard`` runs once, in this process
  (one pass over the tar, one ``ReadReport``), and hands each batch's image bytes to the
  loader, which sends them to ``--decode-workers`` worker processes (one torch thread each);
- the workers decode and preprocess, and the tensors come back in shard order, in pinned
  memory on CUDA (the loader's pin thread), so the copy to the device is non-blocking;
- the forward pass runs under fp16/bf16 autocast (``--precision``), and at most
  :data:`IN_FLIGHT` batches are queued on the device before the oldest result is fetched: the
  next batch's copy and kernels are queued while the previous batch still computes.

Batches hold exactly ``batch_size`` decoded images in shard order (images that fail to decode
are taken out and the rest re-batched), the batches the in-process path forms, so on CPU in
fp32 both paths compute the same vectors. One loader per process is kept (persistent workers):
a process embedding many shards forks its decode workers once.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..executor import worker_init
from ..images import DEFAULT_DECODE
from ..shards import ReadReport, image_of, iter_shard
from .backends import Encoder, _normalise

logger = logging.getLogger(__name__)
IN_FLIGHT = 2  # batches queued on the device before the oldest one's result is fetched
Caption = Callable[[dict[str, Any], ReadReport], "str | None"]


@dataclass
class _Item:
    """What the reader learned about one sample, kept (in shard order) until its image comes back."""

    key: str
    has_image: bool
    caption: str | None = None
    caption_skips: list[tuple[str, str]] = field(default_factory=list)


class ShardSampler:
    """The loader's sampler: reads the current shard and yields each batch's image bytes.

    Runs in the consuming process when the loader asks for the next batch (it stays a few
    batches ahead). Samples without an image are not sent to the workers; their place in the
    shard order is kept in :attr:`items`, with each sample's caption.
    """

    def __init__(self, batch_size: int, caption: Caption):
        self.batch_size = batch_size
        self.caption = caption
        self.shard: Path | None = None
        self.report = ReadReport(shard="")
        self.items: deque[_Item] = deque()

    def start(self, shard: Path, report: ReadReport) -> None:
        self.shard, self.report = shard, report
        self.items.clear()

    def __iter__(self) -> Iterator[list[bytes]]:
        if self.shard is None:
            return
        batch: list[bytes] = []
        for s in iter_shard(self.shard, self.report):
            img = image_of(s)
            item = _Item(s["__key__"], img is not None)
            if img is not None:
                scratch = ReadReport(shard=self.report.shard)  # counted only if the image decodes
                item.caption = self.caption(s, scratch)
                item.caption_skips = list(scratch.examples)
                batch.append(img[1])
            self.items.append(item)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


class DecodeBatch(Dataset):
    """Map-style dataset whose "index" is a batch of image bytes: decoded and preprocessed in a worker.

    Returns ``(tensor [n_ok, C, H, W], errors)`` with one entry per image: None when it decoded,
    else the reason (the image is then left out of the tensor).
    """

    def __init__(self, pixels: Callable[[bytes], Any]):
        self.pixels = pixels

    def __getitem__(self, images: list[bytes]) -> tuple[torch.Tensor, list[str | None]]:  # type: ignore[override]
        tensors: list[torch.Tensor] = []
        errors: list[str | None] = []
        for data in images:
            try:
                tensors.append(self.pixels(data))
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - a broken image is data: counted by the consumer
                errors.append(f"undecodable image ({type(e).__name__})")
        return (torch.stack(tensors) if tensors else torch.zeros(0)), errors


def _identity(x: Any) -> Any:
    return x


@dataclass
class Feed:
    loader: DataLoader
    sampler: ShardSampler


_FEEDS: dict[tuple, Feed] = {}


def feed_for(encoder: Encoder, batch_size: int, decode_workers: int, caption: Caption,
             decode: str = DEFAULT_DECODE) -> Feed:
    """This process's loader for ``encoder`` (created once; its workers persist between shards)."""
    pin = str(encoder.device).startswith("cuda")
    key = (id(encoder), batch_size, decode_workers, pin, decode)
    if key not in _FEEDS:
        sampler = ShardSampler(batch_size, caption)
        kwargs: dict[str, Any] = {}
        if decode_workers > 0:
            # fork: the workers inherit the preprocessing without pickling the model it may be bound to
            ctx = "fork" if "fork" in mp.get_all_start_methods() else None
            kwargs = {"persistent_workers": True, "prefetch_factor": 2, "multiprocessing_context": ctx}
        loader = DataLoader(DecodeBatch(partial(encoder.pixels, decode=decode)), batch_size=None, sampler=sampler,
                            num_workers=decode_workers, collate_fn=_identity, pin_memory=pin,
                            worker_init_fn=worker_init(), **kwargs)
        _FEEDS[key] = Feed(loader, sampler)
    return _FEEDS[key]


def close_feeds() -> None:
    """Stop every persistent decode worker of this process."""
    for feed in _FEEDS.values():
        it = getattr(feed.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
    _FEEDS.clear()


@dataclass
class FedResult:
    keys: list[str]
    captions: list[str | None]
    images: np.ndarray
    bad: list[str]


class _Batcher:
    """Decoded rows in, batches of exactly ``size`` rows out, forwarded with at most IN_FLIGHT queued."""

    def __init__(self, encoder: Encoder, size: int, precision: str):
        self.encoder, self.size, self.precision = encoder, size, precision
        self.pin = str(encoder.device).startswith("cuda")
        self.carry: list[torch.Tensor] = []
        self.carried = 0
        self.pending: deque[tuple[torch.Tensor, Any]] = deque()  # (result, its copy's CUDA event or None)
        self.parts: list[np.ndarray] = []

    def add(self, pixels: torch.Tensor) -> None:
        if not self.carry and pixels.shape[0] == self.size:
            self._forward(pixels)  # the common case: the loader's batch as it came (pinned)
            return
        if pixels.shape[0]:
            self.carry.append(pixels)
            self.carried += pixels.shape[0]
        while self.carried >= self.size:
            rows = torch.cat(self.carry)
            self._forward(self._pinned(rows[:self.size]))
            rest = rows[self.size:]
            self.carry = [rest] if rest.shape[0] else []
            self.carried = rest.shape[0]

    def finish(self, dim: int) -> np.ndarray:
        if self.carried:
            self._forward(self._pinned(torch.cat(self.carry)))
            self.carry, self.carried = [], 0
        while self.pending:
            self._collect()
        return np.concatenate(self.parts) if self.parts else np.zeros((0, dim), np.float32)

    def _pinned(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.contiguous().pin_memory() if self.pin and not rows.is_cuda else rows.contiguous()

    def _forward(self, pixels: torch.Tensor) -> None:
        feats = self.encoder.image_features(pixels, self.precision)
        if self.pin:
            # the result's copy is queued right behind its own kernels, into pinned memory, with an
            # event: fetching it later waits for that batch only, not for the batches queued after it
            with torch.inference_mode():
                host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
                host.copy_(feats, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(feats.device))
            self.pending.append((host, done))
        else:
            self.pending.append((feats, None))
        if len(self.pending) > IN_FLIGHT:
            self._collect()

    def _collect(self) -> None:
        result, done = self.pending.popleft()
        if done is not None:
            done.synchronize()
        self.parts.append(_normalise(result))


_GPU_CHOICE: dict[tuple, bool] = {}  # --gpu-decode auto: the probe's answer, per encoder and decode mode


def _pixel_batches(feed: Feed, encoder: Encoder, decode: str, gpu_decode: str,
                   decode_workers: int) -> Iterator[tuple[torch.Tensor, list[str | None]]]:
    """The shard's ``(pixels, errors)`` batches: from the decode workers, or decoded on the GPU
    (:mod:`curate.embed.gpu_decode`) when ``gpu_decode`` says so (auto: the first batch this
    process sees is timed both ways; that shard then finishes on the GPU decoder)."""
    from .gpu_decode import choose, gpu_decoder

    decoder = gpu_decoder(encoder, decode) if gpu_decode != "off" else None
    key = (id(encoder), decode)
    if decoder is None or _GPU_CHOICE.get(key) is False:
        yield from feed.loader
        return
    batches = iter(feed.sampler)
    if gpu_decode == "auto" and key not in _GPU_CHOICE:
        first = next(batches, None)
        if first is None:
            return
        _GPU_CHOICE[key] = choose(decoder, partial(encoder.pixels, decode=decode), first, decode_workers)
        yield decoder(first)
    for images in batches:
        yield decoder(images)


def embed_fed(shard: Path, encoder: Encoder, report: ReadReport, batch_size: int, precision: str,
              decode_workers: int, caption: Caption, decode: str = DEFAULT_DECODE,
              gpu_decode: str = "auto") -> FedResult:
    """Image embeddings of one shard through the decode workers (see the module docstring), or
    through the GPU's JPEG decoder (``gpu_decode``; CUDA only).

    Keys, captions, bad keys and ``report`` come out exactly as the in-process path makes them.
    """
    feed = feed_for(encoder, batch_size, decode_workers, caption, decode)
    feed.sampler.start(shard, report)
    items = feed.sampler.items
    out = FedResult([], [], np.zeros((0, encoder.dim), np.float32), [])
    batcher = _Batcher(encoder, batch_size, precision)

    def no_image(item: _Item) -> None:
        out.bad.append(item.key)
        report.skip(item.key, "no image field")

    try:
        for pixels, errors in _pixel_batches(feed, encoder, decode, gpu_decode, decode_workers):
            for err in errors:
                while not items[0].has_image:
                    no_image(items.popleft())
                item = items.popleft()
                if err:
                    out.bad.append(item.key)
                    report.skip(item.key, err)
                    continue
                out.keys.append(item.key)
                out.captions.append(item.caption)
                for member, reason in item.caption_skips:
                    report.skip(member, reason)
            batcher.add(pixels)
    except BaseException:
        close_feeds()  # a loader stopped mid-shard is not reused
        raise
    while items:
        no_image(items.popleft())
    out.images = batcher.finish(encoder.dim)
    return out
