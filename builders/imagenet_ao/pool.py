"""Image pool ingestion: a URL list (downloaded with img2dataset), a folder of images, or shards.

Whatever the input, the result is a folder of WebDataset shards (``KEY.jpg`` + ``KEY.json``
with url/caption/path) that ``curate embed`` reads. Each step is resumable: img2dataset in
its incremental mode, folder packing with one ledger task per chunk of files.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
import re
import sys
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import CurateError
from curate.fingerprint import fingerprint
from curate.ledger import Stats, Task, run_stage
from curate.shards import IMAGE_EXTS, list_shards, shard_name, write_shard

from .filters import MAX_PIXELS, check_image

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = tuple(f".{ext}" for ext in IMAGE_EXTS)
URL_LIST_SUFFIXES = (".parquet", ".csv", ".tsv", ".txt", ".jsonl")
CHUNK = 1000


def pool_kind(spec: str) -> str:
    """'shards', 'folder' or 'urls' for a --pool argument."""
    p = Path(spec)
    if p.is_dir():
        if any(p.glob("*.tar")):
            return "shards"
        return "folder"
    if spec.endswith(".tar") or "{" in spec or "*" in spec:
        return "shards"
    if p.suffix.lower() in URL_LIST_SUFFIXES:
        if not p.exists():
            raise CurateError("pool URL list not found", where=spec)
        return "urls"
    raise CurateError("--pool must be a folder of images, WebDataset shards, or a URL list", where=spec,
                      fix="give a folder, a shard glob like 'pool/*.tar', or a .parquet/.csv/.txt URL list")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_") or "x"


def _pack_chunk(task: Task) -> dict[str, Any]:
    """Pack one chunk of files; files that do not decode (or are too small/large) are listed, not packed."""
    a = task.args
    out = Path(a["out"])
    rejected: list[list[str]] = []

    def samples():
        for rel, key in zip(a["files"], a["keys"], strict=True):
            path = Path(a["root"]) / rel
            data = path.read_bytes()
            ok, reason, _, _ = check_image(data, a["min_resolution"])
            if not ok:
                rejected.append([key, reason])
                continue
            ext = path.suffix.lower().lstrip(".")
            ext = "jpg" if ext == "jpeg" else ext
            yield {"__key__": key, ext: data, "json": {"key": key, "path": rel, "url": rel}}

    st = write_shard(out / a["name"], samples(), extra_stats={"rejected": rejected})
    return {"outputs": [a["name"]], "stats": {"items": st.count, "rejected": rejected}}


def folder_keys(files: list[str]) -> list[str]:
    """A unique, stable key per file: its path without the extension, made safe; files whose keys
    would collide (``a.jpg`` beside ``a.png``, ``a b.jpg`` beside ``a_b.jpg``) keep their extension."""
    base = [_slug(str(Path(rel).with_suffix(""))) for rel in files]
    seen: dict[str, int] = {}
    for k in base:
        seen[k] = seen.get(k, 0) + 1
    keys = [_slug(rel) if seen[k] > 1 else k for k, rel in zip(base, files, strict=True)]
    taken: set[str] = set()
    for i, k in enumerate(keys):  # a collision left after that (a_jpg.png beside a.jpg.png ...): number it
        n, name = 1, k
        while name in taken:
            n, name = n + 1, f"{k}-{n}"
        keys[i] = name
        taken.add(name)
    return keys


def pack_folder(folder: Path, out: Path, executor=None, min_resolution: int = 0) -> tuple[list[Path], list[list[str]]]:
    """Pack a folder of image files into shards of ``CHUNK`` images (sorted, deterministic).

    Returns the shards and ``[key, reason]`` of every file refused by the decode check."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CurateError("no image files in the pool folder", where=str(folder),
                          fix=f"the folder should hold {', '.join(IMAGE_SUFFIXES)} files")
    keys = folder_keys(files)
    tasks = []
    for i in range((len(files) + CHUNK - 1) // CHUNK):
        chunk, chunk_keys = files[i * CHUNK:(i + 1) * CHUNK], keys[i * CHUNK:(i + 1) * CHUNK]
        tasks.append(Task(f"pack-{i:06d}", {"root": str(folder), "files": chunk, "keys": chunk_keys, "out": str(out),
                                            "name": shard_name("pool", i), "min_resolution": min_resolution},
                          inputs=fingerprint([folder / rel for rel in chunk], chunk_keys, min_resolution)))
    res = run_stage("pack pool", _pack_chunk, tasks, out, executor, unit="shards")
    if res.errors:
        raise CurateError(f"{len(res.errors)} pool chunk(s) failed to pack", where=str(folder))
    rejected = list(res.stats.get("rejected", []))  # every chunk's list, in task order
    return [out / t.args["name"] for t in tasks], rejected  # this run's shards (not one left by a larger pool)


def url_list_table(path: Path) -> tuple[Path, str, str | None]:
    """Normalise a URL list to a parquet with ``url`` (+ ``caption``) that img2dataset reads."""
    suf = path.suffix.lower()
    if suf == ".parquet":
        df = pl.read_parquet(path)
    elif suf in (".csv", ".tsv"):
        df = pl.read_csv(path, separator="\t" if suf == ".tsv" else ",")
    elif suf == ".jsonl":
        df = pl.read_ndjson(path)
    else:
        urls = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        df = pl.DataFrame({"url": urls})
    url_col = next((c for c in ("url", "URL", "image_url") if c in df.columns), None)
    if url_col is None:
        raise CurateError(f"URL list has no url column; columns found: {df.columns}", where=str(path))
    if df.height == 0:
        raise CurateError("the URL list is empty", where=str(path), fix=f"give a list with URLs in column {url_col!r}")
    cap_col = next((c for c in ("caption", "TEXT", "text") if c in df.columns), None)
    return path, url_col, cap_col


def url_list_rows(path: Path) -> int:
    """How many rows (URLs) a URL list holds, as img2dataset's reader counts them."""
    suf = path.suffix.lower()
    if suf == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if suf in (".csv", ".tsv"):
        return pl.scan_csv(path, separator="\t" if suf == ".tsv" else ",").select(pl.len()).collect().item()
    if suf == ".jsonl":
        return pl.scan_ndjson(path).select(pl.len()).collect().item()
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


# img2dataset's options for a URL pool, in its own names; the rest are its defaults. The bench passes
# exactly these to the img2dataset CLI, so the two sides differ only in how the work is distributed.
IMG2DATASET_OPTIONS: dict[str, Any] = {
    "output_format": "webdataset",
    "resize_mode": "keep_ratio",
    "resize_only_if_bigger": True,
    "retries": 0,
    "number_sample_per_shard": CHUNK,
    "incremental_mode": "incremental",
    "enable_wandb": False,
    "save_additional_columns": None,
    "disallowed_header_directives": [],
    "encode_quality": 90,
    "extract_exif": False,
    "max_image_area": float(MAX_PIXELS),
}
INPUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".txt": "txt"}


