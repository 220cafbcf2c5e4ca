"""The embedding stage: one task per input shard -> one part of a clip-retrieval embeddings folder.

Each task decodes its shard's images, encodes images and captions, and writes
``img_emb_N.npy``, ``text_emb_N.npy`` and ``metadata_N.parquet`` atomically. Images that
fail to decode are counted and their keys listed in the task's stats, never fatal. Tasks
are resumable through the ledger; workers keep the model loaded between tasks.

Two ways to feed the model, same outputs:

- **CPU** (default): ``--workers`` processes, each with its own model and ``cores / workers``
  torch threads, in fp32; a background thread decodes and preprocesses the next batch while
  the model runs the current one (a decode process instead when the model has several threads,
  see :func:`auto_decode_workers`).
- **CUDA** (and CPU with ``--decode-workers N``): one process per GPU, each with one model fed
  by ``--decode-workers`` decode processes through a DataLoader, pinned memory, non-blocking
  copies and fp16/bf16 autocast (``--precision``); see :mod:`curate.embed.loader`. Shards are
  split between the GPU processes by the executor; each process takes its GPU with a lock
  (:mod:`curate.embed.devices`).
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
from ..fingerprint import fingerprint, model_fingerprint
from ..fsutil import write_json
from ..images import DEFAULT_DECODE, check_decode
from ..ledger import Task, run_stage
from ..log import print_table, summary_table
from ..outdir import OutputDir
from ..shards import ReadReport, image_of, iter_shard, list_shards, sample_meta
from .backends import PRECISIONS, Encoder, cached_model, check_model_available, resolve_precision
from .devices import embed_devices, lock_dir
from .gpu_decode import check_gpu_decode
from .store import INFO_NAME, STORE_DTYPES, part_paths, save_npy, save_parquet

logger = logging.getLogger(__name__)
MAX_LISTED_BAD = 200


@dataclass
class EmbedConfig:
    model: str
    batch_size: int = 64
    captions: bool = True
    device: str = "auto"  # auto | cpu | cuda (every GPU) | cuda:N | cuda:0,1 | another torch device
    threads: int = 0  # torch threads per worker; 0 = cores / workers
    decode_workers: int = -1  # decode processes per model; -1 = auto (see auto_decode_workers)
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 elsewhere) | fp32 | fp16 | bf16 (autocast)
    dtype: str = "float32"  # stored embeddings: float32 | float16 (clip-retrieval's)
    decode: str = DEFAULT_DECODE  # fast (JPEG DCT scaling to the model's size) | exact (full-size decode)
    gpu_decode: str = "auto"  # CUDA: decode JPEGs on the GPU: auto (when faster) | on | off (gpu_decode.py)


MAX_AUTO_DECODE_WORKERS = 16


def auto_decode_workers(n_models: int, cuda: bool, cores: int | None = None, threads: int = 1) -> int:
    """Decode processes per model.

    On CUDA: the cores left per GPU (one stays with the model's process), at most 16. On CPU,
    decoding is ~1% of a forward pass: a thread beside a 1-thread model does it (0); beside a
    model running several torch threads, that thread's own torch ops (ToTensor, Normalize)
    would start another team of that many threads and fight the forward pass for the cores,
    so one decode process (1 torch thread) does it instead.
    """
    if not cuda:
        return 1 if threads > 1 else 0
    cores = cores or default_workers()
    return max(1, min(MAX_AUTO_DECODE_WORKERS, cores // max(1, n_models) - 1))


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


def _decoded(shard: Path, encoder: Encoder, report: ReadReport, bad: list[str],
             decode: str = DEFAULT_DECODE) -> Iterator[tuple[str, Any, str | None]]:

    for s in iter_shard(shard, report):
        key = s["__key__"]
        img = image_of(s)
        if img is None:
            bad.append(key)
            report.skip(key, "no image field")
            continue
        data = img[1]
        try:
            tensor = encoder.pixels(data, decode)
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
    device = cfg.device
    if a.get("devices"):  # CUDA: one process per GPU, each takes its own
        from .devices import claim_device

        device = claim_device(a["devices"], a["lock_dir"])
        torch.cuda.set_device(torch.device(device))  # this process's streams and events live there
    encoder = cached_model(cfg.model, device)
    precision = resolve_precision(cfg.precision, encoder.device)
    shard, out, suffix = Path(a["shard"]), Path(a["out"]), a["suffix"]
    report = ReadReport(shard=shard.name)
    if str(encoder.device).startswith("cuda") or cfg.decode_workers > 0:
        from .loader import embed_fed

        fed = embed_fed(shard, encoder, report, cfg.batch_size, precision, max(0, cfg.decode_workers),
                        sample_caption, cfg.decode, cfg.gpu_decode)
        keys, captions, img, bad = fed.keys, fed.captions, fed.images, fed.bad
    else:
        keys, captions, img, bad = _embed_in_process(shard, encoder, report, cfg.batch_size, precision, cfg.decode)
    img_path, meta_path = part_paths(out, suffix, "img")
    outputs = [img_path, meta_path]
    have_text = [i for i, c in enumerate(captions) if c]
    n_text = 0
    if cfg.captions and have_text:
        txt = np.zeros_like(img)
        txt[have_text] = encoder.encode_texts([captions[i] for i in have_text],  # type: ignore[misc]
                                              precision=precision)
        txt_path, _ = part_paths(out, suffix, "text")
        save_npy(txt_path, txt, cfg.dtype)
        outputs.append(txt_path)
        n_text = len(have_text)
    save_npy(img_path, img, cfg.dtype)
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
    if precision != "fp32" or str(encoder.device) != "cpu":
        stats["device"], stats["precision"] = str(encoder.device), precision
    return {"outputs": [str(p.relative_to(out)) for p in outputs], "stats": stats}


def _embed_in_process(shard: Path, encoder: Encoder, report: ReadReport, batch_size: int, precision: str,
                      decode: str = DEFAULT_DECODE) -> tuple[list[str], list[str | None], np.ndarray, list[str]]:
    """The CPU path: decode in a background thread of this process, forward here."""
    import torch

    bad: list[str] = []
    keys: list[str] = []
    captions: list[str | None] = []
    img_parts: list[np.ndarray] = []
    for batch in _prefetch(_batches(_decoded(shard, encoder, report, bad, decode), batch_size)):
        keys.extend(k for k, _, _ in batch)
        captions.extend(c for _, _, c in batch)
        img_parts.append(encoder.encode_image_tensors(torch.stack([t for _, t, _ in batch]), precision))
    img = np.concatenate(img_parts) if img_parts else np.zeros((0, encoder.dim), np.float32)
    return keys, captions, img, bad


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
    _check_config(config)
    paths = list_shards(shards)
    out = Path(out)
    devices, n_workers = _placement(config, workers, len(paths))
    cuda = devices[0].startswith("cuda")
    if n_workers == 1 and executor == "local":
        cached_model(config.model, devices[0] if cuda else config.device)  # fail fast, in-process, before any task
    # batch size, device, precision and threads do not change the vectors beyond rounding: a rerun
    # with other values resumes; a stored dtype other than float32 is part of the run
    run_cfg = {"shards": [str(p.resolve()) for p in paths], "model": config.model, "captions": config.captions}
    if config.dtype != "float32":
        run_cfg["dtype"] = config.dtype
    placement = {"devices": devices, "lock_dir": str(lock_dir(out))} if cuda else {}
    with OutputDir(out, "embed", run_cfg, overwrite=overwrite):
        tasks = [Task(id=f"{suffix}-{p.name}", args={"shard": str(p), "out": str(out), "suffix": suffix,
                                                      "config": asdict(config), **placement},
                      # a shard rewritten since (a repacked pool) is embedded again; so is one decoded another way
                      inputs=fingerprint(p, {"decode": config.decode}))
                 for p, suffix in zip(paths, part_suffixes(len(paths)), strict=True)]
        ex = get_executor(executor, workers=n_workers, address=address)
        try:
            # the model's weights are an input of every shard: new weights under the same spec re-embed
            res = run_stage("embed", embed_shard_task, tasks, out, executor=ex, unit="shards",
                            inputs=model_fingerprint(config.model))
        finally:
            ex.close()
            _close_local_feeds()
        print_table(summary_table([res.summary], title="curate embed"))
        info = _embed_info(config, tasks, res, devices[0])
        # also when some shards failed (the summary lists them); a run where every shard failed writes
        # nothing, so it does not pin the folder's configuration (a corrected command needs no --overwrite)
        wrote = bool(res.records) or not res.errors
        if wrote:
            write_json(out / INFO_NAME, info)
        if res.errors:
            first_id, first = next(iter(res.errors.items()))
            raise CurateError(f"{len(res.errors)} of {len(tasks)} shard(s) failed, e.g. {first_id}: "
                              f"{first.splitlines()[0]}" + (f" (listed in {INFO_NAME})" if wrote else ""),
                              where=str(out), fix="fix the cause and rerun the same command; finished shards are kept")
        if info["counts"]["bad_images"]:
            logger.warning("%d image(s) failed to decode and were skipped (keys in %s)",
                           info["counts"]["bad_images"], out / INFO_NAME)
        return info


def _check_config(config: EmbedConfig) -> None:
    """Every option of ``curate embed`` that can be wrong, before the output folder opens (for an
    ``open_clip:`` spec also its architecture and cached weights, so N workers do not fail N times)."""
    check_model_available(config.model)
    if config.batch_size < 1:
        raise CurateError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.precision not in PRECISIONS:
        raise CurateError(f"unknown --precision {config.precision!r}", fix=f"use one of {', '.join(PRECISIONS)}")
    if config.dtype not in STORE_DTYPES:
        raise CurateError(f"unknown --dtype {config.dtype!r}", fix=f"use one of {', '.join(STORE_DTYPES)}")
    check_decode(config.decode)
    check_gpu_decode(config.gpu_decode)


def _placement(config: EmbedConfig, workers: int | None, n_shards: int) -> tuple[list[str], int]:
    """The devices and the number of worker processes (one per GPU on CUDA); fills in the threads per
    worker and the decode workers when they were left to choose."""
    devices = embed_devices(config.device)
    cuda = devices[0].startswith("cuda")
    if cuda:  # one process (one model) per GPU; --workers can only lower the number of GPUs used
        if workers and workers > len(devices):
            logger.info("--workers %d: on CUDA one process runs per GPU (%d)", workers, len(devices))
        n_workers = max(1, min(workers or len(devices), len(devices), n_shards))
        devices = devices[:n_workers]
    else:
        n_workers = max(1, min(workers or default_workers(), n_shards))
    if not config.threads:
        config.threads = max(1, default_workers() // n_workers)
    if config.decode_workers < 0:
        config.decode_workers = auto_decode_workers(n_workers, cuda, threads=config.threads)
    return devices, n_workers


def _embed_info(config: EmbedConfig, tasks: list[Task], res: Any, device: str) -> dict[str, Any]:
    """``embeddings.json``: the model, counts, what was skipped or failed, and how the images were decoded."""
    stats = [res.records[t.id].get("stats", {}) for t in tasks if t.id in res.records]
    merged = res.stats
    info = {
        "model": config.model,
        "model_fingerprint": model_fingerprint(config.model),
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
        "decode": config.decode,
    }
    precision = resolve_precision(config.precision, device)
    if precision != "fp32":  # only what differs from the CPU default, so CPU outputs stay as they were
        info["precision"] = precision
    if config.dtype != "float32":
        info["dtype"] = config.dtype
    return info


def _close_local_feeds() -> None:
    """Stop the decode workers of a fed path that ran in this process (without importing torch)."""
    import sys

    loader = sys.modules.get("curate.embed.loader")
    if loader is not None:
        loader.close_feeds()
