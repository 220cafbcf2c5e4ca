"""`curate build imagenet-ao`: vocabulary -> rarity scan -> candidates -> filters -> dataset.

The build is a pipeline of named steps (:data:`STEPS`) run in order by
:func:`curate.ledger.run_steps`. Each step's done marker records the fingerprint of what it read
(files by content, options by value, and the outputs and stats of the steps it reads), so a rerun
redoes exactly the steps whose inputs changed, and the steps after them only when what they read
changed; everything else is skipped. Inside, the parallel sub-stages resume per task the same way.

=========== ================================================== ==========================================
step        reads                                              writes
=========== ================================================== ==========================================
pairs       caption files, vocabulary; caption_column,         ``pairs.parquet`` (every pair's co-occurrence,
            max_cooccurrence                                   rare or not); sub-stage ``rarity scan``
targets     pairs; max_pairs, common_pairs, seed               ``targets.parquet`` (the pairs to mine)
candidates  targets; pool, generator, model (+ their files),   ``candidates.parquet``, ``pool/`` and
            retrieve_k, generator_images, image_size,          ``generated/`` (shards, embeddings, index);
            min_resolution, seed                               sub-stages pack pool, embed, generate, index
filters     candidates (+ embeddings, shards), vocabulary,     ``filters/kept.parquet``, ``kept_emb.npy``,
            model, filter options (+ the truth, --calibrate)   ``funnel.parquet`` (+ ``calibration.json``)
output      filters, the kept images' shards; seed, split      ``manifest.parquet``, ``shards/``,
            fractions, shards per split, exports, model        ``embeddings/``, ``exports/``
truth       (with ground truth) the truth's files, targets,    its stats only: precision and recall of
            candidates, filters, output                        every funnel row (measures, never filters)
card        every step's stats and outputs                     ``dataset.json``, ``README.md`` + charts
=========== ================================================== ==========================================

Ground truth only measures (the ``truth`` step) unless ``--calibrate`` lets it choose the filter
thresholds (then it is an input of ``filters``): adding ``--truth`` to a finished build adds the
numbers and redoes nothing else. A rerun after kill -9 skips what is done and, with the same inputs
and seed, writes byte-identical outputs.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.config import to_dict
from curate.errors import CurateError
from curate.executor import Executor, get_executor
from curate.fsutil import atomic_open, read_json, write_json, write_parquet
from curate.ledger import Step, StepContext, run_steps
from curate.log import StageSummary, print_table, summary_table
from curate.manifest import write_manifest
from curate.outdir import OutputDir

from .calibrate import CALIBRATION, calibrate
from .candidates import (
    choose_pairs,
    embed_into,
    generator_candidates,
    key_shards,
    pool_candidates,
    spec_parts,
)
from .config import BuildConfig
from .dataset import assign_splits, sample_key, write_dataset_shards, write_embeddings
from .filters import FilterConfig
from .funnel import Chooser, FunnelRow, apply_filters, decode_check, embeddings_for
from .info import Assembly, dataset_info
from .rarity import list_caption_files, scan_corpus
from .truth import Truth, evaluate_funnel, load_truth, rare_units, read_truth_file, truth_spec
from .vocab import Vocabulary, load_vocabulary

log = logging.getLogger(__name__)

KEPT, KEPT_EMB = "filters/kept.parquet", "filters/kept_emb.npy"
FUNNEL_RECORD = "filters/funnel.parquet"  # every candidate: the filter row that removed it, its scores
REJECTED = "filters/rejected_images.parquet"
CALIBRATION_ONLY = ("truth", "calibrate", "target_precision")
SEEN_OPTIONS = ("seen_images_per_pair", "seen_retrieve_k", "seen_generator_images")  # 0: as for rare pairs


@dataclass
class BuildResult:
    out: Path
    funnel: list[FunnelRow]
    counts: dict[str, Any]
    stages: list[StageSummary] = field(default_factory=list)
    truth: list[dict[str, Any] | None] | None = None   # per funnel row: precision, recall, ... (None: no truth)
    calibration: dict[str, Any] | None = None          # --calibrate: chosen point, curve (filters/calibration.json)


class _LazyEncoder:
    """The embedding model, loaded on first use: a rerun whose model stages are done never loads it."""

    def __init__(self, spec: str, device: str):
        self.spec, self.device, self._enc = spec, device, None

    def __getattr__(self, name: str) -> Any:
        if self._enc is None:
            from curate.embed.backends import cached_model

            self._enc = cached_model(self.spec, self.device)
        return getattr(self._enc, name)


@dataclass
class BuildContext(StepContext):
    """What the steps of a build share (``out``, ``stats`` and ``summaries`` come from StepContext)."""

    cfg: BuildConfig = field(default_factory=BuildConfig)
    ex: Executor | None = None
    executor: str = "local"
    address: str | None = None
    run_cfg: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def vocab(self) -> Vocabulary:
        return load_vocabulary(self.cfg.objects, self.cfg.attributes)

    @cached_property
    def encoder(self) -> _LazyEncoder:
        return _LazyEncoder(self.cfg.model, self.cfg.device)

    @cached_property
    def truth(self) -> Truth | None:
        """The build's ground truth, keys matched to the candidates' sources (needs the candidates)."""
        truth = build_truth(self.cfg, self.out)
        if truth is not None and truth.stats.get("keys_matched") == 0:
            log.warning("ground truth (%s): none of its images is among the candidates' sources", truth.origin)
        return truth

    def options(self, *names: str) -> dict[str, Any]:
        """The named options' values; a seen-pair option (``SEEN_OPTIONS``) left at 0 (off) is left out, so builds made
        before it existed keep their fingerprints."""
        return {n: getattr(self.cfg, n) for n in names if not (n in SEEN_OPTIONS and getattr(self.cfg, n) == 0)}


# --- step: pairs (rarity scan) -------------------------------------------------------------------
def pairs_inputs(ctx: BuildContext) -> list[Any]:
    return [list_caption_files(ctx.cfg.captions), asdict(ctx.vocab), ctx.options("caption_column", "max_cooccurrence")]


def pairs_step(ctx: BuildContext) -> dict[str, Any]:
    """Count every (attribute, object) pair in the captions; pairs seen <= max_cooccurrence times are rare."""
    cfg = ctx.cfg
    rr = scan_corpus(list_caption_files(cfg.captions), ctx.vocab, ctx.out, ctx.ex, cfg.caption_column,
                     cfg.max_cooccurrence)
    ctx.summaries.append(rr.summary)
    n_rare = int(rr.pairs["rare"].sum())
    if n_rare == 0:
        raise CurateError(f"no rare pair: every pair co-occurs more than {cfg.max_cooccurrence} times "
                          f"in {rr.captions} captions", fix="raise --max-cooccurrence or use a larger vocabulary")
    write_parquet(rr.pairs, ctx.out / "pairs.parquet")
    return {"items": rr.pairs.height, "rare": n_rare, "captions": rr.captions, "files": rr.files,
            "failed_files": rr.failed, "nmi": rr.nmi}


# --- step: targets ---------------------------------------------------------------------------------
def targets_step(ctx: BuildContext) -> dict[str, Any]:
    """The rare pairs to mine (most surprising first, at most max_pairs) and some common ones."""
    cfg = ctx.cfg
    targets = choose_pairs(pl.read_parquet(ctx.out / "pairs.parquet"), cfg.max_pairs, cfg.common_pairs, cfg.seed)
    write_parquet(targets, ctx.out / "targets.parquet")
    return {"items": targets.height, "rare": int(targets["rare"].sum())}


# --- step: candidates ------------------------------------------------------------------------------
def pool_parts(spec: str | None) -> list[Any]:
    """A pool given as a folder of images, shards (a folder, a glob) or a URL list: the spec and its content."""
    from curate.shards import list_shards

    from .pool import pool_kind

    if not spec:
        return [spec]
    return [spec, list_shards(spec) if pool_kind(spec) == "shards" else Path(spec)]


def candidates_inputs(ctx: BuildContext) -> list[Any]:
    cfg = ctx.cfg
    return [pool_parts(cfg.pool), spec_parts(cfg.generator), spec_parts(cfg.model),
            ctx.options("retrieve_k", "generator_images", "image_size", "min_resolution", "seed", "decode",
                        "seen_retrieve_k", "seen_generator_images")]


def candidates_outputs(ctx: BuildContext) -> list[str]:
    """The candidates, and the embeddings the filters read."""
    return ["candidates.parquet", *(["pool/embeddings"] if ctx.cfg.pool else []),
            *(["generated/embeddings"] if ctx.cfg.generator else [])]


def candidates_step(ctx: BuildContext) -> dict[str, Any]:
    """Images for every target pair: retrieved from the pool, generated, or both; embedded."""
    cfg, out, ex = ctx.cfg, ctx.out, ctx.ex
    targets = pl.read_parquet(out / "targets.parquet")
    frames, sources = [], {}
    if cfg.pool:
        df, sources["pool"] = pool_candidates(cfg, out, targets, ctx.encoder, ex, ex.workers, ctx.executor,
                                              ctx.address)
        frames.append(df)
    if cfg.generator:
        df, gen_shards = generator_candidates(cfg, out, targets, ex)
        embed_into(gen_shards, out / "generated" / "embeddings", cfg, ex.workers, ctx.executor, ctx.address)
        frames.append(df)
    cands = pl.concat(frames).join(targets.select("attr", "obj", "rare", "family"), on=["attr", "obj"],
                                   how="left").sort("source", "src_key", "attr", "obj")
    write_parquet(cands, out / "candidates.parquet")
    by_source = dict(cands.group_by("source").len().sort("source").iter_rows())
    return {"items": cands.height, "sources": sources, "by_source": by_source, "decode": cfg.decode}


# --- step: filters ---------------------------------------------------------------------------------
def pool_rejected(ctx: BuildContext) -> list[list[str]]:
    """[key, reason] of the pool images refused when the pool was packed (the candidates step's stats)."""
    return ctx.stats["candidates"].get("sources", {}).get("pool", {}).get("rejected", [])


def filters_inputs(ctx: BuildContext) -> list[Any]:
    cfg = ctx.cfg
    opts = ctx.options("min_resolution", "object_topk", "attribute_check", "comp_threshold", "dedup_threshold",
                       "images_per_pair", "min_images_per_pair", "seen_images_per_pair", "calibrate")
    calibration = [truth_parts(ctx), cfg.target_precision] if cfg.calibrate else None
    return [asdict(ctx.vocab), spec_parts(cfg.model), opts, calibration, pool_rejected(ctx)]


def filters_outputs(ctx: BuildContext) -> list[str]:
    return [KEPT, KEPT_EMB, FUNNEL_RECORD] + ([CALIBRATION] if ctx.cfg.calibrate else [])


def _decoded_candidates(ctx: BuildContext) -> tuple[pl.DataFrame, int]:
    """The candidates with their decode check (``ok``, ``reason``, size); images refused at ingest or by
    the check are listed in ``filters/rejected_images.parquet``. Returns them and the ingest refusals."""
    cands = pl.read_parquet(ctx.out / "candidates.parquet")
    dec = decode_check(cands, ctx.out, ctx.ex, ctx.cfg.min_resolution)
    cands = cands.join(dec.select("src_key", "src_shard", "ok", "reason", "width", "height"),
                       on=["src_key", "src_shard"], how="left").with_columns(pl.col("ok").fill_null(False))
    bad = dec.filter(~pl.col("ok")).select("src_key", "reason", "src_shard")
    rejected = pool_rejected(ctx)
    if rejected:
        bad = pl.concat([pl.DataFrame(rejected, schema={"src_key": pl.String, "reason": pl.String}, orient="row")
                         .with_columns(pl.lit(None, pl.String).alias("src_shard")), bad])
    if bad.height:
        write_parquet(bad, ctx.out / REJECTED)
        log.warning("%d candidate image(s) failed the decode/resolution check (see %s)", bad.height, REJECTED)
    else:
        (ctx.out / REJECTED).unlink(missing_ok=True)  # one left by an earlier run on other candidates
    return cands, len(rejected)


def filters_step(ctx: BuildContext) -> dict[str, Any]:
    """Decode check, object zero-shot, attribute, composition, near-duplicates, cap per pair."""
    cfg, out = ctx.cfg, ctx.out
    cands, n_rejected = _decoded_candidates(ctx)
    img = embeddings_for(cands, [out / "pool" / "embeddings" if cfg.pool else None,
                                 out / "generated" / "embeddings" if cfg.generator else None])
    fc = FilterConfig(cfg.min_resolution, cfg.object_topk, cfg.attribute_check, cfg.comp_threshold,
                      cfg.dedup_threshold, cfg.images_per_pair, cfg.min_images_per_pair, cfg.seen_images_per_pair)
    res = apply_filters(cands, img, ctx.vocab, ctx.encoder, fc, out, chooser(cfg, ctx.truth) if cfg.calibrate else None)
    if res.kept.height == 0:
        raise CurateError("every candidate was filtered out", where=str(out),
                          fix="lower --min-images-per-pair or --comp-threshold, raise --retrieve-k, or add a generator")
    write_parquet(res.kept, out / KEPT)
    with atomic_open(out / KEPT_EMB, "wb") as f:
        np.save(f, res.img.astype(np.float32), allow_pickle=False)
    write_parquet(res.record, out / FUNNEL_RECORD)
    stats = {"items": cands.height, "funnel": [f.__dict__ for f in res.funnel], "dropped_pairs": res.dropped,
             "rejected_at_ingest": n_rejected}
    if res.calibration is not None:
        write_json(out / CALIBRATION, res.calibration)
        stats["calibration"] = {k: v for k, v in res.calibration.items() if k != "points"}
    return stats


# --- step: output ----------------------------------------------------------------------------------
def output_inputs(ctx: BuildContext) -> list[Any]:
    kept_shards = pl.read_parquet(ctx.out / KEPT, columns=["src_shard"])["src_shard"].unique().sort().to_list()
    return [[Path(s) for s in kept_shards], ctx.options("seed", "val_fraction", "seen_val_fraction",
                                                         "min_shards_per_split", "export", "model")]


def output_outputs(ctx: BuildContext) -> list[str]:
    return ["manifest.parquet", "shards", "embeddings"]


def output_step(ctx: BuildContext) -> dict[str, Any]:
    """Keys and splits; the kept images written as shards per split; manifest, embeddings, exports."""
    from .exports import export

    cfg, out = ctx.cfg, ctx.out
    kept = pl.read_parquet(out / KEPT).with_columns(
        pl.format("{} {}", "attr", "obj").alias("pair"),
        pl.struct("source", "src_key", "attr", "obj").map_elements(
            lambda r: sample_key(r["source"], r["src_key"], r["attr"], r["obj"]), return_dtype=pl.String).alias("key"),
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
    write_embeddings(manifest, np.load(out / KEPT_EMB)[kept["_i"].to_numpy()][written], out, cfg.model)
    exports = {fmt: str(export(fmt, out, manifest)) for fmt in cfg.export}
    return {"items": manifest.height, "exports": exports}


# --- step: truth (measures only) -------------------------------------------------------------------
def has_truth(ctx: BuildContext) -> bool:
    return truth_spec(ctx.cfg) is not None


def truth_parts(ctx: BuildContext) -> list[Any]:
    """What the build's truth is read from: a world's record, a truth file, the demo renderer's shards."""
    spec = truth_spec(ctx.cfg)
    if spec is None:
        return [None]
    kind, path = spec
    parts: list[Any] = [kind, str(path)]
    if kind == "world":
        from curate.world import meta_path, pool_table

        parts += [meta_path(path), pool_table(path)]
    elif kind == "file":
        parts.append(path)
    if ctx.cfg.generator == "demo":
        parts.append(ctx.out / "generated" / "shards")
    return parts


def build_truth(cfg: BuildConfig, out: Path) -> Truth | None:
    """The build's truth with its keys matched to the candidates' sources (every embedded pool image,
    every generated image)."""
    truth = load_truth(cfg, out)
    if truth is None:
        return None
    cands = pl.read_parquet(out / "candidates.parquet", columns=["source", "src_key"])
    universe = {"pool": set(_pool_keys(cfg, out)),
                "generator": set(cands.filter(pl.col("source") == "generator")["src_key"].to_list())}
    return truth.aligned(universe)


def _pool_keys(cfg: BuildConfig, out: Path) -> list[str]:
    emb = out / "pool" / "embeddings"
    return key_shards(emb)["key"].to_list() if cfg.pool and emb.exists() else []


def chooser(cfg: BuildConfig, truth: Truth | None) -> Chooser:
    """--calibrate: the attribute margin and composition threshold reaching the target precision."""
    def choose(frame: pl.DataFrame) -> tuple[float | None, float, dict[str, Any]]:
        verdicts = truth.verdicts(frame) if truth is not None else pl.lit(None, pl.String).alias("verdict")
        cal = calibrate(frame.with_columns(verdicts), cfg.images_per_pair, cfg.min_images_per_pair,
                        cfg.target_precision, (0.0 if cfg.attribute_check else None, cfg.comp_threshold))
        cal["truth"] = truth.origin if truth is not None else "none"
        return cal["chosen"]["margin"], cal["chosen"]["comp"], cal

    return choose


def truth_step(ctx: BuildContext) -> dict[str, Any]:
    """Precision and recall of the candidates, of what each filter row kept and of the dataset."""
    truth, out = ctx.truth, ctx.out
    if truth is None:  # a demo generator's truth, yet no image of the demo renderer
        return {"measured": False}
    targets = pl.read_parquet(out / "targets.parquet")
    record = pl.read_parquet(out / FUNNEL_RECORD)
    manifest = pl.read_parquet(out / "manifest.parquet")
    units = rare_units(truth, targets, _pool_keys(ctx.cfg, out), record.filter(pl.col("source") == "generator"))
    cand_m, after, final = evaluate_funnel(record, len(ctx.stats["filters"]["funnel"]), manifest, truth, units)
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
    return {"measured": True, "candidates": cand_m, "filter_rows": after, "written": final, "info": info}


# --- step: card ------------------------------------------------------------------------------------
def assembly(ctx: BuildContext) -> Assembly:
    """The funnel, counts and dataset.json from the steps' stats (see :mod:`.info`)."""
    stats = dict(ctx.stats)
    if not stats.get("truth", {}).get("measured"):
        stats.pop("truth", None)
    return dataset_info(ctx.out, ctx.run_cfg, ctx.vocab, stats, pl.read_parquet(ctx.out / "manifest.parquet"),
                        CALIBRATION)


def card_after(ctx: BuildContext) -> list[str]:
    return ["pairs", "candidates", "filters", "output", *(["truth"] if has_truth(ctx) else [])]


def card_step(ctx: BuildContext) -> dict[str, Any]:
    """``dataset.json`` and the card (``README.md``, contact sheets, charts)."""
    from .card import write_card

    info = assembly(ctx).info
    write_json(ctx.out / "dataset.json", info)
    write_card(ctx.out, info, pl.read_parquet(ctx.out / "manifest.parquet"))
    return {"items": 1}


STEPS = [
    Step("pairs", pairs_step, ["pairs.parquet"], inputs=pairs_inputs),
    Step("targets", targets_step, ["targets.parquet"], inputs=lambda ctx: ctx.options("max_pairs", "common_pairs",
                                                                                        "seed"), after=["pairs"]),
    Step("candidates", candidates_step, candidates_outputs, inputs=candidates_inputs, after=["targets"]),
    Step("filters", filters_step, filters_outputs, inputs=filters_inputs, after=["candidates"]),
    Step("output", output_step, output_outputs, inputs=output_inputs, after=["filters"]),
    Step("truth", truth_step, inputs=truth_parts, after=["targets", "candidates", "filters", "output"],
         when=has_truth),
    Step("card", card_step, ["dataset.json", "README.md"], inputs=lambda ctx: assembly(ctx).info,
         after=card_after),
]


# --- the whole build -------------------------------------------------------------------------------
def fingerprint_config(cfg: BuildConfig) -> dict[str, Any]:
    """The options that decide the dataset (the output folder's fingerprint and ``dataset.json``'s
    config). ``truth`` only measures what was built, unless it chooses the thresholds
    (``calibrate``): without calibration these keys are left out, so adding ``--truth`` to a
    finished build only adds the numbers, and folders built before the keys existed resume."""
    d = to_dict(cfg)
    d.pop("decode", None)  # how JPEGs are decoded is an input of the candidates step: a change redoes it
    if not cfg.calibrate:
        for k in CALIBRATION_ONLY:
            d.pop(k, None)
    return d


def check_options(cfg: BuildConfig) -> None:
    """The errors a build's options can have, before any stage runs."""
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
    if cfg.calibrate and spec is None:
        raise CurateError("--calibrate needs labelled images and this build has no ground truth",
                          fix="pass --truth FILE (key, attr, obj), build from a demo world, or drop --calibrate")


def build(cfg: BuildConfig, workers: int | None = None, executor: str = "local", address: str | None = None,
          overwrite: bool = False) -> BuildResult:
    """Run :data:`STEPS` through the ledger (see the module docstring): a rerun after kill -9 skips
    what is done and ends with byte-identical outputs; a changed input redoes what depends on it."""
    check_options(cfg)
    out = Path(cfg.out)
    run_cfg = fingerprint_config(cfg)
    with OutputDir(out, "build imagenet-ao", run_cfg, overwrite=overwrite):
        ctx = BuildContext(out, cfg=cfg, ex=get_executor(executor, workers, address), executor=executor,
                           address=address, run_cfg=run_cfg)
        _ = ctx.vocab  # a bad vocabulary fails before any step
        run_steps(STEPS, ctx)
        done = assembly(ctx)
        print_table(summary_table(ctx.summaries, title="curate build imagenet-ao"))
        calibration = read_json(out / CALIBRATION) if ctx.stats["filters"].get("calibration") else None
        return BuildResult(out, done.funnel, done.counts, ctx.summaries, done.truth_rows, calibration)
