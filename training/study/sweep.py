"""A decomposability sweep over a study: mini-CLIPs trained on worlds that differ in one knob (the
attribute/object dependence of their training captions, or their size), three seeds each, all scored
by one ``curate eval study`` on the same rare and reference sets.

Pure functions of the study's report (``run.run_study``): per world, each metric's mean ± std over the
seeds (:func:`aggregate`); Spearman's rho of OoD accuracy vs training-caption NMI with a bootstrap
interval over the seeds (:func:`spearman_bootstrap`); the Markdown table and the plots (OoD vs NMI with
error bars, OoD vs size, and the effective-robustness scatter, drawn by ``report.plot_id_vs_ood``).
``bench/decomposability_study.py`` builds the worlds, trains the models and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .report import plot_id_vs_ood

ID, OOD = "reference", "rare"
METRICS = ("object_top1", "composition_top1")


@dataclass
class SweepWorld:
    """One training world of a sweep and the study labels of its models (one per seed)."""

    name: str
    sweep: str                 # "nmi" (fixed size, the knob varies) or "size" (fixed knob); "nmi,size" if both
    knob: float                # the dependence knob the world was made with
    train_images: int
    atypical_images: int       # train images of pairs that are not their object's typical ones
    nmi: float                 # of its training captions (what the models trained on)
    labels: list[str] = field(default_factory=list)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), np.float64)
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(x: Any, y: Any) -> float | None:
    """Spearman's rank correlation; None with fewer than 3 points or a constant side."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def spearman_bootstrap(nmi: list[float], per_seed: list[list[float]], n_boot: int = 2000,
                       seed: int = 0) -> dict[str, Any]:
    """rho of each world's mean accuracy vs its NMI, and a 95 % percentile interval from resampling every
    world's seeds with replacement (``per_seed[i]``: world ``i``'s accuracy per seed)."""
    rng = np.random.default_rng(seed)
    means = [float(np.mean(v)) for v in per_seed]
    rho = spearman(nmi, means)
    boots = []
    for _ in range(n_boot):
        m = [float(np.mean(rng.choice(v, len(v)))) for v in per_seed]
        r = spearman(nmi, m)
        if r is not None:
            boots.append(r)
    lo, hi = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if boots else (None, None)
    return {"rho": rho, "ci95": [lo, hi], "n_boot": len(boots), "worlds": len(nmi),
            "seeds": [len(v) for v in per_seed]}


def aggregate(report: dict[str, Any], worlds: list[SweepWorld]) -> list[dict[str, Any]]:
    """Per world: ID and OoD object/composition top-1 and ER, mean ± std over its models (seeds) and the
    per-seed values; a world whose models all failed is left out (its labels are listed in the report)."""
    rows = {r["label"]: r for r in report["rows"] if r["ok"]}
    out = []
    for w in worlds:
        mine = [rows[label] for label in w.labels if label in rows]
        if not mine:
            continue
        agg: dict[str, Any] = {"world": w.name, "sweep": w.sweep, "knob": w.knob, "train_images": w.train_images,
                               "atypical_images": w.atypical_images, "nmi": w.nmi, "models": len(mine)}
        for s in (ID, OOD):
            for k in METRICS:
                vals = [r["sets"][s][k] for r in mine if r["sets"][s].get(k) is not None]
                agg[f"{s}/{k}"] = _stat(vals)
        agg["effective_robustness"] = _stat([r["effective_robustness"] for r in mine
                                             if r.get("effective_robustness") is not None])
        out.append(agg)
    return out


def _stat(vals: list[float]) -> dict[str, Any] | None:
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "seeds": [float(v) for v in vals]} if vals else None


def correlations(agg: list[dict[str, Any]], n_boot: int = 2000) -> dict[str, Any]:
    """Spearman rho (with its bootstrap interval over seeds) of each OoD metric vs NMI over the NMI sweep's
    worlds, vs train images over the size sweep's, and vs NMI over the fixed-atypical sweep's (``atypical``:
    worlds with the same number of atypical-pair images)."""
    out: dict[str, Any] = {}
    for sweep, x, name in (("nmi", "nmi", "nmi"), ("size", "train_images", "train_images"),
                           ("atypical", "nmi", "nmi at a fixed atypical-pair count")):
        ws = [a for a in agg if sweep in a["sweep"].split(",")]
        for k in METRICS:
            ws_k = [a for a in ws if a[f"{OOD}/{k}"]]
            if len(ws_k) >= 3:
                out[f"{OOD}/{k} vs {name}"] = spearman_bootstrap([a[x] for a in ws_k],
                                                                 [a[f"{OOD}/{k}"]["seeds"] for a in ws_k], n_boot)
    return out


def _pm(s: dict[str, Any] | None, signed: bool = False) -> str:
    if not s:
        return "—"
    return (f"{s['mean']:+.3f}" if signed else f"{s['mean']:.3f}") + f" ± {s['std']:.3f}"


