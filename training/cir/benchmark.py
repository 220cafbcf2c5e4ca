"""``curate eval cir``: a trained run (or a zero-shot baseline) on a benchmark folder, scored as the benchmark scores.

Writes ``OUT/metrics.json`` (every split's metrics, skipped-query counts with examples, the
submission files), ``OUT/report.md``, ``OUT/recall_vs_k.png`` and, for CIRR and CIRCO, the
test-server files. FashionIQ adds the three-category average (CLIP4Cir's), GeneCIS the mean
over its tasks.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.fsutil import write_json

from .data import read_splits
from .evaluate import Retriever, evaluate_split
from .features import FeatureBank, guess_table, load_table, resolve_backbone
from .models import BASELINES, check_dim
from .report import write_eval_report
from .retrievers import FeatureRetriever, load_combiner, read_run

log = logging.getLogger(__name__)
BASELINE_PREFIX = "baseline:"


def default_out(run: str, fmt: str, split: str) -> Path:
    """``RUN/eval/FORMAT-SPLIT`` with the benchmark's own split name (CIRR's test is ``test1``), the
    folder ``curate train cir`` writes its final evaluation to: one folder per split, whichever wrote it."""
    from .data import CIRR_SPLITS

    if fmt == "cirr":
        split = CIRR_SPLITS.get(split, split)
    if run.startswith(BASELINE_PREFIX):
        return Path("cir-eval") / run.replace(":", "-") / f"{fmt}-{split}"
    return Path(run) / "eval" / f"{fmt}-{split}"


def feature_cache(data: Path, fmt: str, backbone: str) -> Path:
    from curate.paths import cache_dir

    tag = hashlib.sha256(f"{data.resolve()}|{fmt}|{backbone}".encode()).hexdigest()[:16]
    return cache_dir() / "cir-features" / tag


def make_retriever(run: str, data: Path, fmt: str, backbone: str | None, features: str | None,
                   device: str) -> tuple[Retriever, dict[str, Any]]:
    """The retriever named by ``run`` (a run folder or ``baseline:KIND``) and what describes it."""
    from curate.options import resolve_device

    dev = resolve_device(device)
    table = load_table(features) if features else guess_table(data)
    if run.startswith(BASELINE_PREFIX):
        kind = run[len(BASELINE_PREFIX):]
        if kind not in BASELINES:
            raise CurateError(f"unknown baseline {kind!r}", fix=f"use baseline:{'|baseline:'.join(BASELINES)}")
        spec = resolve_backbone(backbone, table, str(data))
        bank = FeatureBank(spec, dev, feature_cache(data, fmt, spec), table)
        return FeatureRetriever(bank, kind), {"method": f"zero-shot {kind}", "backbone": spec}
    folder = Path(run)
    info = read_run(folder)
    if info["model"] == "mllm":
        from .mllm import MllmRetriever

        return MllmRetriever.from_run(folder, info, dev), {"method": "MLLM embedder", "mllm": info.get("mllm")}
    spec = backbone or info["backbone"]
    bank = FeatureBank(spec, dev, feature_cache(data, fmt, spec), table)
    check_dim(int(info["combiner"]["dim"]), bank.dim, str(folder / "run.json"), spec)
    model = load_combiner(folder, info, dev)
    return FeatureRetriever(bank, "combiner", model), {"method": "Combiner", "backbone": spec, "run": str(folder)}


def evaluate_cir(run: str, data: str | Path, fmt: str, split: str, out: Path | None = None,
                 backbone: str | None = None, features: str | None = None, device: str = "auto",
                 categories: list[str] | None = None, include_rejected: bool = False) -> dict[str, Any]:
    data = Path(data)
    splits = read_splits(data, fmt, split, categories, include_rejected)
    retriever, about = make_retriever(run, data, fmt, backbone, features, device)
    out = Path(out) if out is not None else default_out(run, fmt, splits[0].split if splits else split)
    out.mkdir(parents=True, exist_ok=True)
    results = [evaluate_split(retriever, s, out).to_dict() for s in splits]
    results += summary_rows(fmt, split, results)
    report = {**about, "data": str(data), "format": fmt, "split": split, "out": str(out), "results": results}
    write_json(out / "metrics.json", report)
    write_eval_report(out, about["method"], results, {"data": f"`{data}`", "format": fmt, "split": split,
                                                       **{k: v for k, v in about.items() if k != "method"}})
    return report


def summary_rows(fmt: str, split: str, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FashionIQ's three-category average (CLIP4Cir's combiner_train); GeneCIS's mean over tasks."""
    scored = [r for r in results if r["metrics"]]
    if len(scored) < 2 or fmt not in ("fashioniq", "genecis"):
        return []
    sat = sorted({k for r in scored for k in r.get("saturated", [])})  # a trivial input makes its mean trivial
    if fmt == "fashioniq":
        from training.metrics.cir import fashioniq_average

        per = {r["name"].split(" ")[1]: r["metrics"] for r in scored}
        avg = fashioniq_average(per)
        metrics = {k: v for k, v in avg.items() if k.startswith("average")}
        sat = [f"average_{k}" for k in sat] + (["average_recall"] if sat else [])
    else:
        keys = [k for k in scored[0]["metrics"] if all(k in r["metrics"] for r in scored)]
        metrics = {k: statistics.mean(r["metrics"][k] for r in scored) for k in keys}
    return [{"name": f"{fmt} average {split}", "format": fmt, "split": split,
             "queries": sum(r["queries"] for r in scored), "gallery": "per category" if fmt == "fashioniq" else
             "per query", "metrics": metrics, "saturated": [k for k in sat if k in metrics], "skipped": {},
             "skipped_examples": {}, "files": []}]
