"""Ground truth for a build: what each candidate image really shows, and how right the funnel's labels are.

The build labels an image with the pair whose retrieval found it (or whose prompt made it);
the filters then try to keep only images that really show that pair. Whether they do can be
measured wherever the truth of the images is known:

- **a demo world** (automatic when the vocabulary is a world's ``world.json``): the renderer's
  record of every pool image (``pool/pool.parquet``: object + colour, pattern and state) and
  of every generated image (the demo renderer's metadata in ``generated/shards``);
- **a labelled pool** (``--truth FILE``): parquet, CSV/TSV or JSONL with columns ``key``,
  ``attr``, ``obj`` (and optionally ``source``: ``pool`` or ``generator``), one row per
  attribute-object pair the image shows (an image may show several: "red" and "striped").
  ``key`` is the image's key in the build (``src_key``: a folder pool's relative path without
  its extension, ``/`` written ``_``; the path with its extension is accepted too).

A labelled image's verdict for a label (attr, obj) is ``right`` when the truth lists that
pair for it, ``wrong object`` when the truth never gives it that object, ``wrong attribute``
otherwise; images without truth have no verdict and are counted, not guessed. Per funnel row
(:func:`evaluate_funnel`): the **precision** of what the stage kept (right / labelled) and the
**recall** of true rare-pair images (the (image, rare pair) units the image sources hold, of
which the stage kept the image under that pair's label). A generated image counts for the
pair it was made for only (the build never labels it otherwise).

``bench/curation_study.py`` measures label precision with the same code.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import CurateError
from curate.world import WORLD_JSON, world_dir

log = logging.getLogger(__name__)

TRUTH_COLUMNS = ("key", "attr", "obj")
TRUTH_FORMAT = ("one row per (image, attribute, object) the image shows: columns key, attr, obj "
                "(+ optional source: pool|generator); parquet, CSV/TSV or JSONL")
VERDICTS = ("right", "wrong object", "wrong attribute")
_LABELS = {"source": pl.String, "key": pl.String, "attr": pl.String, "obj": pl.String}


def _norm(col: str) -> pl.Expr:
    """Labels compare case-insensitively, surrounding spaces ignored."""
    return pl.col(col).cast(pl.String).str.strip_chars().str.to_lowercase().alias(col)


@dataclass
class Truth:
    """What images really show: one row per (source, key, attr, obj); source "" means any source."""

    labels: pl.DataFrame
    origin: str
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return self.labels.select("source", "key").n_unique()

    def for_sources(self, sources: list[str]) -> pl.DataFrame:
        """The labels with a concrete source: a source-less row stands for every source that has no
        rows of its own for that key."""
        sourced = self.labels.filter(pl.col("source") != "")
        anywhere = self.labels.filter(pl.col("source") == "")
        if anywhere.height == 0 or not sources:
            return sourced
        spread = pl.concat([anywhere.with_columns(pl.lit(s).alias("source")) for s in sources])
        spread = spread.join(sourced.select("source", "key").unique(), on=["source", "key"], how="anti")
        return pl.concat([sourced, spread]).unique(maintain_order=True)

    def verdicts(self, df: pl.DataFrame, key: str = "src_key") -> pl.Series:
        """``right`` / ``wrong object`` / ``wrong attribute`` (null: no truth) for each row of ``df``
        (columns ``source``, ``key``, ``attr``, ``obj``), in row order."""
        lab = self.for_sources(df["source"].unique().drop_nulls().to_list())
        q = df.select("source", pl.col(key).alias("key"), _norm("attr"), _norm("obj")).with_row_index("_i")
        on = ["source", "key"]
        q = (q.join(lab.select(on).unique().with_columns(pl.lit(True).alias("_known")), on=on, how="left")
             .join(lab.select(*on, "obj").unique().with_columns(pl.lit(True).alias("_obj")), on=[*on, "obj"],
                   how="left")
             .join(lab.unique().with_columns(pl.lit(True).alias("_right")), on=[*on, "attr", "obj"], how="left")
             .sort("_i"))
        return q.select(pl.when(pl.col("_known").is_null()).then(None)
                        .when(pl.col("_right")).then(pl.lit("right"))
                        .when(pl.col("_obj")).then(pl.lit("wrong attribute"))
                        .otherwise(pl.lit("wrong object")).alias("verdict"))["verdict"]

    def aligned(self, universe: dict[str, set[str]]) -> Truth:
        """Keys matched to the build's image keys (``universe``: source -> keys): a key given as a
        file path (``sub/a.jpg``) becomes the folder pool's key (``sub_a``). Keys found in no source
        are counted in ``stats['keys_not_in_pool']`` (they can never be judged)."""
        from .pool import folder_keys

        every = set().union(*universe.values()) if universe else set()
        keys = self.labels.select("source", "key").unique()
        mapping, missing = {}, 0
        for source, k in keys.iter_rows():
            pool = universe.get(source, set()) if source else every
            if k in pool:
                continue
            alt = folder_keys([k])[0]
            if alt in pool:
                mapping[k] = alt
            else:
                missing += 1
        labels = self.labels
        if mapping:
            labels = labels.with_columns(pl.col("key").replace(mapping))
        return Truth(labels, self.origin, {**self.stats, "keys_not_in_pool": missing,
                                           "keys_matched": keys.height - missing})


# -- loading --------------------------------------------------------------------------------------
def read_truth_file(path: str | Path) -> Truth:
    """A user's labelled images (see the module docstring). Missing columns are an error; rows with an
    empty key, attribute or object are skipped and counted (``stats['bad_rows']``)."""
    p = Path(path)
    if not p.is_file():
        raise CurateError("truth file not found", where=str(p), fix=f"give a file with {TRUTH_FORMAT}")
    suf = p.suffix.lower()
    try:
        if suf == ".parquet":
            df = pl.read_parquet(p)
        elif suf in (".csv", ".tsv"):
            df = pl.read_csv(p, separator="\t" if suf == ".tsv" else ",", infer_schema=False)
        elif suf in (".jsonl", ".ndjson"):
            df = pl.read_ndjson(p, infer_schema_length=None)
        else:
            raise CurateError(f"unsupported truth file type {suf or '(none)'!r}", where=str(p),
                              fix=f"use .parquet, .csv, .tsv or .jsonl with {TRUTH_FORMAT}")
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as e:
        raise CurateError(f"cannot read the truth file ({str(e).splitlines()[0][:160]})", where=str(p),
                          fix=f"give a file with {TRUTH_FORMAT}") from e
    missing = [c for c in TRUTH_COLUMNS if c not in df.columns]
    if missing:
        raise CurateError(f"truth file lacks column(s) {', '.join(missing)} (columns found: "
                          f"{', '.join(df.columns) or 'none'})", where=str(p), fix=f"give {TRUTH_FORMAT}")
    source = _norm("source") if "source" in df.columns else pl.lit("").alias("source")
    df = df.select(source.fill_null(""), pl.col("key").cast(pl.String).str.strip_chars().alias("key"),
                   _norm("attr"), _norm("obj"))
    ok = pl.all_horizontal([pl.col(c).is_not_null() & (pl.col(c) != "") for c in TRUTH_COLUMNS])
    bad = df.height - df.filter(ok).height
    labels = df.filter(ok).unique(maintain_order=True)
    if labels.height == 0:
        raise CurateError(f"truth file has no usable row ({df.height} row(s), all with an empty key, attr or obj)",
                          where=str(p), fix=f"give {TRUTH_FORMAT}")
    if bad:
        log.warning("truth file %s: %d row(s) with an empty key, attr or obj skipped", p, bad)
    return Truth(labels, f"file {p}", {"rows": df.height, "bad_rows": bad})


def _renderer_name() -> str:
    from builders.synthetic.generator import DemoGenerator

    return DemoGenerator.name


def world_truth(world: str | Path, generated: str | Path | None = None, pool: bool = True) -> Truth:
    """The demo world's truth: every pool image (``pool/pool.parquet``: object and the value of each
    attribute family) and every image the demo renderer made in ``generated`` (its shards' JSON)."""
    from curate.world import World

    w = World.load(world)
    families = list(w.families)
    frames = []
    if pool:
        table = pl.read_parquet(w.pool_table, columns=["key", "obj", *families])
        frames += [table.select(pl.lit("pool").alias("source"), "key", pl.col(f).alias("attr"), "obj")
                   for f in families]
    frames.append(_renderer_rows(Path(generated) if generated else None, families))
    labels = pl.concat(frames).select("source", "key", _norm("attr"), _norm("obj")).unique(maintain_order=True)
    return Truth(labels, f"demo world {w.path}", {"rows": labels.height, "bad_rows": 0})


def world_of(cfg: Any) -> Path | None:
    """The demo world a build's vocabulary comes from (its ``world.json``), if any."""
    for spec in (cfg.objects, cfg.attributes):
        if Path(str(spec)).name == WORLD_JSON and (world := world_dir(str(spec))) is not None:
            return world
    return None


def truth_spec(cfg: Any) -> tuple[str, Path] | None:
    """What the build's truth will be, before any stage runs: ("world", dir), ("file", path) or None.

    ``cfg.truth``: ``auto`` (the demo world of the vocabulary, or a demo generator's images),
    ``none``, a demo world folder (or its ``world.json``), or a truth file."""
    spec = (cfg.truth or "auto").strip()
    if spec == "none":
        return None
    if spec == "auto":
        world = world_of(cfg)
        if world is not None:
            return ("world", world)
        return ("generator", Path()) if cfg.generator == "demo" else None
    p = Path(spec)
    world = world_dir(p)
    if world is not None:
        return ("world", world)
    if not p.exists():
        raise CurateError("truth file not found", where=spec,
                          fix=f"--truth auto | none | a demo world folder | a file with {TRUTH_FORMAT}")
    return ("file", p)


def load_truth(cfg: Any, out: Path) -> Truth | None:
    """The build's truth (see :func:`truth_spec`); a demo generator's images always add their own."""
    spec = truth_spec(cfg)
    if spec is None:
        return None
    kind, path = spec
    generated = out / "generated" / "shards" if cfg.generator == "demo" else None
    if kind == "world":
        return world_truth(path, generated)
    if kind == "generator":
        labels = _renderer_rows(generated)
        return Truth(labels, "demo renderer", {"rows": labels.height, "bad_rows": 0}) if labels.height else None
    truth = read_truth_file(path)
    if generated is not None:
        labels = pl.concat([truth.labels, _renderer_rows(generated)]).unique(maintain_order=True)
        truth = Truth(labels, f"{truth.origin} + demo renderer", truth.stats)
    return truth


def _renderer_rows(generated: Path | None, families: list[str] | None = None) -> pl.DataFrame:
    """Labels of the images the demo renderer made in ``generated`` (its shards' JSON record the value
    of every attribute family); images of another generator carry only their prompt, which is no truth."""
    from builders.synthetic.vocab import FAMILIES
    from curate.shards import iter_shard, list_shards

    families = families or list(FAMILIES)
    rows: list[tuple[str, str, str, str]] = []
    if generated is not None and generated.is_dir():
        renderer = _renderer_name()
        for shard in list_shards(generated):
            for s in iter_shard(shard, exts={"json"}):
                meta = json.loads(s["json"])
                if meta.get("source") == renderer:
                    rows += [("generator", s["__key__"], str(meta[f]), str(meta["obj"])) for f in families
                             if meta.get(f)]
    labels = pl.DataFrame(rows, schema=_LABELS, orient="row").select("source", "key", _norm("attr"), _norm("obj"))
    return labels.unique(maintain_order=True)


# -- measuring ------------------------------------------------------------------------------------
def stratified_share(df: pl.DataFrame, verdict: str = "right") -> float | None:
    """Share of ``df``'s images (columns ``source``, ``verdict``) with this verdict, estimated per source
    from its labelled images and weighted by the source's share of ``df``.

    A labelled sample may cover the sources unevenly (every generated image, a fifth of the pool):
    pooling the labelled images would let the better-covered source decide. Per source, labelled images
    are taken as a random sample of its images; sources without any are left out of the weights. With
    every image labelled this is the plain share."""
    g = (df.group_by("source").agg(pl.len().alias("n"), pl.col("verdict").is_not_null().sum().alias("k"),
                                   (pl.col("verdict") == verdict).sum().alias("r"))
         .filter(pl.col("k") > 0))
    if g.height == 0:
        return None
    est = float((g["n"].cast(pl.Float64) * g["r"] / g["k"]).sum() / g["n"].sum())
    return round(est, 4)


def label_precision(df: pl.DataFrame, truth: Truth, key: str = "src_key") -> dict[str, Any]:
    """Share of the images of ``df`` (source, key, attr, obj) whose label is what the image shows, and
    how the others are wrong (per source, see :func:`stratified_share`); None where no image has truth."""
    v = truth.verdicts(df, key) if df.height else pl.Series("verdict", [], pl.String)
    d = df.select("source").with_columns(v.alias("verdict"))
    return {"images": df.height, "unknown": int(v.is_null().sum()), "precision": stratified_share(d, "right"),
            "wrong_object": stratified_share(d, "wrong object"),
            "wrong_attribute": stratified_share(d, "wrong attribute")}


@dataclass
class RareUnits:
    """The (image, rare pair) units among the labelled images, per source, and each source's coverage (the
    share of its images that have truth), so recall can be estimated per source like precision."""

    by_source: dict[str, int]
    coverage: dict[str, float]

    @property
    def total(self) -> int:
        return sum(self.by_source.values())

    def recall(self, kept: dict[str, int]) -> float | None:
        """Estimated share of all units kept, from ``kept`` (labelled units kept, per source)."""
        weight = {s: 1.0 / c for s, c in self.coverage.items() if c > 0}
        total = sum(n * weight.get(s, 0.0) for s, n in self.by_source.items())
        if total == 0:
            return None
        return round(sum(n * weight.get(s, 0.0) for s, n in kept.items()) / total, 4)


def rare_units(truth: Truth, targets: pl.DataFrame, pool_keys: list[str], generated: pl.DataFrame) -> RareUnits:
    """(image, rare pair) units the image sources hold: pool images the truth says show a mined rare
    pair, and generated images (``generated``: their candidate rows) that show the rare pair they were
    made for; with the share of each source's images that have truth."""
    rare = targets.filter(pl.col("rare")).select(_norm("attr"), _norm("obj")).unique()
    keys = pl.DataFrame({"key": pool_keys}, schema={"key": pl.String}).unique()
    pool = truth.for_sources(["pool"]).filter(pl.col("source") == "pool").join(keys, on="key", how="semi")
    by_source = {"pool": pool.join(rare, on=["attr", "obj"], how="semi").select("key", "attr", "obj").n_unique()}
    coverage = {"pool": pool["key"].n_unique() / keys.height if keys.height else 0.0}
    if generated.height:
        g = generated.with_columns(truth.verdicts(generated))
        coverage["generator"] = (g.filter(pl.col("verdict").is_not_null())["src_key"].n_unique()
                                 / generated["src_key"].n_unique())
        g = g.filter(pl.col("verdict") == "right").select(_norm("attr"), _norm("obj"), "src_key")
        by_source["generator"] = g.join(rare, on=["attr", "obj"], how="semi").n_unique()
    return RareUnits(by_source, coverage)


def stage_metrics(df: pl.DataFrame, units: RareUnits | None) -> dict[str, Any]:
    """Precision / recall of one funnel row's kept images (``df``: rare, verdict, source, src_key, attr, obj).

    Counts are of labelled images; precision and recall are estimated per source (see
    :func:`stratified_share`, :class:`RareUnits`)."""
    df = df.with_columns(pl.col("verdict").cast(pl.String))
    v = df["verdict"]
    rare = df.filter(pl.col("rare").fill_null(False))
    hits = rare.filter(pl.col("verdict") == "right").select("source", "src_key", "attr", "obj").unique()
    kept = dict(hits.group_by("source").len().iter_rows())
    return {
        "images": df.height, "known": int(v.is_not_null().sum()), "right": int((v == "right").sum()),
        "wrong_object": int((v == "wrong object").sum()), "wrong_attribute": int((v == "wrong attribute").sum()),
        "precision": stratified_share(df),
        "rare_images": rare.height, "rare_known": int(rare["verdict"].is_not_null().sum()), "rare_right": hits.height,
        "rare_precision": stratified_share(rare),
        "recall": units.recall(kept) if units is not None else None,
        "by_source": {src: {"images": g.height, "known": int(g["verdict"].is_not_null().sum()),
                            "precision": stratified_share(g)}
                      for (src,), g in df.group_by("source", maintain_order=True)},
    }


def evaluate_funnel(record: pl.DataFrame, n_filter_rows: int, written: pl.DataFrame, truth: Truth,
                    units: RareUnits) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Metrics of the candidates, of what each filter row kept, and of the images written.

    ``record`` (``filters/funnel.parquet``): every candidate with ``removed_at``, the index of the
    filter row that removed it (-1: kept to the end)."""
    rec = record.with_columns(truth.verdicts(record))
    cands = stage_metrics(rec, units)
    after = [stage_metrics(rec.filter((pl.col("removed_at") < 0) | (pl.col("removed_at") > i)), units)
             for i in range(n_filter_rows)]
    out = written.select("source", "src_key", "attr", "obj", "rare")
    final = stage_metrics(out.with_columns(truth.verdicts(out)), units)
    return cands, after, final


def pct(x: float | None) -> str:
    """A share as the funnel tables print it: ``72.0 %``, or ``—`` where there is no value."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"
