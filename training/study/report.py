"""``study.md`` and the paper's plots (``id_vs_ood.png``, ``ood_vs_nmi.png``) from a study report."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from curate.fsutil import write_text

from ..metrics.robustness import logit

ID, OOD = "reference", "rare"


def _num(m: dict[str, Any] | None, k: str) -> str:
    if not m or m.get(k) is None:
        return "—"
    std = m.get(f"{k}_std")
    return f"{m[k]:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def _signed(v: float | None) -> str:
    return "—" if v is None else f"{v:+.3f}"


def markdown(report: dict[str, Any]) -> str:
    sz = report["sizes"]
    lines = [f"# Study: `{report['dataset']}`", "",
             "Sizes: " + "; ".join(f"{name} {s['images']} images, {s['pairs']} pairs, {s['objects']} objects"
                                   for name, s in sz.items())
             + f". Classes: {report['object_classes']} objects, {report['composition_classes']} compositions "
               "(80 OpenAI templates for zero-shot rows). Images decoded "
               f"{report.get('decode', 'fast')} (`--decode`).",
             "",
             f"ID = the reference set (`{report['reference']}`), OoD = the dataset's rare set. Probes: mean ± std over "
             "their seeds (the seed draws the shots and the initialisation). ER: OoD object top-1 minus what the "
             f"baseline line predicts from ID object top-1 (logit axes, fitted over `{report['baseline']['group']}`"
             + (f": {', '.join(report['baseline']['models'])}" if report["baseline"]["models"] else "") + ").",
             "",
             "| model | group | ID obj top-1 | OoD obj top-1 | OoD obj top-5 | ID comp top-1 | OoD comp top-1 | ER | NMI | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        if not r["ok"]:
            lines.append(f"| {r['label']} | {r['group']} | failed | | | | | | | {r['error']} |")
            continue
        i, o = r["sets"].get(ID), r["sets"].get(OOD)
        note = report["filter_note"] if r["filter_model"] else ""
        lines.append(f"| {r['label']} | {r['group']} | {_num(i, 'object_top1')} | {_num(o, 'object_top1')} | "
                     f"{_num(o, 'object_top5')} | {_num(i, 'composition_top1')} | {_num(o, 'composition_top1')} | "
                     f"{_signed(r.get('effective_robustness'))} | "
                     f"{_num(r, 'nmi')} | {note} |")
    fit = report["baseline"]["fit"]
    lines += ["", f"Baseline line: logit(OoD) = {fit['slope']:.3f} · logit(ID) + {fit['intercept']:.3f} over "
                  f"{fit['points']} model(s)." if fit else
              f"No baseline line: `{report['baseline']['group']}` has fewer than two models with different ID "
              "accuracy, so ER is not computed."]
    groups = _groups(report)
    if groups:
        lines += ["", "| group | models | ID obj top-1 | OoD obj top-1 | OoD comp top-1 |", "|---|---:|---:|---:|---:|"]
        for g, x in groups.items():
            lines.append(f"| {g} | {x['n']} | " + " | ".join(
                "—" if x[k] is None else f"{x[k][0]:.3f}" + (f" ± {x[k][1]:.3f}" if x["n"] > 1 else "")
                for k in ("id", "ood", "comp")) + " |")
        lines += ["", "(mean ± std over the group's models, the filter model left out)"]
        lines += _findings(groups)
    bias = report.get("filter_bias")
    if bias:
        lines += ["", "## Filter-model bias", "",
                  f"The filter model `{bias['filter']}` chose the rare set's images. `{report['unfiltered']}` holds "
                  "unfiltered images of rare pairs (no model chose them). Gain = accuracy on the filtered rare set "
                  "minus on the unfiltered images; bias = the filter model's gain minus the independent models' "
                  f"({', '.join(bias['independent'])}) mean gain: how much of its number the filter chose.", "",
                  "| metric | filter on rare | independent on rare | filter gain | independent gain | bias |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k in ("object_top1", "composition_top1"):
            if k in bias:
                b = bias[k]
                lines.append(f"| {k} | {b['filter_rare']:.3f} | {b['independent_rare']:.3f} | {b['filter_gain']:+.3f} | "
                             f"{b['independent_gain']:+.3f} ± {b['independent_gain_std']:.3f} | {b['bias']:+.3f} |")
    notes = [f"{name}: {sum(x.values())} image(s) of {len(x)} object(s) absent from the dataset left out "
             f"({', '.join(f'{o} {n}' for o, n in list(x.items())[:5])})" for name, x in report["excluded_objects"].items()]
    notes += [f"{r['label']} failed: {r['error']}" for r in report["rows"] if not r["ok"]]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _findings(groups: dict[str, dict[str, Any]], reference: str = "clip") -> list[str]:
    """One plain sentence per group against the zero-shot group on the rare set (object top-1)."""
    base = groups.get(reference, {}).get("ood")
    if not base:
        return []
    out = [""]
    for g, x in groups.items():
        if g == reference or not x["ood"]:
            continue
        diff = x["ood"][0] - base[0]
        spread = max(x["ood"][1], base[1])
        verdict = ("does not help on the rare set" if diff <= 0 else
                   "is within the spread of the zero-shot models" if diff <= spread else "helps on the rare set")
        out.append(f"- `{g}` {verdict}: OoD object top-1 {x['ood'][0]:.3f} vs {base[0]:.3f} for the independent "
                   f"zero-shot models ({diff:+.3f}; ID {x['id'][0]:.3f} vs {groups[reference]['id'][0]:.3f}).")
    return out if len(out) > 1 else []


def _groups(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    rows = [r for r in report["rows"] if r["ok"] and not r["filter_model"] and ID in r["sets"]]
    for g in dict.fromkeys(r["group"] for r in rows):
        rs = [r for r in rows if r["group"] == g]

        def stat(name, k, rs=rs):
            v = [r["sets"][name][k] for r in rs if r["sets"][name].get(k) is not None]
            return (float(np.mean(v)), float(np.std(v))) if v else None

        out[g] = {"n": len(rs), "id": stat(ID, "object_top1"), "ood": stat(OOD, "object_top1"),
                  "comp": stat(OOD, "composition_top1")}
    return out


def _logit_axis(ax, axis: str, lo: float, hi: float) -> None:
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
             if lo <= logit(t) <= hi]
    (ax.set_xticks if axis == "x" else ax.set_yticks)([logit(t) for t in ticks])
    (ax.set_xticklabels if axis == "x" else ax.set_yticklabels)([f"{t:.0%}" for t in ticks])
    (ax.set_xlim if axis == "x" else ax.set_ylim)(lo, hi)


def _place_labels(fig, ax, labels: list[tuple[float, float, str, int]]) -> None:
    """Each point's label on the side (right/left, above/below) whose box overlaps the labels placed so far least."""
    fig.canvas.draw()
    boxes: list[tuple[float, float, float, float]] = []
    points = [ax.transData.transform((x, y)) for x, y, _, _ in labels]
    for (x, y, text, size), (px, py) in zip(labels, points, strict=True):
        w, h = 0.6 * size * len(text) * fig.dpi / 72, 1.2 * size * fig.dpi / 72
        best = None
        for dx, dy, ha, va in ((6, 3, "left", "bottom"), (6, -3, "left", "top"), (-6, 3, "right", "bottom"),
                               (-6, -3, "right", "top")):
            sx, sy = dx * fig.dpi / 72, dy * fig.dpi / 72
            x0 = px + sx if ha == "left" else px + sx - w
            y0 = py + sy if va == "bottom" else py + sy - h
            box = (x0, y0, x0 + w, y0 + h)
            hit = sum(max(0.0, min(box[2], b[2]) - max(box[0], b[0])) * max(0.0, min(box[3], b[3]) - max(box[1], b[1]))
                      for b in boxes)
            hit += sum(1e4 for qx, qy in points if box[0] <= qx <= box[2] and box[1] <= qy <= box[3])
            if best is None or hit < best[0]:
                best = (hit, dx, dy, ha, va, box)
        _, dx, dy, ha, va, box = best
        boxes.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=size)


