"""``build_triplets``: named steps source -> mine -> texts -> images -> exports, each resumable.

Every step is a module-level function of a :class:`Run` with explicit inputs and outputs
(:data:`STEPS`, plus one ``export-FORMAT`` step per ``--format``), run in order by
``curate.ledger.run_steps``. A step's done marker records the content fingerprint of what it
read (its ``inputs`` and the outputs and stats of the steps it runs ``after``):

======== =======================================================================================
step     inputs
======== =======================================================================================
mine     manifest.parquet (attr/obj/caption/split and the ``review_status`` verdicts) or the
         captioned shards, the dataset's shard list, the image features' source (``embeddings/``
         content, or the model spec, its weight files and ``--decode``, or thumbnails of the shards), the
         mining options (modes, splits, split-by, caps, negatives, seed, ``--include-rejected``)
texts    ``.curate/mined.parquet`` (mine), ``--edit-text``, ``--llm`` (and its GGUF file), seed
images   ``triplets.parquet`` (texts) and the shards the images come from
export-F ``triplets.parquet`` (texts), the staged images (images), the format's options
======== =======================================================================================

so a rerun of the same command redoes exactly the steps whose inputs changed (after ``curate
review pull`` rejected a sample: every step, and the rejected image is gone from every output)
and skips the rest; ``--overwrite`` redoes every step (and re-extracts features and images;
LLM answers still come from the cache). The output folder is guarded by
``curate.outdir.OutputDir``: a different config is refused unless ``--overwrite``. Everything
is deterministic for a given dataset and ``--seed``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from curate.config import to_dict
from curate.errors import CurateError
from curate.fingerprint import fingerprint, model_fingerprint
from curate.fsutil import read_json, write_json, write_parquet, write_text
from curate.images import DEFAULT_DECODE
from curate.ledger import Ledger, Step, StepContext, run_steps
from curate.log import StageSummary
from curate.outdir import OutputDir

from . import exports
from .config import TripletsConfig, parse_splits
from .edits import add_edit_texts
from .mining import build_pool, mine
from .source import Source, image_features, load_source

logger = logging.getLogger(__name__)

PARQUET = "triplets.parquet"
MINED = ".curate/mined.parquet"
STAGED = ".curate/images"
STAGED_STAMP = "source.json"  # which shards the staged images were extracted from
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
    """Run every step whose inputs changed since it ran (all of them with ``overwrite``); returns
    the summary written to ``triplets.json``."""
    cfg.validate()
    out = Path(cfg.out)
    with OutputDir(out, "triplets", folder_config(cfg), overwrite=overwrite):
        return _run(cfg, out, force=overwrite)


def folder_config(cfg: TripletsConfig) -> dict[str, Any]:
    """The options the output folder is pinned to: every option, ``decode`` only when not the default (folders
    made before the option decoded --model's images fast and recorded no key: they resume unchanged)."""
    d = to_dict(cfg)
    if d["decode"] == DEFAULT_DECODE:
        del d["decode"]
    return d


# -- what the steps read -------------------------------------------------------------------


@dataclass
class Run(StepContext):
    """One ``curate triplets`` run: its options and source samples (and, from StepContext, the output
    folder and each step's stats)."""

    cfg: TripletsConfig | None = None
    source: Source | None = None
    force: bool = False
    _memo: dict[str, str] = field(default_factory=dict)

    @property
    def meta(self) -> Path:
        return self.out / ".curate"

    @property
    def staged(self) -> Path:
        return self.out / STAGED

    def triplets(self) -> pl.DataFrame:
        return pl.read_parquet(self.out / PARQUET)

    def images_inputs(self) -> str:
        """The shards the images come from: their content for captioned shards, their names and sizes
        for a dataset (whose manifest, in :meth:`source_inputs`, changes with every rebuild)."""
        if "images" not in self._memo:
            src = self.source
            if src.kind == "dataset":  # all of them: rejecting every sample of a shard changes no image
                shards = sorted((Path(src.path) / "shards").glob("*.tar"))
                self._memo["images"] = fingerprint("dataset-shards", [_size_of(s) for s in shards])
            else:
                shards = sorted({Path(s) for s in src.samples["shard_path"].to_list()})
                self._memo["images"] = fingerprint("shards", shards)
        return self._memo["images"]

    def source_inputs(self) -> str:
        """What ``load_source`` read: manifest.parquet (labels, splits, review verdicts) or the shards."""
        if "source" not in self._memo:
            src = self.source
            manifest = Path(src.path) / "manifest.parquet" if src.kind == "dataset" else None
            self._memo["source"] = fingerprint(src.kind, manifest, self.cfg.include_rejected, self.images_inputs())
        return self._memo["source"]

    def features_inputs(self) -> str:
        """Where the image features come from: stored embeddings, a model (and its files), or thumbnails."""
        if "features" not in self._memo:
            cfg, src = self.cfg, self.source
            emb = Path(src.path) / "embeddings"
            if src.kind == "dataset" and (emb / "img_emb").exists() and not cfg.model:
                fp = fingerprint("embeddings", emb)
            elif cfg.model:  # and the decode mode unless fast (the default: the key of runs made before the option)
                fp = fingerprint("model", model_fingerprint(cfg.model), self.images_inputs(),
                                 *(() if cfg.decode == DEFAULT_DECODE else (f"decode={cfg.decode}",)))
            else:
                fp = fingerprint("thumbnail", self.images_inputs())
            self._memo["features"] = fp
        return self._memo["features"]


def _size_of(p: Path) -> list[Any]:
    return [p.name, p.stat().st_size if p.exists() else None]


# -- the steps -----------------------------------------------------------------------------


def inputs_mine(run: Run) -> list[Any]:
    c = run.cfg
    return [run.source_inputs(), run.features_inputs(), c.modes, c.splits, c.split_by, c.max_per_pair,
            c.max_triplets, c.negatives, c.seed, c.max_group]


def step_mine(run: Run) -> dict[str, Any]:
    """Features, candidate pool, targets / ground truths / hard negatives -> ``.curate/mined.parquet``."""
    cfg = run.cfg
    feats = image_features(run.source, cfg.model, cfg.device, run.meta, inputs=run.features_inputs(),
                           refresh=run.force, decode=cfg.decode)
    pool = build_pool(run.source.samples, feats.keys, cfg)
    res = mine(pool, feats.matrix, cfg)
    _write_parquet(res.triplets, run.out / MINED)
    return {**res.stats, "similarity": feats.how, "items": res.triplets.height}


def inputs_texts(run: Run) -> list[Any]:
    c = run.cfg
    return [c.edit_text, model_fingerprint(c.llm) if c.edit_text == "llm" else None, c.seed, c.max_tokens]


def step_texts(run: Run) -> dict[str, Any]:
    """Edit texts (templates, or LLM rewrites validated with a template fallback) -> ``triplets.parquet``."""
    cfg = run.cfg
    df, st = add_edit_texts(pl.read_parquet(run.out / MINED), cfg.edit_text, cfg.seed, cfg.llm,
                            run.meta / "llm-cache.sqlite")
    _write_parquet(df, run.out / PARQUET)
    return {**st.__dict__, "items": df.height}


def inputs_images(run: Run) -> list[Any]:
    return [run.images_inputs()]


def step_images(run: Run) -> dict[str, Any]:
    """The images every export needs, extracted once as JPEG into ``.curate/images/``.

    Staged images are reused across runs only while the shards they came from are unchanged."""
    stamp = run.staged / STAGED_STAMP
    want = {"images": run.images_inputs()}
    if run.staged.exists() and (run.force or not stamp.exists() or read_json(stamp) != want):
        shutil.rmtree(run.staged)
    write_json(stamp, want)
    needed = exports.images_of(run.triplets().to_dicts())
    return {"items": exports.stage_images(run.source.shard_of(), needed, run.staged)}


EXPORT_OPTIONS: dict[str, Callable[[TripletsConfig], Any]] = {
    "shards": lambda c: c.min_shards,
    "cirr": lambda c: None,
    "fashioniq": lambda c: c.fashioniq_categories,
    "circo": lambda c: c.circo_max_gts,
    "genecis": lambda c: None,
}


def inputs_export(run: Run, fmt: str) -> list[Any]:
    return [fmt, EXPORT_OPTIONS[fmt](run.cfg)]


def step_export(run: Run, fmt: str) -> dict[str, Any]:
    """One format's folder, written from scratch (files of an earlier run's triplets never linger)."""
    folder = run.out / fmt
    if folder.exists():
        shutil.rmtree(folder)
    df, out, staged, cfg = run.triplets(), run.out, run.staged, run.cfg
    if fmt == "shards":
        return exports.export_shards(df, out, staged, min_shards=cfg.min_shards)
    if fmt == "cirr":
        return exports.export_cirr(df, out, staged)
    if fmt == "fashioniq":
        return exports.export_fashioniq(df, out, staged, cfg.fashioniq_categories)
    if fmt == "circo":
        return exports.export_circo(df, out, staged, cfg.circo_max_gts)
    return exports.export_genecis(df, out, staged)


MINE, TEXTS, IMAGES = "triplets mine", "triplets texts", "triplets images"
STEPS = (
    Step(MINE, step_mine, outputs=(MINED,), inputs=inputs_mine),
    Step(TEXTS, step_texts, outputs=(PARQUET,), inputs=inputs_texts, after=(MINE,)),
    Step(IMAGES, step_images, outputs=(STAGED,), inputs=inputs_images, after=(TEXTS,)),
)


def steps_for(cfg: TripletsConfig) -> list[Step]:
    """The steps of one run: :data:`STEPS`, then one export step per ``--format``."""
    return [*STEPS, *(Step(f"triplets export-{f}", partial(step_export, fmt=f), outputs=(f,),
                           inputs=partial(inputs_export, fmt=f), after=(TEXTS, IMAGES)) for f in cfg.formats)]


def _run(cfg: TripletsConfig, out: Path, force: bool = False) -> dict[str, Any]:
    source = load_source(cfg.dataset, cfg.include_rejected)
    info: dict[str, Any] = {"source_dataset": str(Path(cfg.dataset).resolve()), "source_kind": source.kind,
                            "samples": source.samples.height, "rejected_excluded": source.rejected,
                            "missing_images": len(source.missing)}
    write_text(out / "missing_images.txt", "".join(f"{k}\t{why}\n" for k, why in source.missing))
    steps = steps_for(cfg)
    if force:  # --overwrite: every step is redone, whatever its marker says
        for step in steps:
            Ledger(out, step.name).reset()
    run = Run(out, cfg=cfg, source=source, force=force)
    run_steps(steps, run)
    stats = {name: dict(st) for name, st in run.stats.items()}
    info["mining"], info["edit_texts"], info["images"] = stats[MINE], stats[TEXTS], stats[IMAGES]
    info["exports"] = {f: stats[f"triplets export-{f}"] for f in cfg.formats}
    df = pl.read_parquet(out / PARQUET)
    info["export_roots"] = {f: EXPORT_ROOTS[f] for f in cfg.formats}
    info["config"] = to_dict(cfg)
    info["counts"] = {"triplets": df.height, "by_mode": _count(df, "mode"), "by_split": _count(df, "split")}
    info["split"] = exports.split_summary(df, "manifest" if cfg.splits.strip() == "manifest" else cfg.split_by)
    _warn_empty_splits(cfg, info["split"])
    if "fashioniq" in info["exports"]:
        mapping = info["exports"]["fashioniq"].pop("category_map", None) or read_json(
            out / "fashioniq" / "category_map.json")
        info["fashioniq_categories"] = {
            "spec": cfg.fashioniq_categories, "map": mapping,
            "dropped": info["exports"]["fashioniq"].get("dropped", {}),
            "note": "objects -> the FashionIQ category names CLIP4Cir's FashionIQDataset accepts "
                    "(dress, shirt, toptee); fashioniq/category_map.json holds the same map. A triplet is "
                    "exported only when its reference and target are of one category (dropped: by split, "
                    "cross_category or unknown_category); each category's gallery holds only its own images"}
    if "circo" in info["exports"]:
        info["circo_semantic_aspects"] = {m: list(a) for m, a in exports.SEMANTIC_ASPECTS.items()}
    write_json(out / "triplets.json", info)
    if "shards" in cfg.formats:
        from .card import write_triplets_card

        write_triplets_card(out, info)
    _print_summary(run.summaries)
    return info


def _warn_empty_splits(cfg: TripletsConfig, summary: dict[str, Any]) -> None:
    """A split the ratios ask for that ended with no triplet (a composition split of a small dataset can
    hold out every edit partner of the remaining compositions) is said, with what to try."""
    ratios = parse_splits(cfg.splits) or {}
    empty = [s for s, r in ratios.items() if r > 0 and summary["triplets"].get(s, 0) == 0]
    if empty:
        logger.warning("split(s) %s hold no triplet under --split-by %s (%s); with few compositions try "
                       "--split-by edit or image, or other --splits ratios", ", ".join(empty), summary["split_by"],
                       ", ".join(f"{k} {v}" for k, v in summary["triplets"].items()))


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