def img2dataset_options(url_list: Path, out: Path, image_size: int, processes: int, threads: int, timeout: int,
                        url_col: str, caption_col: str | None) -> dict[str, Any]:
    """Every argument of ``img2dataset.download`` for this call: its defaults, then ours."""
    import inspect

    from img2dataset import download

    opts = {k: p.default for k, p in inspect.signature(download).parameters.items()
            if p.default is not inspect.Parameter.empty}
    opts.update(IMG2DATASET_OPTIONS)
    opts.update(url_list=str(url_list.resolve()), input_format=INPUT_FORMATS[url_list.suffix.lower()],
                url_col=url_col, caption_col=caption_col, output_folder=str(out.resolve()), image_size=image_size,
                processes_count=processes, thread_count=threads, timeout=timeout, distributor="multiprocessing")
    return opts


def default_start_method() -> str:
    """``fork`` where the platform has it, unless a Ray driver runs in this process (its gRPC threads
    do not survive a fork); ``spawn`` otherwise. The forked workers run only img2dataset's code
    (pyarrow, OpenCV with its pthreads pool, urllib): nothing the parent's torch or polars threads hold."""
    ray = sys.modules.get("ray")
    if "fork" not in mp.get_all_start_methods() or (ray is not None and ray.is_initialized()):
        return "spawn"
    return "fork"


DOWNLOAD_STAGE = "download pool"


def _block_name(shard_id: int, oom_shard_count: int) -> str:
    return str(shard_id).zfill(oom_shard_count)  # img2dataset's shard naming


