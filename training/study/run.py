"""The study driver: load the evaluated sets once, score every row (cached per model), fit the
baseline line, write ``study.json``, ``study.md`` and the plots.

A study folder holds:

    STUDY/study.json, study.md          the table (one row per model; probes: mean ± std over seeds)
    STUDY/id_vs_ood.png                 ID vs OoD object top-1 on logit axes, the baseline fit
    STUDY/ood_vs_nmi.png                OoD accuracy vs the training corpus's NMI (rows that know it)
    STUDY/scores/<label>-<key>.npz      a row's score matrices per set (+ .json: what made them)

A row's key is its model's fingerprint (spec and weights' content), its method and seeds, and
the content of the dataset, reference and training sets: adding a model to a finished study
scores only that model; a study folder made for another dataset is refused.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.fingerprint import fingerprint, model_fingerprint
from curate.fsutil import atomic_open, write_json
from curate.images import DEFAULT_DECODE
from curate.outdir import META, OutputDir

from ..metrics.robustness import effective_robustness, fit_logit_line, topk
from ..zeroshot import FILTER_NOTE, EvalSet, filter_model_of, is_filter_model, load_eval_set
from .rows import FINETUNE, SCRATCH, ModelRow, check_rows

log = logging.getLogger(__name__)

OOD, ID = "rare", "reference"


@dataclass
class StudyRequest:
    dataset: Path
    reference: Path
    out: Path
    rows: list[ModelRow]
    train: Path | None = None          # labelled training images, for the probes
    baseline: str = "supervised,few-shot"  # the groups (comma-separated) the ER line is fitted over
    device: str = "auto"
    include_rejected: bool = False
    unfiltered: Path | None = None     # unfiltered images of rare pairs (the demo world's rare/): bias check
    overwrite: bool = False
    decode: str = DEFAULT_DECODE       # how JPEGs are decoded for every model (curate.images): fast or exact


@dataclass
class Sets:
    objects: list[str]
    pairs: list[tuple[str, str]]
    sets: dict[str, EvalSet]
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)  # set -> object -> images left out
    loader: Any = None  # labels only (read from the study's sets.json): how to load the images when a row needs them

    def with_images(self) -> Sets:
        """The sets with their images (loaded now if only their labels were read)."""
        if self.loader is not None:
            full = self.loader()
            self.sets, self.loader = full.sets, None
        return self

    def labels(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Object and composition class indices (-1: no attribute) of a set's images."""
        s = self.sets[name]
        oi = {o: i for i, o in enumerate(self.objects)}
        pi = {p: i for i, p in enumerate(self.pairs)}
        return (np.array([oi[o] for o in s.objs], np.int64),
                np.array([pi.get((a, o), -1) if a is not None else -1 for a, o in zip(s.attrs, s.objs, strict=True)],
                         np.int64))


def _dataset_fingerprint(dataset: Path) -> str:
    """What a study reads of a dataset folder: its manifest and shards (not its eval/ or card)."""
    return fingerprint(dataset / "manifest.parquet", dataset / "shards")


def _set_fingerprint(path: Path | None) -> str | None:
    if path is None:
        return None
    return _dataset_fingerprint(path) if (path / "manifest.parquet").is_file() else fingerprint(path)


def _keep(s: EvalSet, keep: list[bool]) -> EvalSet:
    pick = [i for i, k in enumerate(keep) if k]

    def sub(xs):
        return None if xs is None else [xs[i] for i in pick]

    return replace(s, keys=sub(s.keys), attrs=sub(s.attrs), objs=sub(s.objs), images=sub(s.images),
                   files=sub(s.files), emb=None if s.emb is None else s.emb[pick])


def _vocabulary(dataset: Path) -> list[str] | None:
    info = dataset / "dataset.json"
    objects = json.loads(info.read_text()).get("vocabulary", {}).get("objects") if info.exists() else None
    return list(objects) if objects else None


