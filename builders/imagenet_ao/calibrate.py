"""``--calibrate``: the attribute-check and composition-score thresholds chosen from labelled images.

The fixed defaults (the target attribute must win its family; composition score >= 0) are
guesses that mean different things for different models. With ground truth for some of the
candidates (a demo world, or ``--truth FILE``), the build sweeps both thresholds over the
candidates that passed the object filter and measures, at every point of the grid:

- the *thresholded candidates*: how many pass (yield) and their precision, estimated from the
  labelled ones per source (:func:`.truth.stratified_share`: a sample that labels every generated
  image but a fifth of the pool must not let the generator decide);
- the *dataset estimate*: what the per-pair cap (best composition scores first) and minimum
  would keep of them, its size, pairs and precision (near-duplicate removal is not modelled;
  the funnel's truth columns give the real result).

The chosen operating point is the one with the largest estimated dataset whose estimated
precision reaches ``target_precision`` (ties: the higher precision), judged only where at least
:data:`MIN_SUPPORT` labelled images remain; if no point reaches the target, the most precise one
is chosen and the build says so. Grid: attribute margin (target score minus the family's best
other) off, 0 and quantiles of the margins; composition thresholds at quantiles of the scores.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from curate.errors import CurateError

from .truth import pct, stratified_share

log = logging.getLogger(__name__)

CALIBRATION = "filters/calibration.json"
COMP_QUANTILES = tuple(float(q) for q in np.linspace(0.0, 0.98, 50))
MARGIN_QUANTILES = (0.1, 0.25, 0.4, 0.5, 0.6, 0.75)
MIN_SUPPORT = 10  # labelled images an estimate must rest on


@dataclass
class Point:
    """One operating point: thresholds and what they keep (``margin`` None: attribute check off)."""

    margin: float | None
    comp: float
    passing: int
    labelled: int
    right: int
    precision: float | None
    dataset_images: int
    dataset_pairs: int
    dataset_labelled: int
    dataset_precision: float | None


def _grid(values: np.ndarray, quantiles: tuple[float, ...]) -> list[float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    return sorted({round(float(v), 3) for v in np.quantile(finite, quantiles)})


def evaluate_point(frame: pl.DataFrame, margin: float | None, comp: float, images_per_pair: int,
                   min_images_per_pair: int) -> Point:
    """``frame`` sorted as the cap sorts (pair, composition score descending, source, key)."""
    keep = pl.col("score_comp") >= comp
    if margin is not None:
        keep = keep & (pl.col("attr_margin") >= margin)
    passing = frame.filter(keep)
    labelled = int(passing["verdict"].is_not_null().sum())
    capped = (passing.with_columns(pl.int_range(pl.len()).over(["attr", "obj"]).alias("_rank"))
              .filter(pl.col("_rank") < images_per_pair))
    sizes = capped.group_by(["attr", "obj"]).len().filter(pl.col("len") >= min_images_per_pair)
    capped = capped.join(sizes.select("attr", "obj"), on=["attr", "obj"], how="semi")
    return Point(margin, comp, passing.height, labelled, int((passing["verdict"] == "right").sum()),
                 stratified_share(passing), capped.height, sizes.height,
                 int(capped["verdict"].is_not_null().sum()), stratified_share(capped))


def sweep(frame: pl.DataFrame, images_per_pair: int, min_images_per_pair: int) -> list[Point]:
    """Every (attribute margin, composition threshold) point of the grid (see the module docstring)."""
    frame = frame.sort(["attr", "obj", "score_comp", "source", "src_key"], descending=[False, False, True, False, False])
    lab = frame.filter(pl.col("verdict").is_not_null())
    margins: list[float | None] = [None, *sorted({0.0, *_grid(lab["attr_margin"].to_numpy(), MARGIN_QUANTILES)})]
    comps = _grid(lab["score_comp"].to_numpy(), COMP_QUANTILES)
    return [evaluate_point(frame, m, c, images_per_pair, min_images_per_pair) for m in margins for c in comps]


def choose(points: list[Point], target: float) -> tuple[Point, bool]:
    """(chosen point, target reached): the largest estimated dataset at or above the target precision."""
    supported = [p for p in points if p.dataset_labelled >= MIN_SUPPORT and p.dataset_precision is not None]
    if not supported:
        most = max((p.dataset_labelled for p in points), default=0)
        raise CurateError(f"calibration sample too small: at most {most} labelled image(s) would reach the "
                          f"dataset at any threshold (need {MIN_SUPPORT})",
                          fix="label more candidates (--truth FILE), or build without --calibrate")
    good = [p for p in supported if p.dataset_precision >= target]
    if good:
        return max(good, key=lambda p: (p.dataset_images, p.dataset_precision, -p.comp)), True
    return max(supported, key=lambda p: (p.dataset_precision, p.dataset_images, -p.comp)), False


def calibrate(frame: pl.DataFrame, images_per_pair: int, min_images_per_pair: int, target: float,
              configured: tuple[float | None, float]) -> dict[str, Any]:
    """Sweep, choose, and describe: ``frame`` holds the candidates that passed the object filter with
    ``score_comp``, ``attr_margin`` and ``verdict`` (null: no truth). ``configured``: the thresholds
    the build would use without calibration, measured for comparison."""
    frame = frame.with_columns(pl.col("verdict").cast(pl.String))
    labelled = frame.filter(pl.col("verdict").is_not_null())
    positives = int((labelled["verdict"] == "right").sum())
    sample = {"candidates": frame.height, "labelled": labelled.height, "positives": positives,
              "rare_labelled": labelled.filter(pl.col("rare").fill_null(False)).height}
    if labelled.height == 0:
        raise CurateError(f"--calibrate has no labelled sample: none of the {frame.height} candidates that passed "
                          "the object filter has ground truth",
                          fix="pass --truth FILE with labels for some candidates (key, attr, obj), or build "
                              "without --calibrate")
    if positives == 0:
        raise CurateError(f"calibration sample has no positives: none of its {labelled.height} labelled "
                          "candidate(s) shows the pair it is labelled with, so no threshold can be judged",
                          fix="label candidates that do show their pair (--truth FILE), raise --retrieve-k, "
                              "or build without --calibrate")
    points = sweep(frame, images_per_pair, min_images_per_pair)
    best, reached = choose(points, target)
    ordered = frame.sort(["attr", "obj", "score_comp", "source", "src_key"], descending=[False, False, True, False, False])
    base = evaluate_point(ordered, configured[0], configured[1], images_per_pair, min_images_per_pair)
    if not reached:
        log.warning("calibration: no threshold reaches the target precision %.2f; the most precise point is used "
                    "(estimated precision %s)", target, best.dataset_precision)
    return {"target_precision": target, "reached": reached, "chosen": asdict(best), "configured": asdict(base),
            "sample": sample, "grid": {"margins": len({p.margin for p in points}),
                                       "comp_thresholds": len({p.comp for p in points})},
            "min_support": MIN_SUPPORT, "points": [asdict(p) for p in points]}


# -- reporting ------------------------------------------------------------------------------------
def margin_label(m: float | None) -> str:
    return "off" if m is None else f">= {m:g}"


def curve_rows(cal: dict[str, Any], rows: int = 10) -> list[dict[str, Any]]:
    """The chosen attribute margin's curve over composition thresholds (about ``rows`` of them, the
    chosen one included), for the console and the card."""
    chosen = cal["chosen"]
    line = [p for p in cal["points"] if p["margin"] == chosen["margin"]]
    step = max(1, len(line) // rows)
    picked = [p for i, p in enumerate(line) if i % step == 0 or p["comp"] == chosen["comp"]]
    return sorted({p["comp"]: p for p in picked}.values(), key=lambda p: p["comp"])


def curve_markdown(cal: dict[str, Any]) -> str:
    lines = ["| attribute margin | composition >= | passing | precision | est. images | est. pairs | est. precision |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    chosen = cal["chosen"]
    for p in curve_rows(cal):
        mark = " **(chosen)**" if p["comp"] == chosen["comp"] else ""
        lines.append(f"| {margin_label(p['margin'])} | {p['comp']:g}{mark} | {p['passing']:,} | {pct(p['precision'])} | "
                     f"{p['dataset_images']:,} | {p['dataset_pairs']} | {pct(p['dataset_precision'])} |")
    return "\n".join(lines)


def summary_line(cal: dict[str, Any]) -> str:
    c, b = cal["chosen"], cal["configured"]
    reached = "reached" if cal["reached"] else "NOT reached (the most precise point is used)"
    return (f"target precision {cal['target_precision']:.0%} {reached}: attribute margin {margin_label(c['margin'])}, "
            f"composition score >= {c['comp']:g}: estimated {c['dataset_images']:,} images in {c['dataset_pairs']} "
            f"pairs at {pct(c['dataset_precision'])} (the configured thresholds: {b['dataset_images']:,} images, "
            f"{b['dataset_pairs']} pairs at {pct(b['dataset_precision'])}); sample: {cal['sample']['labelled']:,} "
            f"labelled candidates, {cal['sample']['positives']:,} positives")