def _downloader(o: dict[str, Any], column_list: list[str], save_caption: bool):
    """img2dataset's resizer and downloader (with its WebDataset writer) for the options ``o``."""
    from img2dataset.downloader import Downloader
    from img2dataset.resizer import Resizer
    from img2dataset.writer import WebDatasetSampleWriter

    resizer = Resizer(image_size=o["image_size"], resize_mode=o["resize_mode"],
                      resize_only_if_bigger=o["resize_only_if_bigger"],
                      upscale_interpolation=o["upscale_interpolation"],
                      downscale_interpolation=o["downscale_interpolation"], encode_quality=o["encode_quality"],
                      encode_format=o["encode_format"], skip_reencode=o["skip_reencode"],
                      disable_all_reencoding=o["disable_all_reencoding"], min_image_size=o["min_image_size"],
                      max_image_area=o["max_image_area"], max_aspect_ratio=o["max_aspect_ratio"], blurrer=None)
    return Downloader(
        sample_writer_class=WebDatasetSampleWriter, resizer=resizer, thread_count=o["thread_count"],
        save_caption=save_caption, extract_exif=o["extract_exif"], output_folder=o["output_folder"],
        column_list=column_list, timeout=o["timeout"], number_sample_per_shard=o["number_sample_per_shard"],
        oom_shard_count=o["oom_shard_count"], compute_hash=o["compute_hash"], verify_hash_type=None,
        encode_format=o["encode_format"], retries=o["retries"], user_agent_token=o["user_agent_token"],
        disallowed_header_directives=o["disallowed_header_directives"] or None)  # an empty list means none


def _block_record(out: Path, name: str, stats: dict[str, Any], node: str | None) -> dict[str, Any]:
    """A finished block's outputs (what img2dataset wrote for it) and its stats for the marker."""
    outputs = [f for f in (f"{name}.tar", f"{name}.parquet", f"{name}_stats.json") if (out / f).exists()]
    counts = {k: int(stats.get(k, 0)) for k in ("count", "successes", "failed_to_download", "failed_to_resize")}
    return {"outputs": outputs, "stats": {"items": counts["successes"], **counts,
                                          **({"node": node} if node else {})}}


def _download_block(task: Task) -> dict[str, Any]:
    """Executor task: one block of URLs (img2dataset's shard: its feather file of up to
    ``number_sample_per_shard`` rows) downloaded, resized and written by img2dataset's downloader and
    writer as ``NNNNN.tar``, ``NNNNN.parquet`` and ``NNNNN_stats.json``; the marker names the node."""
    import os
    import shutil

    from curate.executor import node_id

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports it: no network call at run time
    a = task.args
    out, node = Path(a["options"]["output_folder"]), node_id()
    name = _block_name(a["shard"], a["options"]["oom_shard_count"])
    # written in a folder of its own, then moved in (the stats file last): a block killed mid-way leaves
    # no half shard under its name, and a second run of the block (a lost driver's task) none mixed
    work = out / "_tmp" / f"{name}.{_slug(node)}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    o = {**a["options"], "output_folder": str(work)}
    _downloader(o, a["columns"], a["save_caption"]).download_shard((a["shard"], a["file"]))  # raises on failure
    in_key_order(work, name)
    for f in (f"{name}.tar", f"{name}.parquet", f"{name}_stats.json"):
        if (work / f).exists():
            os.replace(work / f, out / f)
    shutil.rmtree(work, ignore_errors=True)
    return _block_record(out, name, json.loads((out / f"{name}_stats.json").read_text()), node)


def in_key_order(folder: Path, name: str) -> None:
    """Rewrite a block's ``NAME.tar`` and ``NAME.parquet`` deterministically: samples in key order (the URL's
    row order: img2dataset's keys are zero-padded row numbers), tar headers as curate's own shard writer
    makes them (``curate.shards.rewrite_in_key_order``). img2dataset writes samples as their downloads
    finish, each member stamped with the time it was written, so without this a block's bytes would differ
    run to run: a rerun, another node or the local executor would write the same samples in another order
    and with other times (and the embeddings made from the shard would follow that order)."""
    import pyarrow.parquet as pq

    from curate.shards import rewrite_in_key_order

    tar = folder / f"{name}.tar"
    if tar.exists():
        rewrite_in_key_order(tar)
    meta = folder / f"{name}.parquet"
    if meta.exists():
        table = pq.read_table(meta)
        if "key" in table.column_names and table.num_rows:
            pq.write_table(table.sort_by("key"), meta)


