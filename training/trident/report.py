"""``RUN/report.md``, ``RUN/results.json`` and ``RUN/curves.png`` of a TRIDENT run.

The table reports what CZSL papers report, in percent: best seen and unseen accuracy, best
harmonic mean (HM), AUC of the seen/unseen curve (bias sweep), attribute and object accuracy
at the "all unseen" operating point; closed and open world, val and test. NaN (a split with
no seen or no unseen images) is printed as "n/a".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from curate.fsutil import write_text

from .data import CZSLData
from .results import to_json
from .run import RunSpec

COLUMNS = (("best_seen", "Seen"), ("best_unseen", "Unseen"), ("best_hm", "HM"), ("auc", "AUC"),
           ("attr_acc", "Attr"), ("obj_acc", "Obj"))


def pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * float(v):.2f}"


def metrics_table(results: dict[str, Any]) -> str:
    """Markdown: one row per (world, split)."""
    lines = ["| world | split | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    for world in ("closed", "open"):
        for split, res in results.get(world, {}).items():
            lines.append(f"| {world} | {split} | " + " | ".join(pct(res.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def plot_curves(results: dict[str, Any], path: Path, title: str) -> Path | None:
    """Seen vs unseen accuracy as the unseen bias grows, one line per (world, split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    drew = False
    for world, style in (("closed", "-"), ("open", "--")):
        for split, res in results.get(world, {}).items():
            seen, unseen = res.get("seen_curve"), res.get("unseen_curve")
            if seen is None or unseen is None:
                continue
            ax.plot([100 * float(u) for u in unseen], [100 * float(s) for s in seen], style, marker=".",
                    label=f"{world} {split} (AUC {pct(res.get('auc'))})")
            drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.set_xlabel("unseen accuracy (%)")
    ax.set_ylabel("seen accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def split_sizes(data: CZSLData, train_pairs: list[Any]) -> dict[str, dict[str, int]]:
    """Per split: pairs and images, seen (a training pair) and unseen."""
    seen = {tuple(p) for p in train_pairs}
    out = {}
    for split in ("train", "val", "test"):
        pairs = {tuple(p) for p in data.split_pairs.get(split, [])}
        items = data.items.get(split, [])
        n_seen = sum((it.attr, it.obj) in seen for it in items)
        out[split] = {"pairs_seen": len(pairs & seen), "pairs_unseen": len(pairs - seen),
                      "images_seen": n_seen, "images_unseen": len(items) - n_seen}
    return out


def split_text(sizes: dict[str, dict[str, int]]) -> str:
    return "Splits (seen = a training pair): " + "; ".join(
        f"{s} {v['pairs_seen']} seen / {v['pairs_unseen']} unseen pairs, {v['images_seen']} / {v['images_unseen']} "
        "images" for s, v in sizes.items()) + "."


def best_text(tr: dict[str, Any]) -> str:
    """The best epoch by the checkpoint folder it was saved from (epoch 29 is ``epoch-0028``)."""
    from ..loop import checkpoint_name

    best = tr.get("best")
    if not best:
        return "best: the last epoch (no validation)"
    folder = best.get("checkpoint") or checkpoint_name(int(best["epoch"]) - 1)
    value = best.get("value")
    auc = f", val AUC {100 * value:.2f}" if isinstance(value, float) else ""
    return (f"best: `checkpoints/{folder}` (epoch {best['epoch']} of {tr.get('epochs_done')}{auc}; weights in "
            "`best/`)")


def filter_model(root: Path) -> str | None:
    """The model that filtered a dataset folder (its build's ``model`` in dataset.json), if recorded."""
    info = Path(root) / "dataset.json"
    try:
        return json.loads(info.read_text()).get("config", {}).get("model") if info.is_file() else None
    except (OSError, ValueError):
        return None


def baseline_text(backbone: str, filt: str | None, root: Path) -> str:
    """Which baselines this report has (none: training runs none) and whether the backbone is biased."""
    cmd = f"`curate eval czsl --zero-shot MODEL --data {root}`"
    if filt and filt == backbone:
        return (f"Baselines: none in this run (zero-shot: {cmd}). The backbone `{backbone}` filtered this data "
                "(biased: this model filtered the data): a zero-shot score with it is biased; use an independent "
                "model for the baseline.")
    who = f"independent of the filter model `{filt}`" if filt else "the filter model is not recorded"
    return f"Baselines: none in this run (zero-shot: {cmd}). Backbone `{backbone}`: {who}."


def write_report(run: Path, spec: RunSpec, data: CZSLData, results: dict[str, Any]) -> Path:
    from curate.fsutil import write_json

    sizes = split_sizes(data, spec.train_pairs)
    results = {**results, "splits": sizes, "seed": spec.config.seed, "filter_model": filter_model(data.root)}
    write_json(run / "results.json", to_json(results))
    png = plot_curves(results, run / "curves.png", f"TRIDENT {spec.config.preset} ({spec.config.model})")
    tr = results.get("training", {})
    feas = results.get("feasibility", {})
    missing = tr.get("word_embeddings", {}).get("missing")
    cfg = spec.config
    lines = [
        f"# TRIDENT run: {run.name}",
        "",
        f"Data: `{data.root}` ({data.kind}): {len(data.attrs)} attributes, {len(data.objs)} objects; "
        f"pairs train/val/test {len(data.split_pairs['train'])}/{len(data.split_pairs['val'])}/"
        f"{len(data.split_pairs['test'])}; images {len(data.items['train'])}/{len(data.items['val'])}/"
        f"{len(data.items['test'])}.",
        f"Model: {cfg.model}, preset `{cfg.preset}` (G={cfg.global_masks}, L={cfg.local_poolings}, dim {cfg.dim}, "
        f"alpha {cfg.alpha}, top-{cfg.topk}); backbone `{spec.backbone}`"
        + (f", projector `{spec.projector}`" if spec.projector else ", learned projection") + "."
        + (f" Training step: BatchNorm {cfg.bn_groups} (official: per image group), partners {cfg.partners}."
           if cfg.model == "trident" else ""),
        f"Word embeddings: `{spec.word_embeddings}` ({spec.dims.get('word_dim')}-d"
        f"{f', {missing} missing' if missing else ''}"
        f"). Auxiliary attributes: {len(spec.aux)}/{len(spec.train_pairs)} training pairs"
        + (f" from `{data.aux_source}`" if data.aux_source else " (none found: no smoothing)") + ".",
        f"Training: {tr.get('epochs_done')} epochs, {tr.get('steps')} steps, {tr.get('seconds')} s "
        f"({tr.get('samples_per_s')} samples/s) on {tr.get('device')} x{tr.get('world_size', 1)}; "
        f"{best_text(tr)}; evaluated: `{results.get('model_file')}`. Seed {cfg.seed}.",
        split_text(sizes),
        baseline_text(spec.backbone, filter_model(data.root), data.root),
        "",
        "## Metrics (%)",
        "",
        metrics_table(results),
        "",
        f"Closed world: the split's pairs + the training pairs are the candidates. Open world: all "
        f"{len(data.attrs) * len(data.objs)} attribute x object pairs"
        + (f", feasibility from {feas.get('kind')} (`{feas.get('source')}`), threshold {feas.get('threshold'):.4f} "
           f"chosen on val: {feas.get('feasible_pairs')}/{feas.get('pairs')} pairs kept"
           if feas.get("threshold") is not None else ", no feasibility mask") + ".",
        "NaN (n/a): a split with no seen (or no unseen) images has no seen (unseen) accuracy, nor HM.",
        "",
    ]
    if png:
        lines += [f"![seen vs unseen accuracy]({png.name})", ""]
    if data.notes:
        lines += ["## Data problems (counted, skipped)", ""] + [f"- {n}" for n in data.notes] + [""]
    lines += ["## Config", "", "```json", json.dumps(cfg.to_dict(), indent=1, sort_keys=True), "```", ""]
    write_text(run / "report.md", "\n".join(lines))
    return run / "report.md"


def zero_shot_stem(spec_name: str, split: str) -> str:
    """``czsl-zero-shot-MODEL-SPLIT``: the model spec made a file name (its last 60 characters)."""
    import re

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec_name).strip("-.")[-60:].strip("-.") or "model"
    return f"czsl-zero-shot-{slug}-{split}"


def write_zero_shot_report(out: Path, results: dict[str, Any], spec_name: str, data: Path, split: str) -> Path:
    """``curate eval czsl --zero-shot``'s files, as the other evals write theirs: ``OUT/STEM.json`` (every
    number, the curves included) and ``OUT/STEM.md`` (the table); returns the Markdown's path."""
    from curate.fsutil import write_json

    stem = zero_shot_stem(spec_name, split)
    filt = filter_model(data)
    write_json(out / f"{stem}.json", {"method": "zero-shot", "model": spec_name, "data": str(data), "split": split,
                                      "filter_model": filt, "biased": bool(filt and filt == spec_name),
                                      **to_json(results)})
    feas = results.get("feasibility", {})
    lines = [f"# CZSL zero-shot: `{spec_name}`", "",
             f"Data `{data}`, split {split}; prompt \"a photo of {{attr}} {{obj}}\", no training. "
             f"Open-world feasibility: {feas.get('kind', 'not scored')}. Images decoded "
             f"{results.get('decode', 'fast')} (`--decode`).",
             "",
             "**This model filtered the data (biased: this model filtered the data): its zero-shot scores are not a "
             "fair baseline.**" if filt and filt == spec_name else
             f"Filter model of the data: `{filt}` (this model is independent of it)." if filt else
             "The data records no filter model.", "",
             "## Metrics (%)", "", metrics_table(results), ""]
    write_text(out / f"{stem}.md", "\n".join(lines))
    return out / f"{stem}.md"