def sweep_markdown(agg: list[dict[str, Any]], corr: dict[str, Any], sizes: dict[str, Any],
                   supervised: list[dict[str, Any]]) -> list[str]:
    """The per-world table (mean ± std over seeds), the correlations and the supervised rows, as Markdown lines."""
    lines = ["Sizes: " + "; ".join(f"{name} {s['images']} images ({s['pairs']} pairs)" for name, s in sizes.items()
                                   if name in (ID, OOD)) + ". Mean ± std over each world's seeds.", "",
             "| world | sweep | knob | train images | atypical-pair images | caption NMI | seeds | ID obj top-1 | "
             "OoD obj top-1 | ID comp top-1 | OoD comp top-1 | ER (obj) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a in sorted(agg, key=lambda a: (a["sweep"], -a["nmi"], a["train_images"])):
        lines.append(f"| {a['world']} | {a['sweep']} | {a['knob']:.2f} | {a['train_images']} | {a['atypical_images']} | "
                     f"{a['nmi']:.3f} | {a['models']} | {_pm(a[f'{ID}/object_top1'])} | {_pm(a[f'{OOD}/object_top1'])} | "
                     f"{_pm(a[f'{ID}/composition_top1'])} | {_pm(a[f'{OOD}/composition_top1'])} | "
                     f"{_pm(a['effective_robustness'], signed=True)} |")
    lines += ["", "| correlation | Spearman rho | 95 % bootstrap interval (seeds resampled) | worlds |", "|---|---:|---:|---:|"]
    for name, c in corr.items():
        rho = "—" if c["rho"] is None else f"{c['rho']:+.2f}"
        ci = "—" if c["ci95"][0] is None else f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
        lines.append(f"| {name} | {rho} | {ci} | {c['worlds']} |")
    if supervised:
        lines += ["", "| supervised baseline | ID obj top-1 | OoD obj top-1 |", "|---|---:|---:|"]
        for r in supervised:
            i, o = r["sets"][ID], r["sets"][OOD]
            lines.append(f"| {r['label']} | {_std_of(i)} | {_std_of(o)} |")
    return lines


def _std_of(m: dict[str, Any]) -> str:
    return f"{m['object_top1']:.3f}" + (f" ± {m['object_top1_std']:.3f}" if "object_top1_std" in m else "")


def _errorbars(ax, agg: list[dict[str, Any]], x: str, xlabel: str, title: str, n_ood: int) -> None:
    for k, marker, name in (("object_top1", "o", "object top-1"), ("composition_top1", "s", "composition top-1")):
        pts = sorted((a[x], a[f"{OOD}/{k}"]) for a in agg if a[f"{OOD}/{k}"])
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["std"] for p in pts],
                        fmt=f"-{marker}", capsize=3, label=f"OoD {name}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"accuracy on the rare set ({n_ood} images), mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)


def plot_sweep(agg: list[dict[str, Any]], report: dict[str, Any], out: Path, prefix: str = "") -> list[Path]:
    """``PREFIXood_vs_nmi.png``, ``PREFIXood_vs_size.png``, ``PREFIXood_vs_nmi_fixed_atypical.png`` (when the
    sweep has such worlds) and ``PREFIXeffective_robustness.png`` (one point per world, mean ± std over seeds,
    with the study's supervised rows and baseline line); returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    n_ood = report["sizes"][OOD]["images"]
    paths = []
    for sweep, x, name in (("nmi", "nmi", "ood_vs_nmi"), ("size", "train_images", "ood_vs_size"),
                           ("atypical", "nmi", "ood_vs_nmi_fixed_atypical")):
        ws = [a for a in agg if sweep in a["sweep"].split(",")]
        if not ws:
            continue
        fig, ax = plt.subplots(figsize=(7, 5))
        _errorbars(ax, ws, x, *_sweep_labels(sweep, ws), n_ood)
        if sweep == "size":
            ax.set_xscale("log")
            ax.set_xticks([a["train_images"] for a in ws], [str(a["train_images"]) for a in ws])
            ax.xaxis.set_minor_formatter(NullFormatter())  # no stray "2 x 10^3" between them
        fig.tight_layout()
        paths.append(out / f"{prefix}{name}.png")
        fig.savefig(paths[-1], dpi=130)
        plt.close(fig)
    paths.append(out / f"{prefix}effective_robustness.png")
    plot_id_vs_ood(er_report(agg, report), paths[-1])
    return paths


def _sweep_labels(sweep: str, ws: list[dict[str, Any]]) -> tuple[str, str]:
    """The x-axis label and the title of one sweep's plot: what varies, and (in brackets) what is held fixed."""
    if sweep == "nmi":
        return ("training-caption NMI (attribute/object)",
                f"Rare-composition accuracy vs NMI ({ws[0]['train_images']} train images)")
    if sweep == "size":
        return "training images (log axis)", f"Rare-composition accuracy vs size (knob {ws[0]['knob']:.2f})"
    sizes = ", ".join(str(a["train_images"]) for a in sorted(ws, key=lambda a: a["nmi"]))
    counts = [a["atypical_images"] for a in ws]
    return (f"training-caption NMI (worlds of {sizes} images)",
            f"Rare accuracy vs NMI ({min(counts)}-{max(counts)} atypical-pair images each)")


def er_report(agg: list[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    """The study report with one row per world (object top-1 mean ± std over its seeds) in place of its models,
    plus the study's non-CLIP rows: what ``plot_id_vs_ood`` draws as the effective-robustness scatter."""
    rows = [r for r in report["rows"] if r["ok"] and r["group"] != "clip"]
    for a in agg:
        sets = {}
        for s in (ID, OOD):
            m = a[f"{s}/object_top1"]
            sets[s] = {"object_top1": m["mean"], **({"object_top1_std": m["std"]} if a["models"] > 1 else {})}
        rows.append({"ok": True, "label": f"{a['world']} (NMI {a['nmi']:.2f})", "group": f"mini-CLIP, {a['sweep']} sweep",
                     "method": "zeroshot", "filter_model": False, "sets": sets})
    return {**report, "rows": rows}