def plot_id_vs_ood(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["ok"] and ID in r["sets"]]
    fig, ax = plt.subplots(figsize=(10.5, 6.5))
    if rows:
        xs = np.array([logit(r["sets"][ID]["object_top1"]) for r in rows])
        ys = np.array([logit(r["sets"][OOD]["object_top1"]) for r in rows])
        x_lo, x_hi = float(xs.min()) - 0.4, float(xs.max()) + 0.4
        y_lo, y_hi = float(ys.min()) - 0.4, float(ys.max()) + 0.4
        lo, hi = min(x_lo, y_lo), max(x_hi, y_hi)
        ax.plot([lo, hi], [lo, hi], ls=":", c="grey", lw=1, label="y = x (no drop)")
        fit = report["baseline"]["fit"]
        if fit:
            ax.plot([x_lo, x_hi], [fit["slope"] * x_lo + fit["intercept"], fit["slope"] * x_hi + fit["intercept"]],
                    c="black", lw=1.2, label=f"baseline fit ({report['baseline']['group']})")
        colours = dict(zip(dict.fromkeys(r["group"] for r in rows), plt.rcParams["axes.prop_cycle"].by_key()["color"],
                           strict=False))
        labels: list[tuple[float, float, str, int]] = []
        for r, x, y in zip(rows, xs, ys, strict=True):
            i, o = r["sets"][ID], r["sets"][OOD]
            xerr = yerr = None
            if "object_top1_std" in i:  # the std band, mapped through the logit
                xerr = [[x - logit(max(i["object_top1"] - i["object_top1_std"], 1e-4))],
                        [logit(min(i["object_top1"] + i["object_top1_std"], 1 - 1e-4)) - x]]
                yerr = [[y - logit(max(o["object_top1"] - o["object_top1_std"], 1e-4))],
                        [logit(min(o["object_top1"] + o["object_top1_std"], 1 - 1e-4)) - y]]
            colour = colours.get(r["group"])
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", ms=7, color=colour, mfc="none" if r["filter_model"] else colour,
                        capsize=2, elinewidth=0.8)
            shots = re.match(r"^probe-k(\d+)$", r["method"])
            text = f"k{shots.group(1)}" if shots else r["label"] + (" (filter model: biased)" if r["filter_model"] else "")
            labels.append((x, y, text, 7 if shots else 8))
        from matplotlib.lines import Line2D

        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], ls="", marker="o", color=c, label=g) for g, c in colours.items()]
        if any(r["filter_model"] for r in rows):
            handles.append(Line2D([], [], ls="", marker="o", mfc="none", color="grey", label="filter model (biased)"))
        _logit_axis(ax, "x", x_lo, x_hi)
        _logit_axis(ax, "y", y_lo, y_hi)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside: over no point
        _place_labels(fig, ax, labels)
    sz = report["sizes"]
    ax.set_xlabel(f"ID object top-1 (reference, {sz.get(ID, {}).get('images', 0)} images; logit axis)")
    ax.set_ylabel(f"OoD object top-1 (rare set, {sz.get(OOD, {}).get('images', 0)} images; logit axis)")
    ax.set_title("In-distribution vs rare compositions")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_ood_vs_nmi(report: dict[str, Any], path: Path) -> bool:
    """OoD object and composition top-1 vs the training corpus's NMI; False (no file) when no row knows its NMI."""
    rows = [r for r in report["rows"] if r["ok"] and r.get("nmi") is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for k, marker, name in (("object_top1", "o", "object top-1"), ("composition_top1", "s", "composition top-1")):
        pts = [(r["nmi"], r["sets"][OOD][k], r["label"] + (" (filter model: biased)" if r["filter_model"] else ""))
               for r in rows if r["sets"][OOD].get(k) is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"OoD {name}")
            for x, y, label in pts:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.set_xlabel("training corpus NMI (attribute/object co-occurrence)")
    ax.set_ylabel(f"accuracy on the rare set ({report['sizes'][OOD]['images']} images)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Rare-composition accuracy vs training-corpus NMI")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def write_report(report: dict[str, Any], out: Path) -> None:
    write_text(out / "study.md", markdown(report))
    plot_id_vs_ood(report, out / "id_vs_ood.png")
    if not plot_ood_vs_nmi(report, out / "ood_vs_nmi.png"):
        (out / "ood_vs_nmi.png").unlink(missing_ok=True)


