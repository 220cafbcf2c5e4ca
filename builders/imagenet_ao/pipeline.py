"""`curate build imagenet-ao`: vocabulary -> rarity scan -> candidates -> filters -> dataset.

Every stage is resumable: per-task ledger markers for the parallel stages (rarity per file,
pool packing, generation, embedding, decode checks per shard) and one marker per global
stage whose output is a parquet/npy file written atomically. A rerun after kill -9 skips
what is done and, with the same inputs and seed, writes a byte-identical manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.config import to_dict
from curate.errors import CurateError
from curate.executor import LocalExecutor, get_executor
from curate.fsutil import atomic_open, read_json, write_json, write_parquet
from curate.hub import SplitShardWriter, shard_plan
from curate.images import to_jpeg
from curate.ledger import Ledger, Task, run_global, run_stage
from curate.log import StageSummary, print_table, summary_table
from curate.manifest import unit_hash, write_manifest
from curate.outdir import OutputDir
from curate.shards import IMAGE_EXTS, ReadReport, image_of, iter_shard, shard_name

from .calibrate import CALIBRATION, calibrate
from .config import BuildConfig
from .filters import FilterConfig, attribute_scores, cap_and_minimum, check_image, dedup, object_rank
from .rarity import list_caption_files, scan_corpus
from .text import RETRIEVAL_TEMPLATES
from .truth import Truth, evaluate_funnel, load_truth, rare_units, read_truth_file, truth_spec
from .vocab import Vocabulary, load_vocabulary

log = logging.getLogger(__name__)
GEN_CHUNK = 16  # pairs per generator task


@dataclass
class FunnelRow:
    stage: str
    count: int
    removed: int = 0
    note: str = ""


@dataclass
class BuildResult:
    out: Path
    funnel: list[FunnelRow]
    counts: dict[str, Any]
    stages: list[StageSummary] = field(default_factory=list)
    truth: list[dict[str, Any] | None] | None = None   # per funnel row: precision, recall, ... (None: no truth)
    calibration: dict[str, Any] | None = None          # --calibrate: chosen point, curve (filters/calibration.json)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_") or "x"


def sample_key(source: str, src_key: str, attr: str, obj: str) -> str:
    """Stable, unique per (image, pair): an image mined for two pairs gets two keys."""
    h = hashlib.sha1(f"{attr}|{obj}".encode()).hexdigest()[:6]
    return f"{source[:1]}-{_slug(src_key)}-{h}"


def _cached_npy(out: Path, rel: str, compute) -> np.ndarray:
    path = out / rel
    if path.exists():
        return np.load(path)
    arr = compute()
    with atomic_open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    return arr


# --- stage 2: choose the pairs to mine -------------------------------------------------------
def choose_pairs(pairs: pl.DataFrame, max_pairs: int, common_pairs: int, seed: int) -> pl.DataFrame:
    """Rare pairs (most surprising first: both words frequent, never together) + some common ones."""
    rare = (pairs.filter(pl.col("rare"))
            .with_columns(pl.min_horizontal("attr_count", "obj_count").alias("_m"))
            .sort(["_m", "attr", "obj"], descending=[True, False, False]).drop("_m"))
    if max_pairs > 0:
        rare = rare.head(max_pairs)
    common = pairs.filter(~pl.col("rare") & (pl.col("cooccurrence") > 0)).sort(["attr", "obj"])
    if common_pairs >= 0 and common.height > common_pairs:
        idx = sorted(random.Random(seed).sample(range(common.height), common_pairs))
        common = common[idx]
    return pl.concat([rare, common]).select("attr", "family", "obj", "rare", "cooccurrence")


# --- stage 3: candidates ----------------------------------------------------------------------
def _embed(shards: list[Path], out: Path, cfg: BuildConfig, workers: int, executor: str, address: str | None):
    from curate.embed.stage import EmbedConfig, embed_shards

    embed_shards([str(s) for s in shards], out, EmbedConfig(model=cfg.model, batch_size=cfg.batch_size,
                                                            captions=False, device=cfg.device),
                 workers=workers, executor=executor, address=address)


def _key_shards(emb_dir: Path) -> pl.DataFrame:
    from curate.embed.store import read_metadata

    meta = read_metadata(emb_dir)
    return meta.select("key", "shard")


def pool_candidates(cfg: BuildConfig, out: Path, targets: pl.DataFrame, encoder, ex, workers: int,
                    executor: str, address: str | None) -> tuple[pl.DataFrame, dict]:
    from curate.embed.zeroshot import class_text_embeddings
    from curate.index import SearchIndex, build_index

    from .pool import ingest_pool

    shards, stats = ingest_pool(cfg.pool, out / "pool" / "shards", ex, cfg.image_size, workers, cfg.min_resolution)
    emb_dir = out / "pool" / "embeddings"
    _embed(shards, emb_dir, cfg, workers, executor, address)
    idx_dir = out / "pool" / "index"

    def index_stage() -> dict[str, Any]:
        build_index(emb_dir, idx_dir)
        return {}

    run_global("pool index", index_stage, out, ["pool/index"])
    index = SearchIndex.load(idx_dir)
    names = [f"{a} {o}" for a, o in targets.select("attr", "obj").iter_rows()]
    q = _cached_npy(out, "text/retrieval_queries.npy",
                    lambda: class_text_embeddings(encoder, names, RETRIEVAL_TEMPLATES))
    keys, scores = index.search(q, cfg.retrieve_k)
    shard_of = dict(_key_shards(emb_dir).iter_rows())
    shard_paths = {p.name: str(p) for p in shards}
    rows = []
    for (attr, obj), ks, ss in zip(targets.select("attr", "obj").iter_rows(), keys, scores, strict=True):
        for k, s in zip(ks, ss, strict=False):
            if k is None or k == "":
                continue
            sh = shard_of.get(k, "")
            rows.append({"src_key": k, "attr": attr, "obj": obj, "source": "pool", "score_retrieval": float(s),
                         "src_shard": shard_paths.get(sh, str(Path(sh)))})
    df = pl.DataFrame(rows, schema={"src_key": pl.String, "attr": pl.String, "obj": pl.String, "source": pl.String,
                                    "score_retrieval": pl.Float64, "src_shard": pl.String})
    stats["embedding_dir"] = str(emb_dir)
    return df, stats


def generator_candidates(cfg: BuildConfig, out: Path, targets: pl.DataFrame, ex) -> tuple[pl.DataFrame, Path]:
    from .generators import generate_task, in_process, loaded_generator

    loaded_generator(cfg.generator, cfg.device)  # fail fast with a clear error (and keep a model loaded)
    if in_process(cfg.generator) and isinstance(ex, LocalExecutor):
        ex = LocalExecutor(1)  # in this process, where the pipeline is loaded
    gen_dir = out / "generated" / "shards"
    pairs = [list(p) for p in targets.select("attr", "obj").iter_rows()]
    tasks = [Task(f"gen-{i:06d}", {"spec": cfg.generator, "pairs": pairs[j:j + GEN_CHUNK], "n": cfg.generator_images,
                                   "seed": cfg.seed, "out": str(gen_dir), "name": shard_name("gen", i),
                                   "device": cfg.device})
             for i, j in enumerate(range(0, len(pairs), GEN_CHUNK))]
    res = run_stage("generate", generate_task, tasks, out, ex, unit="shards")
    if res.errors:
        raise CurateError(f"{len(res.errors)} generator task(s) failed: {next(iter(res.errors.values())).splitlines()[0]}")
    from curate.hub import write_shard_card

    write_shard_card(gen_dir, "generated candidates", f"Images from the generator `{cfg.generator}`, "
                     f"{cfg.generator_images} per pair, before any filter (the `candidates` stage of the build).")
    rows = []
    for shard in sorted(gen_dir.glob("gen-*.tar")):
        for s in iter_shard(shard):
            meta = json.loads(s["json"])
            rows.append({"src_key": s["__key__"], "attr": meta["attr"], "obj": meta["obj"], "source": "generator",
                         "score_retrieval": float("nan"), "src_shard": str(shard)})
    return pl.DataFrame(rows, schema={"src_key": pl.String, "attr": pl.String, "obj": pl.String, "source": pl.String,
                                      "score_retrieval": pl.Float64, "src_shard": pl.String}), gen_dir


# --- stage 4: filters -------------------------------------------------------------------------
def _decode_task(task: Task) -> dict[str, Any]:
    a = task.args
    wanted = set(a["keys"])
    rows = []
    rep = ReadReport(shard=Path(a["shard"]).name)
    for s in iter_shard(a["shard"], rep, keys=wanted, exts=IMAGE_EXTS):
        img = image_of(s)
        ok, reason, w, h = check_image(img[1] if img else b"", a["min_resolution"])
        rows.append((s["__key__"], ok, reason, w, h))
        wanted.discard(s["__key__"])
    for k in sorted(wanted):
        rows.append((k, False, "missing from shard" + (f" ({rep.error})" if rep.error else ""), 0, 0))
    df = pl.DataFrame(rows, schema={"src_key": pl.String, "ok": pl.Boolean, "reason": pl.String,
                                    "width": pl.Int64, "height": pl.Int64}, orient="row")
    write_parquet(df.with_columns(pl.lit(a["shard"]).alias("src_shard")), Path(a["out"]) / a["rel"])
    return {"outputs": [a["rel"]], "stats": {"items": len(rows), "read_error": rep.error}}


def decode_check(cands: pl.DataFrame, out: Path, ex, min_resolution: int) -> pl.DataFrame:
    uniq = cands.select("src_key", "src_shard").unique().sort("src_shard", "src_key")
    tasks = []
    for i, (shard, grp) in enumerate(uniq.group_by("src_shard", maintain_order=True)):
        rel = f"filters/decode/{i:06d}.parquet"
        tasks.append(Task(f"decode-{i:06d}-{Path(shard[0]).name}",
                          {"shard": shard[0], "keys": grp["src_key"].to_list(), "min_resolution": min_resolution,
                           "out": str(out), "rel": rel}))
    res = run_stage("decode check", _decode_task, tasks, out, ex, unit="shards")
    frames = [pl.read_parquet(out / t.args["rel"]) for t in tasks if t.id not in res.errors]
    if not frames:
        raise CurateError("no candidate image could be read", where=str(out))
    return pl.concat(frames)


def _embeddings_for(cands: pl.DataFrame, emb_dirs: list[Path]) -> np.ndarray:
    from curate.embed.store import read_embeddings

    lookup: dict[tuple[str, str], np.ndarray] = {}
    for src, d in zip(("pool", "generator"), emb_dirs, strict=True):
        if d is None or not d.exists():
            continue
        keys, mat = read_embeddings(d)
        pos = {k: i for i, k in enumerate(keys)}
        need = cands.filter(pl.col("source") == src)["src_key"].unique().to_list()
        for k in need:
            if k in pos:
                lookup[(src, k)] = np.asarray(mat[pos[k]], dtype=np.float32)
    dim = next(iter(lookup.values())).shape[0] if lookup else 1
    out = np.zeros((cands.height, dim), np.float32)
    for i, (src, k) in enumerate(cands.select("source", "src_key").iter_rows()):
        v = lookup.get((src, k))
        if v is not None:
            out[i] = v
    return out


@dataclass
class FilterOutcome:
    """What the filters kept (rows, embeddings), the funnel rows, the pairs dropped, and ``record``:
    every candidate with the filter row that removed it (``removed_at``, -1: kept) and its scores."""

    kept: pl.DataFrame
    img: np.ndarray
    funnel: list[FunnelRow]
    dropped: list[str]
    record: pl.DataFrame
    calibration: dict[str, Any] | None = None


# chooses (attribute margin or None = check off, composition threshold, calibration report) from the
# candidates that passed the object filter (their scores in ``score_comp`` and ``attr_margin``)
Chooser = Callable[[pl.DataFrame], tuple[float | None, float, dict[str, Any]]]


def apply_filters(cands: pl.DataFrame, img: np.ndarray, vocab: Vocabulary, encoder, fc: FilterConfig,
                  out: Path, choose: Chooser | None = None) -> FilterOutcome:
    """Run the filters in order (with ``choose``: the attribute and composition thresholds it picks)."""
    from curate.embed.zeroshot import OPENAI_IMAGENET_TEMPLATES, class_text_embeddings

    funnel: list[FunnelRow] = []
    objs = vocab.object_names
    obj_index = {o: i for i, o in enumerate(objs)}
    families = vocab.families()
    family_of = {a.name: a.family or "attribute" for a in vocab.attributes}
    first = cands
    ids = np.arange(cands.height)  # each current row's index in ``first``
    removed_at = np.full(cands.height, -1, np.int64)
    scores = {"obj_rank": np.full(cands.height, -1, np.int64), "score_comp": np.full(cands.height, np.nan),
              "attr_margin": np.full(cands.height, np.nan)}
    calibration = None

    def step(name: str, mask: np.ndarray, note: str = "") -> None:
        nonlocal cands, img, ids
        mask = np.asarray(mask, dtype=bool)
        removed = int((~mask).sum())
        removed_at[ids[~mask]] = len(funnel)
        cands = cands.filter(pl.Series(mask))
        img, ids = img[mask], ids[mask]
        funnel.append(FunnelRow(name, cands.height, removed, note))

    def outcome(dropped: list[str]) -> FilterOutcome:
        record = first.select("source", "src_key", "attr", "obj", "rare").with_columns(
            pl.Series("removed_at", removed_at), *(pl.Series(k, v) for k, v in scores.items()))
        return FilterOutcome(cands, img, funnel, dropped, record, calibration)

    step("decodable, >= min resolution", cands["ok"].to_numpy().astype(bool), f"min side {fc.min_resolution}px")
    has_emb = np.linalg.norm(img, axis=1) > 0
    step("embedded", has_emb)
    if cands.height == 0:
        return outcome([])
    obj_text = _cached_npy(out, "text/objects_80templates.npy",
                           lambda: class_text_embeddings(encoder, objs, OPENAI_IMAGENET_TEMPLATES))
    target = np.array([obj_index[o] for o in cands["obj"].to_list()])
    rank = object_rank(img, obj_text, target)
    scores["obj_rank"][ids] = rank
    cands = cands.with_columns(pl.Series("obj_rank", rank.astype(np.int64)))
    step(f"object in top-{fc.object_topk}", rank < fc.object_topk, f"zero-shot over {len(objs)} objects, 80 templates")
    # text embeddings of every (attribute of the same family, object) prompt we need
    needed = sorted({(x, o) for a, o in cands.select("attr", "obj").iter_rows()
                     for x in families.get(family_of[a], [a])} | set(cands.select("attr", "obj").iter_rows()))
    names = [f"{a} {o}" for a, o in needed]
    temb = class_text_embeddings(encoder, names, RETRIEVAL_TEMPLATES) if names else np.zeros((0, img.shape[1]))
    pair_text = {p: temb[i] for i, p in enumerate(needed)}
    comp = np.array([float(img[i] @ pair_text[(a, o)]) for i, (a, o) in
                     enumerate(cands.select("attr", "obj").iter_rows())], dtype=np.float64)
    cands = cands.with_columns(pl.Series("score_comp", comp))
    wins, margin = attribute_scores(img, pair_text, cands["attr"].to_list(), cands["obj"].to_list(), families,
                                    family_of)
    scores["score_comp"][ids], scores["attr_margin"][ids] = comp, margin
    if choose is None:
        if fc.attribute_check:
            step("attribute beats its family", wins, "target attribute ranks first among its family")
        step(f"composition score >= {fc.comp_threshold:g}", cands["score_comp"].to_numpy() >= fc.comp_threshold)
    else:
        min_margin, min_comp, calibration = choose(cands.with_columns(pl.Series("attr_margin", margin)))
        if min_margin is None:
            step("attribute check off (calibrated)", np.ones(cands.height, bool), "chosen from labelled images")
        else:
            step(f"attribute margin >= {min_margin:g} (calibrated)", scores["attr_margin"][ids] >= min_margin,
                 "target attribute's score minus its family's best other")
        step(f"composition score >= {min_comp:g} (calibrated)", cands["score_comp"].to_numpy() >= min_comp,
             "chosen from labelled images")
    keep = dedup(img, cands["score_comp"].to_numpy(), fc.dedup_threshold) if cands.height else np.zeros(0, bool)
    step(f"near-duplicates removed (cos >= {fc.dedup_threshold:g})", keep, "within and across pairs")
    before = cands.height
    cands = cands.with_columns(pl.int_range(pl.len()).alias("_row"))
    capped, dropped = cap_and_minimum(cands, fc.images_per_pair, fc.min_images_per_pair)
    rows = capped["_row"].to_numpy()
    gone = np.ones(before, bool)
    gone[rows] = False
    removed_at[ids[gone]] = len(funnel)
    img, ids = img[rows], ids[rows]
    cands = capped.drop("_row")
    funnel.append(FunnelRow(f"cap {fc.images_per_pair}/pair, min {fc.min_images_per_pair}/pair", cands.height,
                            before - cands.height, f"{len(dropped)} pair(s) dropped for too few images"))
    return outcome(dropped)


# --- splits and output ------------------------------------------------------------------------
def assign_splits(df: pl.DataFrame, cfg: BuildConfig) -> pl.DataFrame:
    """Unseen (rare) pairs go to val or test as whole pairs; seen pairs' images are split train/val/test."""
    rng = random.Random(cfg.seed)
    rare_pairs = sorted(set(df.filter(pl.col("rare"))["pair"].to_list()))
    rng.shuffle(rare_pairs)
    n_val = int(round(len(rare_pairs) * cfg.val_fraction))
    pair_split = {p: ("val" if i < n_val else "test") for i, p in enumerate(rare_pairs)}
    splits = []
    seen_counter: dict[str, int] = {}
    for key, pair, rare in df.sort("key").select("key", "pair", "rare").iter_rows():
        if rare:
            splits.append((key, pair_split[pair]))
            continue
        i = seen_counter.get(pair, 0)
        seen_counter[pair] = i + 1
        h = unit_hash(cfg.seed, key)
        s = "val" if h < cfg.seen_val_fraction else "test" if h < 2 * cfg.seen_val_fraction else "train"
        splits.append((key, s))
    sp = pl.DataFrame(splits, schema={"key": pl.String, "split": pl.String}, orient="row")
    return df.join(sp, on="key", how="left")


