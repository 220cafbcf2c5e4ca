"""Finding candidate images for the target pairs: retrieval from an image pool, a generator, or both.

Used by the ``candidates`` step of :mod:`builders.imagenet_ao.pipeline`. Every sub-stage runs through
the ledger with the fingerprint of what it reads (pool files, shards, the model, the prompts), so a
rerun redoes exactly the part whose inputs changed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.executor import LocalExecutor
from curate.fingerprint import fingerprint, spec_paths
from curate.fsutil import atomic_open
from curate.ledger import Task, run_global, run_stage
from curate.shards import iter_shard, shard_name

from .config import BuildConfig
from .text import RETRIEVAL_TEMPLATES

GEN_CHUNK = 16  # pairs per generator task
CANDIDATE_SCHEMA = {"src_key": pl.String, "attr": pl.String, "obj": pl.String, "source": pl.String,
                    "score_retrieval": pl.Float64, "src_shard": pl.String}


def spec_parts(spec: str | None) -> list[Any]:
    """What a model or generator spec stands for, to fingerprint: the spec and the content of the local
    files it names (:func:`curate.fingerprint.spec_paths`; a generator's ``?options`` aside)."""
    return [spec, spec_paths(spec.split("?", 1)[0] if spec else spec)]


def cached_text_embeddings(out: Path, rel: str, encoder, names: list[str], templates: list[str],
                           model: str) -> np.ndarray:
    """Text embeddings of ``names`` (averaged over ``templates``) saved at ``OUT/rel``, computed again
    only when the names, the templates or the model changed (a ledger stage per file)."""
    from curate.embed.zeroshot import class_text_embeddings

    def compute() -> dict[str, Any]:
        arr = class_text_embeddings(encoder, names, templates)
        with atomic_open(out / rel, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        return {"items": len(names)}

    run_global(f"text {rel}", compute, out, [rel], inputs=fingerprint(names, list(templates), spec_parts(model)))
    return np.load(out / rel)


# --- which pairs to mine -----------------------------------------------------------------------
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


# --- candidates ------------------------------------------------------------------------------
def per_pair(targets: pl.DataFrame, rare_value: int, seen_value: int) -> list[int]:
    """A per-pair count for each target pair: ``seen_value`` for a seen (not rare) pair when set
    (``--seen-retrieve-k``, ``--seen-generator-images``), ``rare_value`` otherwise."""
    return [seen_value if seen_value and not rare else rare_value for rare in targets["rare"].to_list()]


def embed_into(shards: list[Path], out: Path, cfg: BuildConfig, workers: int, executor: str,
               address: str | None) -> None:
    """Embed ``shards`` into ``out``: resumes when the shards and the model are those of the last run,
    starts that folder over when they are not (the build owns it); each shard's task records the
    fingerprint of its content."""
    from curate.embed.stage import EmbedConfig, embed_shards

    embed_shards([str(s) for s in shards], out, EmbedConfig(model=cfg.model, batch_size=cfg.batch_size,
                                                            captions=False, device=cfg.device,
                                                            decode=cfg.decode),
                 workers=workers, executor=executor, address=address, overwrite=True)


def key_shards(emb_dir: Path) -> pl.DataFrame:
    """Each embedded image's key and the shard it came from."""
    from curate.embed.store import read_metadata

    return read_metadata(emb_dir).select("key", "shard")


def pool_candidates(cfg: BuildConfig, out: Path, targets: pl.DataFrame, encoder, ex, workers: int,
                    executor: str, address: str | None) -> tuple[pl.DataFrame, dict]:
    """Pack/download the pool, embed it, index it and retrieve ``retrieve_k`` images per target pair."""
    from curate.index import SearchIndex, build_index

    from .pool import ingest_pool

    shards, stats = ingest_pool(cfg.pool, out / "pool" / "shards", ex, cfg.image_size, workers, cfg.min_resolution,
                                cfg.download_timeout)
    emb_dir = out / "pool" / "embeddings"
    embed_into(shards, emb_dir, cfg, workers, executor, address)
    idx_dir = out / "pool" / "index"

    def index_stage() -> dict[str, Any]:
        build_index(emb_dir, idx_dir)
        return {}

    run_global("pool index", index_stage, out, ["pool/index"], inputs=fingerprint(emb_dir))
    index = SearchIndex.load(idx_dir)
    names = [f"{a} {o}" for a, o in targets.select("attr", "obj").iter_rows()]
    q = cached_text_embeddings(out, "text/retrieval_queries.npy", encoder, names, RETRIEVAL_TEMPLATES, cfg.model)
    ks_per_pair = per_pair(targets, cfg.retrieve_k, cfg.seen_retrieve_k)
    keys, scores = index.search(q, max(ks_per_pair, default=cfg.retrieve_k))
    shard_of = dict(key_shards(emb_dir).iter_rows())
    shard_paths = {p.name: str(p) for p in shards}
    rows = []
    for (attr, obj), ks, ss, n in zip(targets.select("attr", "obj").iter_rows(), keys, scores, ks_per_pair,
                                      strict=True):
        for k, s in zip(ks[:n], ss[:n], strict=False):
            if k is None or k == "":
                continue
            sh = shard_of.get(k, "")
            rows.append({"src_key": k, "attr": attr, "obj": obj, "source": "pool", "score_retrieval": float(s),
                         "src_shard": shard_paths.get(sh, str(Path(sh)))})
    stats["embedding_dir"] = str(emb_dir)
    return pl.DataFrame(rows, schema=CANDIDATE_SCHEMA), stats


def generator_candidates(cfg: BuildConfig, out: Path, targets: pl.DataFrame, ex) -> tuple[pl.DataFrame, list[Path]]:
    """``generator_images`` images per target pair, in shards of ``GEN_CHUNK`` pairs (each task records
    the fingerprint of the generator, its pairs, the count and the seed); returns the rows and shards."""
    from curate.hub import write_shard_card

    from .generators import generate_task, in_process, loaded_generator

    loaded_generator(cfg.generator, cfg.device)  # fail fast with a clear error (and keep a model loaded)
    if in_process(cfg.generator) and isinstance(ex, LocalExecutor):
        ex = LocalExecutor(1)  # in this process, where the pipeline is loaded
    gen_dir = out / "generated" / "shards"
    counts = per_pair(targets, cfg.generator_images, cfg.seen_generator_images)
    by_n: dict[int, list[list[str]]] = {}  # pairs that get the same number of images, in target order
    for pair, n in zip(targets.select("attr", "obj").iter_rows(), counts, strict=True):
        by_n.setdefault(n, []).append(list(pair))
    generator = spec_parts(cfg.generator)
    chunks = [(n, ps[j:j + GEN_CHUNK]) for n, ps in by_n.items() for j in range(0, len(ps), GEN_CHUNK)]
    tasks = []
    for i, (n, chunk) in enumerate(chunks):
        args = {"spec": cfg.generator, "pairs": chunk, "n": n, "seed": cfg.seed,
                "out": str(gen_dir), "name": shard_name("gen", i), "device": cfg.device}
        tasks.append(Task(f"gen-{i:06d}", args, inputs=fingerprint(generator, args["pairs"], args["n"], args["seed"])))
    res = run_stage("generate", generate_task, tasks, out, ex, unit="shards")
    if res.errors:
        raise CurateError(f"{len(res.errors)} generator task(s) failed: {next(iter(res.errors.values())).splitlines()[0]}")
    write_shard_card(gen_dir, "generated candidates", f"Images from the generator `{cfg.generator}`, "
                     f"{cfg.generator_images} per pair, before any filter (the `candidates` stage of the build).")
    shards = [gen_dir / t.args["name"] for t in tasks]  # this run's shards (not one left by a larger run)
    rows = []
    for shard in shards:
        for s in iter_shard(shard):
            meta = json.loads(s["json"])
            rows.append({"src_key": s["__key__"], "attr": meta["attr"], "obj": meta["obj"], "source": "generator",
                         "score_retrieval": float("nan"), "src_shard": str(shard)})
    return pl.DataFrame(rows, schema=CANDIDATE_SCHEMA), shards
