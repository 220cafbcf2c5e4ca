"""``build_triplets``: source -> features -> mining -> edit texts -> exports, each stage resumable.

Stages leave done markers (curate.ledger.Ledger) next to their outputs; the output folder is
guarded by curate.outdir.OutputDir, so rerunning the same command resumes (done stages are
skipped, LLM answers come from the cache) and a different config is refused unless
``--overwrite``. Everything is deterministic for a given dataset and ``--seed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from curate.config import to_dict
from curate.errors import CurateError
from curate.fsutil import read_json, write_json, write_parquet, write_text
from curate.ledger import run_global
from curate.log import StageSummary
from curate.outdir import OutputDir

from . import exports
from .config import TripletsConfig
from .edits import add_edit_texts
from .mining import build_pool, mine
from .source import image_features, load_source

logger = logging.getLogger(__name__)

PARQUET = "triplets.parquet"
CONTRACT_COLUMNS = ["id", "reference", "target", "edit_text", "mode", "split", "ref_attr", "ref_obj",
                    "tgt_attr", "tgt_obj", "negatives"]

# where each benchmark loader's data root points, relative to the triplets folder
EXPORT_ROOTS = {
    "cirr": ".  (CLIP4Cir CIRRDataset: cirr_dataset = this folder; files under cirr/)",
    "fashioniq": "fashioniq  (CLIP4Cir FashionIQDataset: fashionIQ_dataset = fashioniq/, dress_types = the "
                 "names in fashioniq/categories.json; objects -> names in fashioniq/category_map.json)",
    "circo": "circo  (CIRCODataset data_path = circo/)",
    "shards": "shards  (WebDataset: shards/{train,val,test}-NNNNNN.tar with ref.jpg, tgt.jpg, json; "
              "datasets.load_dataset(THIS_FOLDER) reads them through README.md)",
    "genecis": "genecis/{val,test}  (GeneCIS JSON: genecis/SPLIT/TASK.json, COCO-style val_image_id records, "
               "coco_root = genecis/images)",
}


def default_dataset() -> Path:
    from curate.paths import default_demo_dir

    p = default_demo_dir() / "imagenet-ao"
    if not (p / "manifest.parquet").exists():
        raise CurateError(f"no demo dataset at {p}", fix="run `curate build imagenet-ao` first, or pass DATASET")
    return p


def build_triplets(cfg: TripletsConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run every stage not yet done; returns the summary written to ``triplets.json``."""
    cfg.validate()
    out = Path(cfg.out)
    with OutputDir(out, "triplets", to_dict(cfg), overwrite=overwrite):
        return _run(cfg, out)


def _stage(out: Path, name: str, outputs: list[str], fn: Callable[[], dict[str, Any]],
           summaries: list[StageSummary]) -> dict[str, Any]:
    res = run_global(f"triplets {name}", fn, out, outputs)
    summaries.append(res.summary)
    return dict(res.stats)


def _run(cfg: TripletsConfig, out: Path) -> dict[str, Any]:
    meta = out / ".curate"
    summaries: list[StageSummary] = []
    source = load_source(cfg.dataset, cfg.include_rejected)
    info: dict[str, Any] = {"source_dataset": str(Path(cfg.dataset).resolve()), "source_kind": source.kind,
                            "samples": source.samples.height, "rejected_excluded": source.rejected,
                            "missing_images": len(source.missing)}
    write_text(out / "missing_images.txt", "".join(f"{k}\t{why}\n" for k, why in source.missing))

    def do_mine() -> dict[str, Any]:
        feats = image_features(source, cfg.model, cfg.device, meta)
        pool = build_pool(source.samples, feats.keys, cfg)
        res = mine(pool, feats.matrix, cfg)
        _write_parquet(res.triplets, meta / "mined.parquet")
        return {**res.stats, "similarity": feats.how, "items": res.triplets.height}

    info["mining"] = _stage(out, "mine", [".curate/mined.parquet"], do_mine, summaries)

    def do_texts() -> dict[str, Any]:
        df, st = add_edit_texts(pl.read_parquet(meta / "mined.parquet"), cfg.edit_text, cfg.seed, cfg.llm,
                                meta / "llm-cache.sqlite")
        _write_parquet(df, out / PARQUET)
        return {**st.__dict__, "items": df.height}

    info["edit_texts"] = _stage(out, "texts", [PARQUET], do_texts, summaries)
    df = pl.read_parquet(out / PARQUET)
    staged = meta / "images"
    needed = exports.images_of(df.to_dicts())
    info["images"] = _stage(out, "images", [], lambda: {"items": exports.stage_images(
        source.shard_of(), needed, staged)}, summaries)
    writers = {
        "shards": lambda: exports.export_shards(df, out, staged, min_shards=cfg.min_shards),
        "cirr": lambda: exports.export_cirr(df, out, staged),
        "fashioniq": lambda: exports.export_fashioniq(df, out, staged, cfg.fashioniq_categories),
        "circo": lambda: exports.export_circo(df, out, staged, cfg.circo_max_gts),
        "genecis": lambda: exports.export_genecis(df, out, staged),
    }
    info["exports"] = {f: _stage(out, f"export-{f}", [f], writers[f], summaries) for f in cfg.formats}
    info["export_roots"] = {f: EXPORT_ROOTS[f] for f in cfg.formats}
    info["config"] = to_dict(cfg)
    info["counts"] = {"triplets": df.height, "by_mode": _count(df, "mode"), "by_split": _count(df, "split")}
    info["split"] = exports.split_summary(df, "manifest" if cfg.splits.strip() == "manifest" else cfg.split_by)
    if "fashioniq" in info["exports"]:
        mapping = info["exports"]["fashioniq"].pop("category_map", None) or read_json(
            out / "fashioniq" / "category_map.json")
        info["fashioniq_categories"] = {
            "spec": cfg.fashioniq_categories, "map": mapping,
            "note": "reference objects -> the FashionIQ category names CLIP4Cir's FashionIQDataset accepts "
                    "(dress, shirt, toptee); fashioniq/category_map.json holds the same map"}
    if "circo" in info["exports"]:
        info["circo_semantic_aspects"] = {m: list(a) for m, a in exports.SEMANTIC_ASPECTS.items()}
    write_json(out / "triplets.json", info)
    if "shards" in cfg.formats:
        from .card import write_triplets_card

        write_triplets_card(out, info)
    _print_summary(summaries)
    return info


def _count(df: pl.DataFrame, col: str) -> dict[str, int]:
    return {k: int(v) for k, v in df.group_by(col).len().sort(col).iter_rows()}


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    cols = [c for c in CONTRACT_COLUMNS if c in df.columns] + [c for c in df.columns if c not in CONTRACT_COLUMNS]
    write_parquet(df.select(cols), path)


def _print_summary(summaries: list[StageSummary]) -> None:
    from curate.log import print_table, summary_table

    print_table(summary_table(summaries, title="curate triplets"))


def read_triplets(folder: str | Path) -> pl.DataFrame:
    """The triplets table of a folder made by ``curate triplets`` (for trainers and tests)."""
    p = Path(folder) / PARQUET
    if not p.exists():
        raise CurateError("no triplets.parquet", where=str(folder), fix="run `curate triplets` first")
    return pl.read_parquet(p)


def triplets_info(folder: str | Path) -> dict[str, Any]:
    return read_json(Path(folder) / "triplets.json")