# Missing values in the shards' JSON: one type per field across all samples, so `datasets` and
# `webdataset` users never meet null-then-float. Only ``score_retrieval`` is ever missing today
# (generated images were not retrieved); the others guard columns a vocabulary may leave empty.
MISSING = {pl.Float64: -1.0, pl.Int64: -1, pl.String: "", pl.Boolean: False}


def json_value(value: Any, dtype: pl.DataType) -> Any:
    """A manifest value as written to ``KEY.json``: NaN/None become the column type's sentinel."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return MISSING.get(dtype.base_type(), "")
    return value


def write_dataset_shards(kept: pl.DataFrame, out: Path, maxcount: int = 1000, min_shards: int = 8) -> pl.DataFrame:
    """Write kept images + json into ``shards/PREFIX-SPLIT-NNNNNN.tar``; returns key -> shard.

    One set of shards per split (what ``datasets`` configs and per-split loaders want), each
    split in at least ``min_shards`` shards when it has that many samples. Streams: source shards
    in sorted order, samples in source order, one image in memory at a time (deterministic, so
    reruns give identical shards). An image kept for two pairs is written once per pair, under
    each pair's key. Every JSON field has one type in every sample (see :data:`MISSING`).
    """
    meta_cols = [c for c in kept.columns if not c.startswith("_") and c not in ("src_shard", "ok", "reason")]
    dtypes = {c: kept.schema[c] for c in meta_cols}
    by_src: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rec in kept.sort("key").iter_rows(named=True):
        meta = {k: json_value(rec[k], dtypes[k]) for k in meta_cols}
        by_src.setdefault(rec["src_shard"], {}).setdefault(rec["src_key"], []).append(meta)
    shard_dir = out / "shards"
    for old in shard_dir.glob("imagenet-ao-*"):
        old.unlink()
    shard_dir.mkdir(parents=True, exist_ok=True)
    # every kept sample passed the decode check, so each split's size is known before streaming
    sizes: dict[str, int] = {}
    for wanted in by_src.values():
        for metas in wanted.values():
            for meta in metas:
                sizes[meta["split"]] = sizes.get(meta["split"], 0) + 1
    writers = {s: SplitShardWriter(shard_dir, f"imagenet-ao-{s}", shard_plan(n, maxcount, min_shards))
               for s, n in sizes.items()}
    rows = []
    try:
        for src in sorted(by_src):
            wanted = by_src[src]
            for s in iter_shard(src, keys=wanted, exts=IMAGE_EXTS):
                img = image_of(s)
                if img is None:
                    continue
                data = to_jpeg(img[1])
                for meta in wanted[s["__key__"]]:
                    rows.append((meta["key"], writers[meta["split"]].write({"__key__": meta["key"], "jpg": data,
                                                                            "json": meta})))
        for w in writers.values():
            w.close()  # a split that lost an image since the decode check ends with a shorter last shard
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return pl.DataFrame(rows, schema={"key": pl.String, "shard": pl.String}, orient="row")


def write_embeddings(manifest: pl.DataFrame, emb: np.ndarray, out: Path, model: str) -> None:
    """``embeddings/`` in the clip-retrieval layout, rows in key order: img_emb + metadata with the
    columns `curate embed` writes (key, shard, caption, image_path) plus the sample's pair and split,
    so `clip-retrieval index` and its ParquetMetadataProvider serve them."""
    from curate.embed.store import part_paths, save_npy, save_parquet

    folder = out / "embeddings"
    npy, meta = part_paths(folder, "0", "img")
    m = manifest.sort("key")
    save_npy(npy, emb.astype(np.float32))
    save_parquet(meta, m.select(
        "key", "shard", pl.format("a photo of a {} {}", "attr", "obj").alias("caption"),
        pl.col("key").alias("image_path"), "pair", "split"))
    write_json(folder / "embeddings.json", {"model": model, "dim": int(emb.shape[1]) if emb.size else 0,
                                            "counts": {"images": m.height}, "layout": "clip-retrieval",
                                            "metadata_columns": ["key", "shard", "caption", "image_path", "pair",
                                                                 "split"]})


# --- the whole build --------------------------------------------------------------------------
KEPT, KEPT_EMB = "filters/kept.parquet", "filters/kept_emb.npy"
FUNNEL_RECORD = "filters/funnel.parquet"  # every candidate: the filter row that removed it, its scores
CALIBRATION_ONLY = ("truth", "calibrate", "target_precision")


def fingerprint_config(cfg: BuildConfig) -> dict[str, Any]:
    """The options that decide the dataset (the output folder's fingerprint and ``dataset.json``'s
    config). ``truth`` only measures what was built, unless it chooses the thresholds
    (``calibrate``): without calibration these keys are left out, so adding ``--truth`` to a
    finished build only adds the numbers, and folders built before the keys existed resume."""
    d = to_dict(cfg)
    if not cfg.calibrate:
        for k in CALIBRATION_ONLY:
            d.pop(k, None)
    return d


def build(cfg: BuildConfig, workers: int | None = None, executor: str = "local", address: str | None = None,
          overwrite: bool = False) -> BuildResult:
    """Every stage through the ledger (``run_stage`` per task, ``run_global`` per global step), so a
    rerun after kill -9 skips what is done and ends with byte-identical outputs."""
    if not cfg.out:
        raise CurateError("no --out folder given")
    if not cfg.captions:
        raise CurateError("no caption corpus given", fix="pass --captions PATH (parquet/CSV/JSONL, folders or globs)")
    if not cfg.pool and not cfg.generator:
        raise CurateError("no image source", fix="pass --pool (URL list, folder or shards) and/or --generator demo")
    if not cfg.model:
        raise CurateError("no embedding model", fix="pass --model SPEC (see `curate model list`)")
    if not 0.0 < cfg.target_precision <= 1.0:
        raise CurateError(f"target precision {cfg.target_precision} is not in (0, 1]", fix="e.g. --target-precision 0.8")
    spec = truth_spec(cfg)
    if spec is not None and spec[0] == "file":
        read_truth_file(spec[1])  # a file that cannot serve fails before any stage runs
    has_truth = spec is not None
    if cfg.calibrate and not has_truth:
        raise CurateError("--calibrate needs labelled images and this build has no ground truth",
                          fix="pass --truth FILE (key, attr, obj), build from a demo world, or drop --calibrate")
    out = Path(cfg.out)
    run_cfg = fingerprint_config(cfg)
    with OutputDir(out, "build imagenet-ao", run_cfg, overwrite=overwrite):
        ex = get_executor(executor, workers, address)
        vocab = load_vocabulary(cfg.objects, cfg.attributes)
        stages: list[StageSummary] = []

        def stage(res):
            stages.append(res.summary)
            return res.stats

        # 1-2. vocabulary and rarity scan -> pairs.parquet, targets.parquet
        def pairs_stage() -> dict[str, Any]:
            files = list_caption_files(cfg.captions)
            rr = scan_corpus(files, vocab, out, ex, cfg.caption_column, cfg.max_cooccurrence)
            stages.append(rr.summary)
            write_parquet(rr.pairs, out / "pairs.parquet")
            n_rare = int(rr.pairs["rare"].sum())
            if n_rare == 0:
                raise CurateError(f"no rare pair: every pair co-occurs more than {cfg.max_cooccurrence} times "
                                  f"in {rr.captions} captions", fix="raise --max-cooccurrence or use a larger vocabulary")
            write_parquet(choose_pairs(rr.pairs, cfg.max_pairs, cfg.common_pairs, cfg.seed), out / "targets.parquet")
            return {"items": rr.pairs.height, "rare": n_rare, "captions": rr.captions, "files": rr.files,
                    "failed_files": rr.failed, "nmi": rr.nmi}

        rarity = stage(run_global("pairs", pairs_stage, out, ["pairs.parquet", "targets.parquet"]))
        targets = pl.read_parquet(out / "targets.parquet")
        encoder = _LazyEncoder(cfg.model, cfg.device)
        emb_dirs: list[Path | None] = [out / "pool" / "embeddings" if cfg.pool else None,
                                       out / "generated" / "embeddings" if cfg.generator else None]

        # 3. candidates -> candidates.parquet
        def candidates_stage() -> dict[str, Any]:
            frames, sources = [], {}
            if cfg.pool:
                df, sources["pool"] = pool_candidates(cfg, out, targets, encoder, ex, ex.workers, executor, address)
                frames.append(df)
            if cfg.generator:
                df, gen_dir = generator_candidates(cfg, out, targets, ex)
                _embed(sorted(gen_dir.glob("gen-*.tar")), out / "generated" / "embeddings", cfg, ex.workers,
                       executor, address)
                frames.append(df)
            cands = pl.concat(frames).join(targets.select("attr", "obj", "rare", "family"), on=["attr", "obj"],
                                           how="left").sort("source", "src_key", "attr", "obj")
            write_parquet(cands, out / "candidates.parquet")
            by_source = dict(cands.group_by("source").len().sort("source").iter_rows())
            return {"items": cands.height, "sources": sources, "by_source": by_source}

        cand_stats = stage(run_global("candidates", candidates_stage, out, ["candidates.parquet"]))
        truth = _build_truth(cfg, out) if has_truth else None
        if truth is not None and truth.stats.get("keys_matched") == 0:
            log.warning("ground truth (%s): none of its images is among the candidates' sources", truth.origin)

        # 4. filters -> filters/kept.parquet + their embeddings
        def filters_stage() -> dict[str, Any]:
            cands = pl.read_parquet(out / "candidates.parquet")
            dec = decode_check(cands, out, ex, cfg.min_resolution)
            cands = cands.join(dec.select("src_key", "src_shard", "ok", "reason", "width", "height"),
                               on=["src_key", "src_shard"], how="left").with_columns(pl.col("ok").fill_null(False))
            bad = dec.filter(~pl.col("ok")).select("src_key", "reason", "src_shard")
            pool_rejected = cand_stats.get("sources", {}).get("pool", {}).get("rejected", [])
            if pool_rejected:
                bad = pl.concat([pl.DataFrame(pool_rejected, schema={"src_key": pl.String, "reason": pl.String},
                                              orient="row").with_columns(pl.lit(None, pl.String).alias("src_shard")),
                                 bad])
            if bad.height:
                write_parquet(bad, out / "filters" / "rejected_images.parquet")
                log.warning("%d candidate image(s) failed the decode/resolution check "
                            "(see filters/rejected_images.parquet)", bad.height)
            img = _embeddings_for(cands, emb_dirs)
            fc = FilterConfig(cfg.min_resolution, cfg.object_topk, cfg.attribute_check, cfg.comp_threshold,
                              cfg.dedup_threshold, cfg.images_per_pair, cfg.min_images_per_pair)
            res = apply_filters(cands, img, vocab, encoder, fc, out, _chooser(cfg, truth) if cfg.calibrate else None)
            kept, kept_img, funnel, dropped = res.kept, res.img, res.funnel, res.dropped
            if kept.height == 0:
                raise CurateError("every candidate was filtered out", where=str(out),
                                  fix="lower --min-images-per-pair or --comp-threshold, raise --retrieve-k, "
                                      "or add a generator")
            write_parquet(kept, out / KEPT)
            with atomic_open(out / KEPT_EMB, "wb") as f:
                np.save(f, kept_img.astype(np.float32), allow_pickle=False)
            write_parquet(res.record, out / FUNNEL_RECORD)
            stats = {"items": cands.height, "funnel": [f.__dict__ for f in funnel], "dropped_pairs": dropped,
                     "rejected_at_ingest": len(pool_rejected)}
            if res.calibration is not None:
                write_json(out / CALIBRATION, res.calibration)
                stats["calibration"] = {k: v for k, v in res.calibration.items() if k != "points"}
            return stats

        if not (out / FUNNEL_RECORD).exists():  # a folder filtered before the record existed: filter again
            Ledger(out, "filters").reset()        # (deterministic: the same kept images)
        filt = stage(run_global("filters", filters_stage, out,
                                [KEPT, KEPT_EMB, FUNNEL_RECORD] + ([CALIBRATION] if cfg.calibrate else [])))

        # 5. output: shards, manifest, embeddings, exports
        def output_stage() -> dict[str, Any]:
            kept = pl.read_parquet(out / KEPT)
            kept_img = np.load(out / KEPT_EMB)
            kept = kept.with_columns(
                pl.format("{} {}", "attr", "obj").alias("pair"),
                pl.struct("source", "src_key", "attr", "obj").map_elements(
                    lambda r: sample_key(r["source"], r["src_key"], r["attr"], r["obj"]),
                    return_dtype=pl.String).alias("key"),
            )
            kept = assign_splits(kept.with_row_index("_i"), cfg).sort("key")
            key_shard = write_dataset_shards(kept, out, min_shards=cfg.min_shards_per_split)
            cols = ["key", "attr", "obj", "pair", "family", "rare", "split", "source", "score_comp",
                    "score_retrieval", "obj_rank", "width", "height", "src_key"]
            manifest = kept.select([c for c in cols if c in kept.columns]).join(key_shard, on="key", how="inner")
            manifest = manifest.with_columns(pl.lit(None, dtype=pl.String).alias("review_status"))
            write_manifest(manifest, out)
            # embeddings of the samples written (an image lost since the decode check has no row)
            written = kept["key"].is_in(key_shard["key"].to_list()).to_numpy()
            write_embeddings(manifest, kept_img[kept["_i"].to_numpy()][written], out, cfg.model)
            from .exports import export

            exports = {fmt: str(export(fmt, out, manifest)) for fmt in cfg.export}
            return {"items": manifest.height, "exports": exports}

        output = stage(run_global("output", output_stage, out, ["manifest.parquet", "shards"]))
        manifest = pl.read_parquet(out / "manifest.parquet")

        funnel = [FunnelRow("vocabulary", len(vocab.attributes) * len(vocab.objects), 0,
                            f"{len(vocab.attributes)} attributes x {len(vocab.objects)} objects"),
                  FunnelRow(f"rare pairs (co-occurrence <= {cfg.max_cooccurrence})", rarity["rare"],
                            len(vocab.attributes) * len(vocab.objects) - rarity["rare"],
                            f"{rarity['captions']:,} captions in {rarity['files']} file(s), NMI {rarity['nmi']:.4f}"),
                  FunnelRow("candidates", cand_stats["items"], 0,
                            ", ".join(f"{k}: {v}" for k, v in sorted(cand_stats["by_source"].items())))]
        source_stats = {k: {n: v for n, v in st.items() if n != "rejected"}
                        for k, st in cand_stats.get("sources", {}).items()}
        if filt["rejected_at_ingest"]:
            source_stats["pool"]["rejected_at_ingest"] = filt["rejected_at_ingest"]
            funnel.append(FunnelRow("pool images refused at ingest", 0, filt["rejected_at_ingest"],
                                    "undecodable, empty, too small or too large (bomb guard)"))
        funnel += [FunnelRow(**row) for row in filt["funnel"]]
        funnel.append(FunnelRow("written", manifest.height, 0,
                                f"{manifest['pair'].n_unique()} pairs, "
                                f"{manifest.filter(pl.col('rare')).height} rare-pair images"))
        truth_rows, truth_info = None, None
        if truth is not None:
            cand_m, after, final, truth_info = _measure_truth(truth, cfg, out, targets, len(filt["funnel"]), manifest)
            truth_rows = [None, None, cand_m, *([None] if filt["rejected_at_ingest"] else []), *after, final]
        counts = {
            "samples": manifest.height,
            "pairs": manifest["pair"].n_unique(),
            "rare_pairs_found": rarity["rare"],
            "rare_pairs_kept": manifest.filter(pl.col("rare"))["pair"].n_unique(),
            "seen_pairs_kept": manifest.filter(~pl.col("rare"))["pair"].n_unique(),
            "splits": dict(manifest.group_by("split").len().sort("split").iter_rows()),
            "dropped_pairs": filt["dropped_pairs"],
            "captions_scanned": rarity["captions"],
            "nmi": rarity["nmi"],
        }
        info = {
            "name": out.resolve().name,
            "builder": "imagenet-ao",
            "config": run_cfg,
            "versions": _versions(),
            "counts": counts,
            "vocabulary": {"objects": vocab.object_names, "attributes": vocab.attribute_names},
            "funnel": [funnel_entry(f, m) for f, m in zip(funnel, truth_rows or [None] * len(funnel), strict=True)],
            "sources": source_stats,
            "exports": output["exports"],
            "rarity": {"nmi": rarity["nmi"], "captions": rarity["captions"], "files": rarity["files"],
                       "failed_files": rarity["failed_files"]},
        }
        if truth_info is not None:
            info["truth"] = truth_info
        if filt.get("calibration"):
            info["calibration"] = {**filt["calibration"], "curve": CALIBRATION}
        write_json(out / "dataset.json", info)
        from .card import write_card

        write_card(out, info, manifest)
        print_table(summary_table(stages, title="curate build imagenet-ao"))
        calibration = read_json(out / CALIBRATION) if filt.get("calibration") else None
        return BuildResult(out, funnel, counts, stages, truth_rows, calibration)


def funnel_entry(row: FunnelRow, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """A funnel row as ``dataset.json`` holds it: with ground truth, the precision of what it kept and the
    recall of true rare-pair images (and the counts behind them); without, no such keys at all."""
    if metrics is None:
        return dict(row.__dict__)
    detail = {k: v for k, v in metrics.items() if k not in ("precision", "recall")}
    return {**row.__dict__, "precision": metrics["precision"], "recall": metrics["recall"], "truth": detail}


# --- ground truth and calibration ----------------------------------------------------------------
def _pool_keys(cfg: BuildConfig, out: Path) -> list[str]:
    emb = out / "pool" / "embeddings"
    return _key_shards(emb)["key"].to_list() if cfg.pool and emb.exists() else []


def _build_truth(cfg: BuildConfig, out: Path) -> Truth | None:
    """The build's truth with its keys matched to the candidates' sources (every embedded pool image,
    every generated image)."""
    truth = load_truth(cfg, out)
    if truth is None:
        return None
    cands = pl.read_parquet(out / "candidates.parquet", columns=["source", "src_key"])
    universe = {"pool": set(_pool_keys(cfg, out)),
                "generator": set(cands.filter(pl.col("source") == "generator")["src_key"].to_list())}
    return truth.aligned(universe)


def _chooser(cfg: BuildConfig, truth: Truth | None) -> Chooser:
    def choose(frame: pl.DataFrame) -> tuple[float | None, float, dict[str, Any]]:
        verdicts = truth.verdicts(frame) if truth is not None else pl.lit(None, pl.String).alias("verdict")
        cal = calibrate(frame.with_columns(verdicts), cfg.images_per_pair, cfg.min_images_per_pair,
                        cfg.target_precision, (0.0 if cfg.attribute_check else None, cfg.comp_threshold))
        cal["truth"] = truth.origin if truth is not None else "none"
        return cal["chosen"]["margin"], cal["chosen"]["comp"], cal

    return choose


def _measure_truth(truth: Truth, cfg: BuildConfig, out: Path, targets: pl.DataFrame, n_filter_rows: int,
                   manifest: pl.DataFrame) -> tuple[dict, list[dict], dict, dict[str, Any]]:
    """Precision and recall of the candidates, of what each filter row kept and of the dataset."""
    record = pl.read_parquet(out / FUNNEL_RECORD)
    units = rare_units(truth, targets, _pool_keys(cfg, out), record.filter(pl.col("source") == "generator"))
    cand_m, after, final = evaluate_funnel(record, n_filter_rows, manifest, truth, units)
    if final["known"] == 0:
        log.warning("ground truth (%s) covers none of the dataset's images", truth.origin)
    info = {"source": truth.origin, "images_with_truth": truth.images, **truth.stats, "rare_units": units.total,
            "rare_units_by_source": units.by_source, "coverage": {k: round(v, 4) for k, v in units.coverage.items()},
            "precision": final["precision"], "recall": final["recall"],
            "rare_precision": final["rare_precision"],
            "definitions": {"precision": "share of the kept images that show their label's attribute and object "
                                         "(estimated per source from its images with truth)",
                            "recall": "share of the true rare-pair images of the sources (pool images showing a "
                                      "mined rare pair; generated images of their own rare pair) kept under "
                                      "that pair's label (estimated per source from its images with truth)"}}
    return cand_m, after, final, info


class _LazyEncoder:
    """The embedding model, loaded on first use: a rerun whose model stages are done never loads it."""

    def __init__(self, spec: str, device: str):
        self.spec, self.device, self._enc = spec, device, None

    def __getattr__(self, name: str) -> Any:
        if self._enc is None:
            from curate.embed.backends import cached_model

            self._enc = cached_model(self.spec, self.device)
        return getattr(self._enc, name)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for d in ("curate", "torch", "open_clip_torch", "polars", "webdataset", "faiss-cpu"):
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            pass
    return out
