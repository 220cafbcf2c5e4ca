"""The embedding stage: one task per input shard -> one part of a clip-retrieval embeddings folder.

Each task decodes its shard's images (a background thread decodes and preprocesses the next
batch while the model runs the current one), encodes images and captions, and writes
``img_emb_N.npy``, ``text_emb_N.npy`` and ``metadata_N.parquet`` atomically. Images that
fail to decode are counted and their keys listed in the task's stats, never fatal. Tasks
are resumable through the ledger; workers keep the model loaded between tasks.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CurateError
from ..executor import default_workers, get_executor
from ..fsutil import write_json
from ..images import open_rgb
from ..ledger import Task, run_stage
from ..log import print_table, summary_table
from ..outdir import OutputDir
from ..shards import ReadReport, image_of, iter_shard, list_shards, sample_meta
from .backends import Encoder, cached_model, check_spec_syntax
from .store import INFO_NAME, part_paths, save_npy, save_parquet

logger = logging.getLogger(__name__)
MAX_LISTED_BAD = 200


@dataclass
class EmbedConfig:
    model: str
    batch_size: int = 64
    captions: bool = True
    device: str = "auto"
    threads: int = 0  # torch threads per worker; 0 = cores / workers


def sample_caption(sample: dict[str, Any], report: ReadReport | None = None) -> str | None:
    """Caption from ``txt``/``caption`` members, else the ``caption`` string of the JSON sidecar.

    A sidecar that is not a JSON object, or a caption that is not a string, gives no caption
    and is counted in ``report`` with its reason.
    """
    for ext in ("txt", "caption"):
        if ext in sample:
            return bytes(sample[ext]).decode("utf-8", errors="replace").strip()
    meta = sample_meta(sample, report)
    caption = (meta or {}).get("caption")
    if caption is not None and not isinstance(caption, str):
        if report is not None:
            report.skip(f"{sample.get('__key__')}.json", f"caption is not a string ({type(caption).__name__})")
        return None
    return caption


def _decoded(shard: Path, encoder: Encoder, report: ReadReport, bad: list[str]) -> Iterator[tuple[str, Any, str | None]]:

    for s in iter_shard(shard, report):
        key = s["__key__"]
        img = image_of(s)
        if img is None:
            bad.append(key)
            report.skip(key, "no image field")
            continue
        data = img[1]
        try:
            tensor = encoder.preprocess(open_rgb(data))
        except Exception as e:  # noqa: BLE001 - a broken image is data: count it, skip it
            bad.append(key)
            report.skip(key, f"undecodable image ({type(e).__name__})")
            continue
        yield key, tensor, sample_caption(s, report)


def _prefetch(it: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run ``it`` in a thread, ``depth`` items ahead (decode overlaps the forward pass)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    err: list[BaseException] = []

    def work() -> None:
        try:
            for item in it:
                q.put(item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            err.append(e)
        finally:
            q.put(end)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    while (item := q.get()) is not end:
        yield item
    t.join()
    if err:
        raise err[0]


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_shard_task(task: Task) -> dict[str, Any]:
    """Executor task: embed one shard into part ``suffix`` of ``out``."""
    import polars as pl
    import torch

    a = task.args
    cfg = EmbedConfig(**a["config"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder = cached_model(cfg.model, cfg.device)
    shard, out, suffix = Path(a["shard"]), Path(a["out"]), a["suffix"]
    report = ReadReport(shard=shard.name)
    bad: list[str] = []
    keys: list[str] = []
    captions: list[str | None] = []
    img_parts: list[np.ndarray] = []
    for batch in _prefetch(_batches(_decoded(shard, encoder, report, bad), cfg.batch_size)):
        keys.extend(k for k, _, _ in batch)
        captions.extend(c for _, _, c in batch)
        img_parts.append(encoder.encode_image_tensors(torch.stack([t for _, t, _ in batch])))
    img = np.concatenate(img_parts) if img_parts else np.zeros((0, encoder.dim), np.float32)
    img_path, meta_path = part_paths(out, suffix, "img")
    outputs = [img_path, meta_path]
    have_text = [i for i, c in enumerate(captions) if c]
    n_text = 0
    if cfg.captions and have_text:
        txt = np.zeros_like(img)
        txt[have_text] = encoder.encode_texts([captions[i] for i in have_text])  # type: ignore[misc]
        txt_path, _ = part_paths(out, suffix, "text")
        save_npy(txt_path, txt)
        outputs.append(txt_path)
        n_text = len(have_text)
    save_npy(img_path, img)
    meta = pl.DataFrame({
        "image_path": keys,
        "caption": [c or "" for c in captions],
        "key": keys,
        "shard": [shard.name] * len(keys),
        "shard_path": [str(shard.resolve())] * len(keys),
    }, schema={"image_path": pl.Utf8, "caption": pl.Utf8, "key": pl.Utf8, "shard": pl.Utf8, "shard_path": pl.Utf8})
    save_parquet(meta_path, meta)
    stats = {"items": len(keys), "texts": n_text, "bad_images": len(bad), "bad_keys": bad[:MAX_LISTED_BAD],
             "read_error": report.error, "shard": shard.name, "part": suffix, "dim": int(img.shape[1]),
             "skipped": dict(report.skipped), "renamed_keys": report.renamed}
    return {"outputs": [str(p.relative_to(out)) for p in outputs], "stats": stats}


def part_suffixes(n: int) -> list[str]:
    """Zero-padded like clip-retrieval (width = digits of the part count), so names sort in order."""
    width = len(str(max(n - 1, 0)))
    return [str(i).zfill(width) for i in range(n)]


def embed_shards(
    shards: str | os.PathLike | list,
    out: str | os.PathLike,
    config: EmbedConfig,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Embed every shard into ``out`` (clip-retrieval layout); returns the embeddings.json content."""
    check_spec_syntax(config.model)
    if config.batch_size < 1:
        raise CurateError(f"--batch-size must be at least 1, got {config.batch_size}")
    paths = list_shards(shards)
    out = Path(out)
    n_workers = workers or default_workers()
    n_workers = max(1, min(n_workers, len(paths)))
    if not config.threads:
        config.threads = max(1, default_workers() // n_workers)
    if n_workers == 1 and executor == "local":
        cached_model(config.model, config.device)  # fail fast, in-process, before any task
    # batch size, device and threads do not change the vectors: a rerun with other values resumes
    run_cfg = {"shards": [str(p.resolve()) for p in paths], "model": config.model, "captions": config.captions}
    with OutputDir(out, "embed", run_cfg, overwrite=overwrite):
        tasks = [Task(id=f"{suffix}-{p.name}", args={"shard": str(p), "out": str(out), "suffix": suffix,
                                                      "config": asdict(config)})
                 for p, suffix in zip(paths, part_suffixes(len(paths)), strict=True)]
        ex = get_executor(executor, workers=n_workers, address=address)
        try:
            res = run_stage("embed", embed_shard_task, tasks, out, executor=ex, unit="shards")
        finally:
            ex.close()
        print_table(summary_table([res.summary], title="curate embed"))
        stats = [res.records[t.id].get("stats", {}) for t in tasks if t.id in res.records]
        merged = res.stats
        info = {
            "model": config.model,
            "dim": max((s.get("dim", 0) for s in stats), default=0),
            "counts": {
                "shards": len(tasks),
                "images": int(merged.get("items", 0)),
                "texts": int(merged.get("texts", 0)),
                "bad_images": int(merged.get("bad_images", 0)),
                "unreadable_shards": sum(1 for s in stats if s.get("read_error")),
            },
            "bad_keys": [k for s in stats for k in s.get("bad_keys", [])][:MAX_LISTED_BAD],
            "read_errors": {s["shard"]: s["read_error"] for s in stats if s.get("read_error")},
            "skipped": dict(sorted(merged.get("skipped", {}).items())),
            "renamed_keys": int(merged.get("renamed_keys", 0)),
            "failed_shards": {tid: err.splitlines()[0] for tid, err in sorted(res.errors.items())},
            "layout": "clip-retrieval",
        }
        write_json(out / INFO_NAME, info)  # also when shards failed: the summary lists them
        if res.errors:
            first_id, first = next(iter(res.errors.items()))
            raise CurateError(f"{len(res.errors)} of {len(tasks)} shard(s) failed, e.g. {first_id}: "
                              f"{first.splitlines()[0]} (listed in {INFO_NAME})",
                              where=str(out), fix="fix the cause and rerun the same command; finished shards are kept")
        if info["counts"]["bad_images"]:
            logger.warning("%d image(s) failed to decode and were skipped (keys in %s)",
                           info["counts"]["bad_images"], out / INFO_NAME)
        return info