def _adopt_finished_blocks(out: Path, ledger, n_blocks: int, oom: int, inputs: str) -> None:
    """A block img2dataset finished (its stats file exists) but that has no marker (a run stopped
    between the two, or a folder img2dataset wrote): marked done, as img2dataset's incremental mode keeps it."""
    for i in range(n_blocks):
        name = _block_name(i, oom)
        stats = out / f"{name}_stats.json"
        if stats.exists() and ledger.record(name) is None:
            rec = _block_record(out, name, json.loads(stats.read_text()), None)
            ledger.mark_done(name, rec["outputs"], rec["stats"], inputs)


def _split_blocks(o: dict[str, Any], url_col: str, cap_col: str | None, done: set[int], tmp: Path):
    """img2dataset's reader: the URL list cut into blocks, one feather file per block not done."""
    from img2dataset.reader import Reader

    reader = Reader(o["url_list"], o["input_format"], url_col, cap_col, None, None, o["save_additional_columns"],
                    o["number_sample_per_shard"], done, str(tmp))
    with contextlib.redirect_stdout(io.StringIO()) as said:  # its reader prints what it does
        blocks = list(reader)
    log.debug("img2dataset reader: %s", said.getvalue().strip())
    return blocks, reader.column_list


def download_urls(url_list: Path, out: Path, image_size: int = 256, processes: int = 1, threads: int = 16,
                  timeout: int = 10, start_method: str | None = None, executor=None,
                  block_size: int = CHUNK) -> list[Path]:
    """Download, resize and shard a URL list with img2dataset's own reader, resizer, downloader and
    WebDataset writer (its output, byte for byte), one executor task per block of URLs.

    A block is img2dataset's shard (``number_sample_per_shard`` URLs, cut by its reader into a feather
    file under ``OUT/_tmp``); its task writes ``NNNNN.tar`` and its stats, and its done marker
    (``OUT/.curate/ledger/download_pool/NNNNN.json``) records them and the node that ran it: a rerun,
    or a rerun after a lost node, redoes only unfinished blocks (a block with a stats file and no
    marker is kept, as img2dataset's ``incremental`` mode keeps it). ``executor``: a Ray executor
    spreads the blocks over its nodes (``OUT`` must be storage every node sees); without one a local
    pool of ``processes`` workers, forked (where the platform has fork) after the imports, so they
    start at once (``img2dataset.download`` spawns its workers and a logger process: three fresh
    interpreters importing img2dataset again, about 2 s of CPU each). ``start_method="spawn"`` is
    img2dataset's own way. Ctrl-C: the workers ignore it, the parent stops them. ``block_size``: URLs per
    block (img2dataset's ``number_sample_per_shard``; the build's is ``CHUNK``)."""
    import math
    import os
    import shutil

    from curate.executor import LocalExecutor
    from curate.ledger import Ledger, task_inputs

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports it: no network call at run time
    from img2dataset.main import arguments_validator

    path, url_col, cap_col = url_list_table(url_list)
    out.mkdir(parents=True, exist_ok=True)
    o = img2dataset_options(path, out, image_size, processes, threads, timeout, url_col, cap_col)
    o["number_sample_per_shard"] = block_size
    arguments_validator(o)
    inputs = fingerprint(path, url_col, cap_col, image_size, IMG2DATASET_OPTIONS, block_size)  # a block's bytes
    oom, per = o["oom_shard_count"], o["number_sample_per_shard"]
    n_blocks = math.ceil(url_list_rows(path) / per)
    ledger = Ledger(out, DOWNLOAD_STAGE)
    _adopt_finished_blocks(out, ledger, n_blocks, oom, inputs)
    done = {i for i in range(n_blocks) if ledger.is_done(_block_name(i, oom), task_inputs(inputs))}
    tmp = out / "_tmp"
    tmp.mkdir(exist_ok=True)
    blocks, columns = _split_blocks(o, url_col, cap_col, done, tmp)
    # only what a task needs: plain values (no function defaults), so a Ray task carries them as they are
    task_opts = {k: v for k, v in o.items() if isinstance(v, str | int | float | bool | list | type(None))}
    tasks = [Task(_block_name(i, oom), {"shard": i, "file": f, "options": task_opts, "columns": columns,
                                        "save_caption": cap_col is not None}) for i, f in blocks]
    if executor is None or executor.name == "local":
        executor = LocalExecutor(processes, start_method=start_method or default_start_method())
    for attempt in range(1 + o["max_shard_retry"]):
        res = run_stage(DOWNLOAD_STAGE, _download_block, tasks, out, executor, unit="blocks", inputs=inputs)
        if not res.errors:
            break
        log.warning("%d pool block(s) failed%s", len(res.errors), "; retrying" if attempt < o["max_shard_retry"] else "")
    shutil.rmtree(tmp, ignore_errors=True)
    return sorted(out.glob("*.tar"))