def load_sets(req: StudyRequest) -> Sets:
    """The OoD (rare) set, the ID (reference) set and, if given, the training and unfiltered sets.
    Object classes: the dataset's vocabulary (else its rare set's objects); images of other objects
    in the other sets are left out, counted per object and reported."""
    rare = load_eval_set(req.dataset, OOD, rare_only=True, include_rejected=req.include_rejected)
    objects = _vocabulary(req.dataset) or sorted(set(rare.objs))
    sets = {OOD: rare}
    todo = [(ID, req.reference, False), ("train", req.train, None), ("unfiltered", req.unfiltered, None)]
    excluded: dict[str, dict[str, int]] = {}
    known = set(objects)
    for name, path, rare_only in todo:
        if path is None:
            continue
        s = load_eval_set(path, name, rare_only=rare_only, include_rejected=req.include_rejected, objects=objects)
        out = [o for o in s.objs if o not in known]
        if out:
            excluded[name] = {o: out.count(o) for o in sorted(set(out))}
            log.warning("%s: %d image(s) of %d object(s) absent from the dataset's classes left out (e.g. %r)",
                        path, len(out), len(excluded[name]), sorted(excluded[name])[0])
            s = _keep(s, [o in known for o in s.objs])
        if not s.keys:
            raise CurateError(f"no images of the dataset's objects in the {name} set", where=str(path))
        sets[name] = s
    for o in sorted({o for o in rare.objs} - known):  # a rare image of an object outside the vocabulary
        objects.append(o)
    pairs = sorted({(a, o) for n in (OOD, ID, "unfiltered") if n in sets
                    for a, o in zip(sets[n].attrs, sets[n].objs, strict=True) if a is not None})
    return Sets(objects, pairs, sets, excluded)


SETS_FILE = "sets.json"


def labelled_sets(req: StudyRequest, inputs: dict[str, Any]) -> Sets:
    """The sets' labels from ``STUDY/sets.json`` when it was made from the same inputs (a study whose rows are
    all cached then reads no image), else :func:`load_sets` (and the file is written)."""
    path = req.out / SETS_FILE
    key = fingerprint(inputs)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            sets = {name: EvalSet(name, x["keys"], x["attrs"], x["objs"], None, kind=x["kind"], missing=x["missing"])
                    for name, x in saved["sets"].items()}
            return Sets(saved["objects"], [tuple(p) for p in saved["pairs"]], sets, saved["excluded"],
                        loader=lambda: load_sets(req))
    loaded = load_sets(req)
    write_json(path, {"key": key, "objects": loaded.objects, "pairs": loaded.pairs, "excluded": loaded.excluded,
                      "sets": {name: {"keys": s.keys, "attrs": s.attrs, "objs": s.objs, "kind": s.kind,
                                      "missing": s.missing} for name, s in loaded.sets.items()}})
    return loaded


# -- scoring ---------------------------------------------------------------------------------------
EVALUATED = (ID, OOD, "unfiltered")


def _embeddings(spec: str, s: EvalSet, device: str, decode: str) -> np.ndarray:
    from curate.embed.backends import cached_model

    from ..zeroshot import _embed

    return _embed(cached_model(spec, device), s, decode=decode)


def zeroshot_scores(spec: str, sets: Sets, device: str, decode: str = DEFAULT_DECODE) -> dict[str, np.ndarray]:
    """Per evaluated set: ``NAME/object`` (images x objects) and ``NAME/composition`` (images x pairs) cosine
    scores against the 80-template class text embeddings (as `curate eval zeroshot`)."""
    from curate.embed.backends import cached_model
    from curate.embed.zeroshot import OPENAI_IMAGENET_TEMPLATES, class_text_embeddings

    enc = cached_model(spec, device)
    obj_text = class_text_embeddings(enc, sets.objects, OPENAI_IMAGENET_TEMPLATES)
    pair_text = class_text_embeddings(enc, [f"{a} {o}" for a, o in sets.pairs], OPENAI_IMAGENET_TEMPLATES)
    out = {}
    for name in EVALUATED:
        if name in sets.sets:
            img = _embeddings(spec, sets.sets[name], device, decode)
            out[f"{name}/object"] = (img @ obj_text.T).astype(np.float32)
            out[f"{name}/composition"] = (img @ pair_text.T).astype(np.float32)
    return out


