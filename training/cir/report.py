"""``report.md`` (metric tables a person can read) and ``recall_vs_k.png`` for CIR runs and evaluations."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from curate.fsutil import write_text
from training.loop import checkpoint_name

FAMILIES = (("recall_at", "Recall@K"), ("group_recall_at", "Recall_subset@K"), ("map_at", "mAP@K"),
            ("hard_recall_at", "hard-negative Recall@K"))
PLOT = "recall_vs_k.png"
SHORT = (("group_recall_at", "Rs@"), ("hard_recall_at", "hR@"), ("recall_at", "R@"), ("map_at", "mAP@"))
LEGEND = ("R@K: Recall@K (CIRR, FashionIQ, GeneCIS; CIRCO: the target in the top K); Rs@K: Recall_subset@K; "
          "mAP@K: CIRCO's mAP; hR@K: recall among the target and its hard negatives (GeneCIS-style).")


def short(key: str) -> str:
    """``recall_at10`` -> ``R@10`` (tables stay readable in an 80-column terminal)."""
    for prefix, abbr in SHORT:
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            return abbr + key[len(prefix):]
    return key


def fit_summary(res: Any) -> dict[str, Any]:
    """What a report says about a ``fit()`` result; samples/s is the median over epochs of the
    training rate (fit measures each epoch before its validation)."""
    rates = [r["samples_per_s"] for r in res.history if r.get("samples_per_s")]
    return {"epochs": res.epochs_done, "steps": res.steps, "seconds": round(res.seconds, 2),
            "samples_per_s": round(float(sorted(rates)[len(rates) // 2]), 1) if rates else None,
            "best": res.best, "stopped_early": res.stopped_early, "first_loss": res.first_losses[:1],
            "last_loss": res.last_losses[-1:]}


def pct(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{100 * v:.2f}"
    return str(v)


# recall over the whole (or GeneCIS's per-query) gallery: with K >= the candidates every target is
# found (mAP@K still depends on the ranks, and Recall_subset / hR@K rank their own small sets)
GALLERY_K = ("recall_at",)
REFERENCE_REMOVED = ("cirr", "ours")  # the reference is no candidate (CIRR's rule)


def candidates(fmt: str | None, gallery: Any) -> int | None:
    """How many images a query ranks: the gallery, less its reference where the benchmark removes it."""
    if not isinstance(gallery, int):
        return None  # summary rows: "per category" / "per query"
    return gallery - 1 if fmt in REFERENCE_REMOVED else gallery


def saturated(fmt: str | None, gallery: Any, metrics: dict[str, Any]) -> list[str]:
    """Metrics whose K reaches the number of candidates: R@K there is 100 whatever the model does
    (a 51-image gallery makes CIRR's R@50 100.00 for every method)."""
    n = candidates(fmt, gallery)
    if n is None:
        return []
    out = []
    for key in metrics:
        for prefix in GALLERY_K:
            k = key[len(prefix):]
            if key.startswith(prefix) and k.isdigit() and int(k) >= n:
                out.append(key)
    return out


def gallery_warning(name: str, fmt: str | None, gallery: Any, keys: list[str]) -> str:
    """One line naming the metrics a too-small gallery makes trivial ("" when none)."""
    if not keys:
        return ""
    n = candidates(fmt, gallery)
    what = f"the gallery ({n} candidates per query) is" if n is not None else "a gallery this row averages over is"
    return (f"{name}: {what} not larger than K "
            f"for {', '.join(short(k) for k in keys)}: these are trivially 100 and say nothing about the model")


def metric_table(by_method: dict[str, dict[str, Any]], split_name: str, marks: dict[str, str] | None = None) -> str:
    """One Markdown table: a row per method, a column per scalar metric (percent), under a line with
    the split's query and gallery counts and, when the gallery is not larger than some K, a warning."""
    rows = {m: r[split_name] for m, r in by_method.items() if split_name in r}
    if not rows:
        return ""
    keys = [k for k, v in next(iter(rows.values()))["metrics"].items() if isinstance(v, float)]
    first = next(iter(rows.values()))
    gallery = f"per-query gallery of {first['gallery']}" if first.get("format") == "genecis" else \
        f"gallery {first['gallery']} images" if isinstance(first["gallery"], int) else f"gallery {first['gallery']}"
    head = f"**{split_name}**: {first['queries']} queries, {gallery}"
    if not keys:
        return head + " (no targets: submission files only)\n"
    sat = first["saturated"] if "saturated" in first else saturated(first.get("format"), first["gallery"],
                                                                    dict.fromkeys(keys))
    warn = gallery_warning(split_name, first.get("format"), first["gallery"], [k for k in sat if k in keys])
    lines = [head, *(["", f"> **WARNING {warn}**"] if warn else []), "",
             "| method | " + " | ".join(short(k) for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for method, r in rows.items():
        label = f"{method} ({marks[method]})" if marks and method in marks else method
        lines.append(f"| {label} | " + " | ".join(pct(r["metrics"].get(k)) for k in keys) + " |")
    skipped = first.get("skipped") or {}
    if skipped:
        lines += ["", "Skipped queries: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))]
    return "\n".join(lines) + "\n"


def split_names(by_method: dict[str, dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for r in by_method.values():
        names.update(dict.fromkeys(r))
    return list(names)


def plot_recall(by_method: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Recall (and mAP) against K, one panel per split and metric family, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for name in split_names(by_method):
        for prefix, label in FAMILIES:
            series = {}
            for method, r in by_method.items():
                m = r.get(name, {}).get("metrics", {})
                pts = sorted((int(k[len(prefix):]), v) for k, v in m.items()
                             if re.fullmatch(re.escape(prefix) + r"\d+", k) and isinstance(v, float))
                if len(pts) > 1:
                    series[method] = pts
            if series:
                panels.append((f"{name}: {label}", series))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.ravel(), panels, strict=False):
        for method, pts in series.items():
            ax.plot([k for k, _ in pts], [100 * v for _, v in pts], marker="o", label=method)
            ax.set_xticks([k for k, _ in pts])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("K")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


BIASED = "biased: this model filtered the data"


def best_line(tr: dict[str, Any]) -> str:
    """The best epoch by the checkpoint folder it was saved from (``fit`` counts epochs from 1, its
    folders from 0: epoch 29 is ``epoch-0028``); its weights are ``best/model.safetensors``."""
    best = tr.get("best")
    if not best:
        return "- best: the last epoch (no validation split)"
    folder = best.get("checkpoint") or checkpoint_name(int(best["epoch"]) - 1)  # runs from before it was recorded
    value = best.get("value")
    score = f", {best.get('metric')} {value:.4f}" if isinstance(value, float) else ""
    return (f"- best: `checkpoints/{folder}` (epoch {best['epoch']} of {tr.get('epochs', '?')}{score}; weights in "
            "`best/model.safetensors`, the folder itself may since be pruned)")


def data_lines(results: dict[str, Any]) -> list[str]:
    """The data a run trained and was scored on: folders, split mode and sizes, what test shares with train."""
    info, data = results["run"], results.get("data") or {}
    lines = [f"- triplets: `{data.get('triplets') or info['triplets']}` ({info.get('train_triplets', '?')} train "
             "triplets used" + (f", skipped {info['train_skipped']}" if info.get("train_skipped") else "") + ")"
             + (f", mined from `{data['source_dataset']}`" if data.get("source_dataset") else "")]
    sp = data.get("split")
    if sp:
        t, im, co, ed = sp["triplets"], sp["images"], sp["compositions"], sp["edits"]
        sh = sp.get("test_shared_with_train", {})
        lines.append(f"- split by {sp['split_by']}: triplets train/val/test {t['train']}/{t['val']}/{t['test']}, "
                     f"reference+target images {im['train']}/{im['val']}/{im['test']}, compositions "
                     f"{co['train']}/{co['val']}/{co['test']}, edits {ed['train']}/{ed['val']}/{ed['test']}; "
                     f"test shares with train: {sh.get('edits', '?')} edits, "
                     f"{sh.get('references_that_are_train_images', '?')} reference images, "
                     f"{sh.get('compositions', '?')} compositions (seen); the rest of test is unseen")
    seeds = [f"seed {results['seed']}"] if results.get("seed") is not None else []
    if data.get("triplets_seed") is not None:
        seeds.append(f"triplets seed {data['triplets_seed']}")
    if seeds:
        lines.append("- " + ", ".join(seeds))
    return lines


def baseline_marks(results: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Row marks and lines for the zero-shot baselines: each names its model; the one that filtered the
    data (the source dataset's build model) is marked biased."""
    test = results.get("test", {})
    base = [m for m in test if m.startswith("zero-shot")]
    if not base:
        return {}, ["- baselines: none in this run (`--no-baselines`)"]
    info, data = results["run"], results.get("data") or {}
    model, filt = info.get("backbone"), data.get("filter_model")
    biased = bool(model and filt and model == filt)
    marks = dict.fromkeys(base, "biased") if biased else {}
    why = (f"`{model}`, the model that filtered the data ({BIASED})" if biased else
           f"`{model}`, independent of the filter model `{filt}`" if filt else
           f"`{model}` (the filter model is not recorded: bias unknown)")
    return marks, [f"- baselines ({', '.join(base)}): {why}"]


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """``RUN/report.md`` after training: the data, the run, the training summary, the test tables, the plot."""
    info, tr, test = results["run"], results["training"], results["test"]
    marks, base_lines = baseline_marks(results)
    lines = [f"# CIR run: {info['model']} on {info.get('backbone') or info.get('mllm')}", "",
             *data_lines(results),
             f"- training: {tr['epochs']} epochs, {tr['steps']} steps, {tr['seconds']} s with validation, "
             f"{tr['samples_per_s']} triplets/s while training" + (" (stopped early by --max-seconds)" if tr.get("stopped_early") else ""),
             best_line(tr), *base_lines, "",
             "## Test split (percent)", "",
             "Metrics are the benchmarks' own (CLIP4Cir / SEARLE / CIRCO / GeneCIS code, see "
             "training/metrics/cir.py). `ours`: Recall@K with the reference removed, mAP@K over every valid "
             "target, hR@K among the target and its hard negatives. " + LEGEND, ""]
    for name in split_names(test):
        lines += [metric_table(test, name, marks), ""]
    if plot_recall(test, out / PLOT):
        lines += [f"![recall vs K]({PLOT})", ""]
    write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"


def write_eval_report(out: Path, label: str, results: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    """``OUT/report.md`` of ``curate eval cir``: one table per split (category / task)."""
    by_method = {label: {r["name"]: r for r in results}}
    lines = [f"# CIR evaluation: {label}", "", LEGEND, ""]
    for k, v in (extra or {}).items():
        lines.append(f"- {k}: {v}")
    lines.append("")
    for r in results:
        lines += [metric_table(by_method, r["name"]), ""]
        for f in r.get("files", []):
            lines.append(f"- submission file (in the run folder): `{f}`")
    if plot_recall(by_method, out / PLOT):
        lines += ["", f"![recall vs K]({PLOT})", ""]
    write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"