_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.I)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def failure_reason(message: str) -> str:
    """img2dataset's error message with the URL (or the path it quotes) taken out, so that failures
    group by cause: ``unknown url type: '/a.jpg'`` and ``... '/b.jpg'`` are one reason."""
    return _QUOTED.sub("'…'", _URL.sub("<url>", message)).strip()


def download_stats(out: Path) -> dict[str, Any]:
    """img2dataset's per-shard ``*_stats.json`` merged: successes, failures, and failures by reason
    (grouped by :func:`failure_reason`)."""
    total = Stats({"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0})
    for p in sorted(out.glob("*_stats.json")):
        s = json.loads(p.read_text())
        total += {k: int(s.get(k, 0)) for k in ("count", "successes", "failed_to_download", "failed_to_resize")}
        for why, n in s.get("status_dict", {}).items():
            if why != "success":
                total += {"failures_by_reason": {failure_reason(why): int(n)}}
    total.setdefault("failures_by_reason", {})
    total["failures_by_reason"] = dict(sorted(total["failures_by_reason"].items()))
    return dict(total)


def failure_summary(stats: dict[str, Any], most: int = 3) -> str:
    """One line: how many URLs failed and the commonest reasons."""
    reasons = sorted(stats.get("failures_by_reason", {}).items(), key=lambda kv: (-kv[1], kv[0]))
    shown = "; ".join(f"{n:,} x {why[:120]}" for why, n in reasons[:most])
    more = f"; {len(reasons) - most} more reason(s) in the stats" if len(reasons) > most else ""
    return f"{stats.get('count', 0):,} URLs, {stats.get('successes', 0):,} downloaded" + (f": {shown}{more}" if shown else "")


def ingest_pool(spec: str, out: Path, executor=None, image_size: int = 256, workers: int = 1,
                min_resolution: int = 0, timeout: int = 10) -> tuple[list[Path], dict]:
    """Turn any --pool into shards; returns (shard paths, ingest stats incl. ``rejected`` [key, reason]).
    ``timeout``: seconds img2dataset waits for one URL's answer (a URL list).

    Shards we write (folder and URL pools) get a README.md whose YAML header lets
    ``datasets.load_dataset(OUT)`` open them; a pool given as shards is read where it is."""
    from curate.hub import write_shard_card

    kind = pool_kind(spec)
    if kind == "shards":
        shards = list_shards(spec)
        return shards, {"kind": kind, "shards": len(shards)}
    if kind == "folder":
        shards, rejected = pack_folder(Path(spec), out, executor, min_resolution)
        write_shard_card(out, "image pool", f"The images of the folder `{spec}`, packed into shards "
                         "(`path`: the file under that folder) before retrieval.")
        return shards, {"kind": kind, "shards": len(shards), "rejected": rejected}
    shards = download_urls(Path(spec), out, image_size=image_size, processes=max(1, workers), executor=executor,
                           timeout=timeout)
    write_shard_card(out, "image pool", f"The images of the URL list `{spec}`, downloaded and resized by "
                     "img2dataset before retrieval (its JSON fields: url, key, status, sizes ...).")
    stats = download_stats(out)
    if not shards or stats["successes"] == 0:
        raise CurateError(f"img2dataset downloaded no image from the URL list ({failure_summary(stats)})", where=spec,
                          fix="check the URLs are reachable from this machine")
    log.info("pool download: %d ok, %d failed to download, %d failed to resize", stats["successes"],
             stats["failed_to_download"], stats["failed_to_resize"])
    return shards, {"kind": kind, **stats}