def probe_scores(row: ModelRow, sets: Sets, device: str, features: dict[str, dict[str, np.ndarray]],
                 decode: str = DEFAULT_DECODE) -> dict[str, np.ndarray]:
    """A linear probe per seed on the frozen image tower's embeddings of the training set: ``NAME/object/SEED``."""
    from .probe import probe_logits, train_linear_probe

    if "train" not in sets.sets:
        raise CurateError(f"{row.label}: a probe needs training images", fix="pass --train (labelled images)")
    feats = features.setdefault(row.spec, {})
    for name in ("train", *EVALUATED):
        if name in sets.sets and name not in feats:
            feats[name] = _embeddings(row.spec, sets.sets[name], device, decode)
    y, _ = sets.labels("train")
    out = {}
    for seed in row.seeds:
        w, b = train_linear_probe(feats["train"], y, len(sets.objects), seed=seed, shots=row.shots)
        for name in EVALUATED:
            if name in feats:
                out[f"{name}/object/{seed}"] = probe_logits(feats[name], w, b)
    return out


def scratch_scores(row: ModelRow, sets: Sets, runs: Path, decode: str = DEFAULT_DECODE) -> dict[str, np.ndarray]:
    """The scratch network per seed (its checkpoints under ``runs``): ``NAME/object/SEED`` logits."""
    from .scratch import logits, pixels, train_scratch

    if "train" not in sets.sets:
        raise CurateError(f"{row.label}: the scratch network needs training images", fix="pass --train")
    images = {name: pixels(sets.sets[name], decode=decode) for name in ("train", *EVALUATED) if name in sets.sets}
    y, _ = sets.labels("train")
    out = {}
    for seed in row.seeds:
        model = train_scratch(images["train"], y, len(sets.objects), seed, runs / f"{_slug(row.label)}-seed{seed}",
                              epochs=epochs_of(row))
        for name in EVALUATED:
            if name in images:
                out[f"{name}/object/{seed}"] = logits(model, images[name])
    return out


def finetune_scores(row: ModelRow, sets: Sets, device: str, runs: Path,
                    decode: str = DEFAULT_DECODE) -> dict[str, np.ndarray]:
    """The model's image tower fine-tuned per seed (checkpoints under ``runs``): ``NAME/object/SEED`` logits."""
    from .finetune import finetune, logits

    if "train" not in sets.sets:
        raise CurateError(f"{row.label}: fine-tuning needs training images", fix="pass --train")
    y, _ = sets.labels("train")
    out = {}
    for seed in row.seeds:
        model, enc = finetune(row.spec, device, sets.sets["train"], y, sets.objects, seed,
                              runs / f"{_slug(row.label)}-seed{seed}", epochs=epochs_of(row), decode=decode)
        for name in EVALUATED:
            if name in sets.sets:
                out[f"{name}/object/{seed}"] = logits(model, enc, sets.sets[name], decode=decode)
    return out


def epochs_of(row: ModelRow) -> int | None:
    """The epochs a trained row runs: its ``epochs`` column, else its method's default (None: not trained)."""
    from . import finetune, scratch

    return row.epochs or {SCRATCH: scratch.EPOCHS, FINETUNE: finetune.EPOCHS}.get(row.method)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[:60] or "model"


def row_key(row: ModelRow, inputs: dict[str, Any], decode: str = DEFAULT_DECODE) -> str:
    """What a row's cached scores were made from: the model's weights, the method and seeds, the sets, the
    training settings and how the images were decoded (``decode``: scores from full-size decodes are other
    scores than from DCT-scaled ones, so a cache made before the default changed is not reused)."""
    from . import finetune, scratch

    settings = {SCRATCH: [epochs_of(row), scratch.SIZE], FINETUNE: [epochs_of(row), finetune.LR, finetune.BATCH]}
    return fingerprint(model_fingerprint(row.spec), row.method, list(row.seeds), inputs,
                       inputs["train"] if row.trained else None, settings.get(row.method), f"decode={decode}")


def cached_scores(row: ModelRow, key: str, folder: Path, compute) -> tuple[dict[str, np.ndarray], bool]:
    """The row's scores from ``folder`` if made with this key, else ``compute()`` (then saved)."""
    path = folder / f"{_slug(row.label)}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}, True
    t0 = time.perf_counter()
    scores = compute()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, **scores)
    write_json(path.with_suffix(".json"), {**row.to_dict(), "key": key, "seconds": round(time.perf_counter() - t0, 2)})
    return scores, False


# -- metrics ---------------------------------------------------------------------------------------
def set_metrics(scores: dict[str, np.ndarray], sets: Sets, name: str, seed: int | None) -> dict[str, float | None]:
    y_obj, y_comp = sets.labels(name)
    suffix = "" if seed is None else f"/{seed}"
    obj = topk(scores[f"{name}/object{suffix}"], y_obj, (1, 5))
    comp_key = f"{name}/composition"
    has = y_comp >= 0
    comp = topk(scores[comp_key][has], y_comp[has], (1,)) if seed is None and comp_key in scores and has.any() else None
    return {"object_top1": obj[1], "object_top5": obj[5], "composition_top1": comp[1] if comp else None}


