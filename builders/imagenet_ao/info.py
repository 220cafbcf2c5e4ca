"""Assembling what a build reports: the funnel, the counts and ``dataset.json`` (the card's source).

Pure functions of the steps' stats (see :mod:`builders.imagenet_ao.pipeline`), the vocabulary, the
manifest and the ground-truth measurement: the ``card`` step writes what :func:`dataset_info` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .funnel import FunnelRow
from .vocab import Vocabulary


@dataclass
class Assembly:
    """The funnel rows, the ground-truth metrics per row (None: no truth), the counts and dataset.json."""

    funnel: list[FunnelRow]
    truth_rows: list[dict[str, Any] | None] | None
    counts: dict[str, Any]
    info: dict[str, Any]


def funnel_rows(vocab: Vocabulary, max_cooccurrence: int, rarity: dict, cands: dict, filt: dict,
                manifest: pl.DataFrame) -> list[FunnelRow]:
    """vocabulary -> rare pairs -> candidates (-> refused at ingest) -> each filter row -> written."""
    n_pairs = len(vocab.attributes) * len(vocab.objects)
    funnel = [FunnelRow("vocabulary", n_pairs, 0, f"{len(vocab.attributes)} attributes x {len(vocab.objects)} objects"),
              FunnelRow(f"rare pairs (co-occurrence <= {max_cooccurrence})", rarity["rare"], n_pairs - rarity["rare"],
                        f"{rarity['captions']:,} captions in {rarity['files']} file(s), NMI {rarity['nmi']:.4f}"),
              FunnelRow("candidates", cands["items"], 0,
                        ", ".join(f"{k}: {v}" for k, v in sorted(cands["by_source"].items())))]
    if filt["rejected_at_ingest"]:
        funnel.append(FunnelRow("pool images refused at ingest", 0, filt["rejected_at_ingest"],
                                "undecodable, empty, too small or too large (bomb guard)"))
    funnel += [FunnelRow(**row) for row in filt["funnel"]]
    funnel.append(FunnelRow("written", manifest.height, 0,
                            f"{manifest['pair'].n_unique()} pairs, "
                            f"{manifest.filter(pl.col('rare')).height} rare-pair images"))
    return funnel


def truth_column(truth: dict | None, filt: dict) -> list[dict[str, Any] | None] | None:
    """The truth step's metrics lined up with :func:`funnel_rows` (vocabulary and rare pairs have none)."""
    if truth is None:
        return None
    return [None, None, truth["candidates"], *([None] if filt["rejected_at_ingest"] else []),
            *truth["filter_rows"], truth["written"]]


def funnel_entry(row: FunnelRow, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """A funnel row as ``dataset.json`` holds it: with ground truth, the precision of what it kept and the
    recall of true rare-pair images (and the counts behind them); without, no such keys at all."""
    if metrics is None:
        return dict(row.__dict__)
    detail = {k: v for k, v in metrics.items() if k not in ("precision", "recall")}
    return {**row.__dict__, "precision": metrics["precision"], "recall": metrics["recall"], "truth": detail}


def counts_of(manifest: pl.DataFrame, rarity: dict, filt: dict) -> dict[str, Any]:
    return {
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


def dataset_info(out: Path, run_cfg: dict, vocab: Vocabulary, stats: dict[str, dict], manifest: pl.DataFrame,
                 curve: str) -> Assembly:
    """The funnel, counts and ``dataset.json`` of a build from its steps' stats (``pairs``, ``candidates``,
    ``filters``, ``output`` and, with ground truth, ``truth``); ``curve``: the calibration curve's file."""
    rarity, cands, filt, output = stats["pairs"], stats["candidates"], stats["filters"], stats["output"]
    funnel = funnel_rows(vocab, run_cfg["max_cooccurrence"], rarity, cands, filt, manifest)
    truth = stats.get("truth")
    truth_rows = truth_column(truth, filt)
    source_stats = {k: {n: v for n, v in st.items() if n != "rejected"} for k, st in cands.get("sources", {}).items()}
    if filt["rejected_at_ingest"]:
        source_stats["pool"]["rejected_at_ingest"] = filt["rejected_at_ingest"]
    counts = counts_of(manifest, rarity, filt)
    info = {
        "name": out.resolve().name,
        "builder": "imagenet-ao",
        "config": run_cfg,
        "versions": versions(),
        "counts": counts,
        "vocabulary": {"objects": vocab.object_names, "attributes": vocab.attribute_names},
        "funnel": [funnel_entry(f, m) for f, m in zip(funnel, truth_rows or [None] * len(funnel), strict=True)],
        "sources": source_stats,
        "exports": output["exports"],
        "rarity": {"nmi": rarity["nmi"], "captions": rarity["captions"], "files": rarity["files"],
                   "failed_files": rarity["failed_files"]},
    }
    if truth is not None:
        info["truth"] = truth["info"]
    if filt.get("calibration"):
        info["calibration"] = {**filt["calibration"], "curve": curve}
    return Assembly(funnel, truth_rows, counts, info)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for d in ("curate", "torch", "open_clip_torch", "polars", "webdataset", "faiss-cpu"):
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            pass
    return out