def row_metrics(row: ModelRow, scores: dict[str, np.ndarray], sets: Sets) -> dict[str, Any]:
    """Per evaluated set, each metric's mean (and per-seed values and std when the row has several seeds)."""
    out: dict[str, Any] = {}
    for name in EVALUATED:
        if name not in sets.sets:
            continue
        runs = [set_metrics(scores, sets, name, seed if row.trained else None) for seed in row.seeds]
        m: dict[str, Any] = {}
        for k in runs[0]:
            vals = [r[k] for r in runs if r[k] is not None]
            m[k] = float(np.mean(vals)) if vals else None
            if len(row.seeds) > 1 and vals:
                m[f"{k}_std"] = float(np.std(vals))
                m[f"{k}_seeds"] = vals
        out[name] = m
    return out


def corpus_nmi(path: str, cache: dict[str, float]) -> float:
    """The attribute/object NMI of the labelled images a model was trained on (curate.stats.nmi)."""
    from curate.stats import cooccurrence, nmi

    if path not in cache:
        s = load_eval_set(path, "corpus", include_rejected=True)
        cache[path] = nmi(cooccurrence((a, o) for a, o in zip(s.attrs, s.objs, strict=True) if a is not None))
    return cache[path]


def _check_study_folder(req: StudyRequest, inputs: dict[str, Any]) -> None:
    """A study folder made for another dataset (or reference/training set) is refused, naming it."""
    run = req.out / META / "run.json"
    if req.overwrite or not run.is_file():
        return
    prev = json.loads(run.read_text()).get("config", {})
    for k in ("dataset", "reference", "train", "unfiltered"):
        if k in prev and prev[k] != inputs[k]:
            was = prev.get(f"{k}_path")
            raise CurateError(f"this study folder was made for another {k} ({was}, content {prev[k]}), not "
                              f"{getattr(req, k)} (content {inputs[k]})", where=str(req.out),
                              fix="choose another --out for this dataset, or pass --overwrite to start over")


def run_study(req: StudyRequest) -> dict[str, Any]:
    """Score every row (cached), fit the baseline, write the report; a row that fails is reported, not fatal."""
    from .report import write_report

    check_rows(req.rows)
    for r in req.rows:
        if r.corpus is not None and not Path(r.corpus).exists():
            raise CurateError(f"{r.label}: its training corpus does not exist", where=r.corpus,
                              fix="give the labelled images the model was trained on, or its nmi")
    inputs = {"dataset": _set_fingerprint(req.dataset), "reference": _set_fingerprint(req.reference),
              "train": _set_fingerprint(req.train), "unfiltered": _set_fingerprint(req.unfiltered),
              "include_rejected": req.include_rejected}
    _check_study_folder(req, inputs)
    config = {**inputs, **{f"{k}_path": str(getattr(req, k)) if getattr(req, k) else None
                           for k in ("dataset", "reference", "train", "unfiltered")}}
    filter_spec = filter_model_of(req.dataset)
    with OutputDir(req.out, "eval study", config, overwrite=req.overwrite):
        sets = labelled_sets(req, inputs)
        results: list[dict[str, Any]] = []
        features: dict[str, dict[str, np.ndarray]] = {}
        nmis: dict[str, float] = {}
        for row in req.rows:
            res: dict[str, Any] = {**row.to_dict(), "ok": False}
            t0 = time.perf_counter()
            try:
                from curate.embed.backends import check_spec_syntax

                if row.method != SCRATCH:
                    check_spec_syntax(row.spec)
                key = row_key(row, inputs, req.decode)
                runs = req.out / "runs" / key[:16]  # a row's checkpoints are resumed only by the same settings
                compute = ((lambda r=row, d=runs: scratch_scores(r, sets, d, req.decode)) if row.method == SCRATCH else
                           (lambda r=row, d=runs: finetune_scores(r, sets, req.device, d, req.decode))
                           if row.method == FINETUNE else
                           (lambda r=row: probe_scores(r, sets, req.device, features, req.decode)) if row.is_probe
                           else (lambda r=row: zeroshot_scores(r.spec, sets, req.device, req.decode)))
                scores, hit = cached_scores(row, key, req.out / "scores", lambda c=compute: (sets.with_images(), c())[1])
                res.update(ok=True, cached=hit, key=key, sets=row_metrics(row, scores, sets))
                res["nmi"] = row.nmi if row.nmi is not None else corpus_nmi(row.corpus, nmis) if row.corpus else None
            except CurateError as e:
                res["error"] = e.what + (f" ({e.where})" if getattr(e, "where", None) else "")
            except Exception as e:  # noqa: BLE001 - one model's failure (a bad checkpoint) is its row's
                res["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            res["seconds"] = round(time.perf_counter() - t0, 2)
            # a probe on the filter model's image tower is marked too: that tower chose the images
            res["filter_model"] = is_filter_model(row.spec, filter_spec)
            if res.get("error"):
                log.error("%s: %s", row.label, res["error"])
            results.append(res)
        report = summarise(req, sets, results, filter_spec)
        write_json(req.out / "study.json", report)
        write_report(report, req.out)
    return report


def summarise(req: StudyRequest, sets: Sets, results: list[dict[str, Any]], filter_spec: str | None) -> dict[str, Any]:
    """The baseline fit (object top-1, ID vs OoD, over ``req.baseline``'s rows), each row's ER and the bias check."""
    ok = [r for r in results if r["ok"] and ID in r["sets"]]
    groups = [g.strip() for g in req.baseline.split(",") if g.strip()]
    base = [r for r in ok if r["group"] in groups and not r["filter_model"]]
    fit = fit_logit_line([r["sets"][ID]["object_top1"] for r in base], [r["sets"][OOD]["object_top1"] for r in base])
    for r in ok:
        r["effective_robustness"] = effective_robustness(r["sets"][ID]["object_top1"], r["sets"][OOD]["object_top1"], fit)
    sizes = {name: {"images": len(s.keys), "pairs": len({(a, o) for a, o in zip(s.attrs, s.objs, strict=True)
                                                          if a is not None}),
                    "objects": len(set(s.objs))} for name, s in sets.sets.items()}
    return {
        "dataset": str(req.dataset), "reference": str(req.reference), "train": str(req.train) if req.train else None,
        "unfiltered": str(req.unfiltered) if req.unfiltered else None,
        "object_classes": len(sets.objects), "composition_classes": len(sets.pairs), "templates": 80,
        "decode": req.decode,
        "sizes": sizes, "excluded_objects": sets.excluded, "filter_model": filter_spec, "filter_note": FILTER_NOTE,
        "baseline": {"group": req.baseline, "models": [r["label"] for r in base],
                     "fit": None if fit is None else {"slope": fit.slope, "intercept": fit.intercept,
                                                      "points": fit.points},
                     "metric": "object_top1"},
        "rows": results, "failed": [r["label"] for r in results if not r["ok"]],
        "filter_bias": filter_bias(results),
    }


def filter_bias(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How much the filter model's numbers gain from having chosen the images: its accuracy on the filtered
    rare set minus on unfiltered images of rare pairs (``unfiltered``), less the same difference for the
    independent zero-shot models (their mean). None without both kinds of row and the unfiltered set."""
    rows = [r for r in results if r["ok"] and r["method"] == "zeroshot" and "unfiltered" in r["sets"]]
    filt = [r for r in rows if r["filter_model"]]
    indep = [r for r in rows if not r["filter_model"]]
    if not filt or not indep:
        return None
    out: dict[str, Any] = {"filter": filt[0]["label"], "independent": [r["label"] for r in indep]}
    for k in ("object_top1", "composition_top1"):
        def gain(r, k=k):
            a, b = r["sets"][OOD][k], r["sets"]["unfiltered"][k]
            return None if a is None or b is None else a - b

        g_f = gain(filt[0])
        g_i = [g for g in map(gain, indep) if g is not None]
        if g_f is None or not g_i:
            continue
        out[k] = {"filter_rare": filt[0]["sets"][OOD][k], "independent_rare": float(np.mean([r["sets"][OOD][k] for r in indep])),
                  "filter_gain": g_f, "independent_gain": float(np.mean(g_i)),
                  "independent_gain_std": float(np.std(g_i)), "bias": g_f - float(np.mean(g_i))}
    return out
