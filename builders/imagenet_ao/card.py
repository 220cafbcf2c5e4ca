"""The dataset card: ``README.md`` that loaders read and people look at.

- A Hub-style YAML header (license placeholder, task and size categories, ``configs`` with the
  shards of each split, ``dataset_info`` with the features and split sizes): ``datasets.
  load_dataset(DATASET)`` needs nothing else (see :mod:`.hub`).
- How to load it with ``datasets``, ``webdataset``, curate's loaders, clip-retrieval and the
  CZSL codebases; the fields of ``KEY.json`` with their types and missing-value sentinels.
- Pictures: a contact sheet per split (``sheet_SPLIT.png``: the highest-scoring images of each
  pair, rare pairs first, labelled with the pair), the funnel as a chart (``funnel.png``) and
  histograms of images per attribute and per object.
- With ground truth (a demo world, ``--truth FILE``): the funnel table gains the precision of
  what each row kept and the recall of true rare-pair images, drawn in ``funnel_truth.png``;
  with ``--calibrate``, the precision/yield curve (``calibration.png``) and the chosen point.
  Without truth the card is what it was: no such columns (absent, not zero).
"""

from __future__ import annotations

import io
import logging
import textwrap
from pathlib import Path

import polars as pl

from curate.fsutil import atomic_open, read_json, write_text
from curate.hub import ShardSchema, card_header, fields_markdown, loading_snippet, scan_shards
from curate.shards import iter_keys

from .truth import pct

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SHEET_PAIRS = 24       # pairs (rows) on one contact sheet
SHEET_IMAGES = 6       # thumbnails per pair
THUMB = 112            # thumbnail side in pixels
LABEL_WIDTH = 220

FIELD_DOCS = {
    "key": "sample key (also `__key__`): `p-`/`g-` + source key + pair hash",
    "attr": "attribute (adjective)",
    "obj": "object (noun)",
    "pair": "`attr obj`",
    "family": "the attribute's family (color, material, ...; `attribute` when the vocabulary has none)",
    "rare": "true: the pair never co-occurs in the caption corpus (unseen pair); false: a common (seen) pair",
    "split": "train / val / test (unseen pairs only in val and test)",
    "source": "`pool` (retrieved) or `generator` (generated)",
    "score_comp": "cosine similarity of the image to the pair's prompts (composition score)",
    "score_retrieval": "cosine similarity at retrieval; **-1.0 for generated images** (not retrieved)",
    "obj_rank": "rank of the true object in zero-shot classification over all objects (0 = top-1)",
    "width": "width of the source image (pixels)",
    "height": "height of the source image (pixels)",
    "src_key": "key of the image in its source (pool or generator shards)",
}


# -- pictures -----------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80, metadata={"Software": None})
    _plt().close(fig)


def _histogram(counts: pl.DataFrame, label: str, path: Path, top: int = 40) -> None:
    plt = _plt()
    counts = counts.sort(["len", label], descending=[True, False]).head(top)
    fig, ax = plt.subplots(figsize=(8, 0.25 * max(4, counts.height) + 1))
    ax.barh(counts[label].to_list()[::-1], counts["len"].to_list()[::-1], color="#4477aa")
    ax.set_xlabel("images")
    ax.set_title(f"images per {label}" + (f" (top {top})" if counts.height >= top else ""))
    fig.tight_layout()
    _save(fig, path)


def funnel_chart(funnel: list[dict], path: Path) -> Path:
    """One bar per stage, top to bottom: what it kept (dark) out of what it got (light), log scale.

    The rows before ``candidates`` count pairs (vocabulary, rare pairs); the rest count images."""
    plt = _plt()
    first_images = next((i for i, f in enumerate(funnel) if f["stage"] == "candidates"), 0)
    labels = [textwrap.shorten(f["stage"], 44) for f in funnel][::-1]
    kept = [max(int(f["count"]), 0) for f in funnel][::-1]
    before = [k + max(int(f["removed"]), 0) for k, f in zip(kept, funnel[::-1], strict=True)]
    units = ["pairs" if i < first_images else "images" for i in range(len(funnel))][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(labels) + 1.2))
    ax.barh(labels, before, color="#cc6677", alpha=0.35, label="removed by the stage")
    ax.barh(labels, kept, color="#4477aa", label="kept")
    top = max(before, default=1)
    for y, (k, b, u) in enumerate(zip(kept, before, units, strict=True)):
        ax.text(max(b, 1) * 1.08, y, plural(k, u[:-1]) + (f" (-{b - k:,})" if b > k else ""), va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(0.8, max(top, 1) * 12)
    ax.set_xlabel("count (log scale)")
    ax.set_title("funnel: what each stage kept (dark) of what it received")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return path


def truth_chart(funnel: list[dict], path: Path) -> Path:
    """Precision of what each image row kept and recall of true rare-pair images, stage by stage."""
    plt = _plt()
    rows = [f for f in funnel if "precision" in f]
    labels = [textwrap.shorten(f["stage"], 44) for f in rows][::-1]
    y = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(8.5, 0.36 * len(rows) + 1.6), layout="constrained")
    for key, colour, marker, name in (("precision", "#2e86c1", "o", "precision of the kept images"),
                                      ("recall", "#e67e22", "s", "recall of true rare-pair images")):
        vals = [f[key] for f in rows][::-1]
        pts = [(100 * v, i) for v, i in zip(vals, y, strict=True) if v is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour, label=name, lw=1.2)
        for xv, yv in pts:
            ax.annotate(f"{xv:.0f}", (xv, yv), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7,
                        color=colour)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(0, 105)
    ax.set_xlabel("percent")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("label precision and rare-pair recall after each stage (ground truth)", fontsize=10)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    _save(fig, path)
    return path


def calibration_chart(cal: dict, path: Path) -> Path:
    """Precision against yield, one line per attribute margin: the thresholded candidates (left) and the
    dataset the cap would keep (right); the chosen and the configured points marked."""
    from .calibrate import margin_label

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    margins = sorted({p["margin"] for p in cal["points"]}, key=lambda m: -1e9 if m is None else m)
    cmap = plt.get_cmap("viridis")
    panels = (("passing", "precision", "thresholded candidates", "images passing"),
              ("dataset_images", "dataset_precision", "dataset estimate (per-pair cap + minimum)",
               "images in the dataset (estimate)"))
    for ax, (x, y, title, xlabel) in zip(axes, panels, strict=True):
        for j, m in enumerate(margins):
            pts = [p for p in cal["points"] if p["margin"] == m and p[y] is not None]
            ax.plot([p[x] for p in pts], [100 * p[y] for p in pts], marker=".", ms=3, lw=1.1,
                    color="#888888" if m is None else cmap(j / max(1, len(margins) - 1)),
                    ls="--" if m is None else "-", label=f"attribute margin {margin_label(m)}")
        for key, marker, colour in (("configured", "X", "#cc3311"), ("chosen", "*", "#000000")):
            p = cal[key]
            if p[y] is not None:
                ax.plot(p[x], 100 * p[y], marker=marker, ms=13, color=colour, ls="none", zorder=5,
                        label=f"{key}: margin {margin_label(p['margin'])}, composition >= {p['comp']:g}")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 102)
    axes[1].axhline(100 * cal["target_precision"], color="#cc3311", lw=0.8, ls=":", label="target precision")
    axes[0].set_ylabel("label precision (%)")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle("calibration: precision against yield as the composition-score threshold rises (right to left)",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def sheet_rows(manifest: pl.DataFrame, split: str) -> tuple[list[tuple[str, bool, list[dict]]], int]:
    """(pair, rare, best rows) of the pairs shown on a split's sheet, rare pairs first; and how many pairs."""
    df = manifest.filter(pl.col("split") == split)
    if df.height == 0:
        return [], 0
    score = "score_comp" if "score_comp" in df.columns else None
    rare = df["rare"] if "rare" in df.columns else pl.Series([False] * df.height)
    df = df.with_columns(rare.fill_null(False).alias("_rare"),
                         (pl.col(score).fill_nan(None).fill_null(-9.0) if score else pl.lit(0.0)).alias("_s"))
    best = (df.group_by("pair").agg(pl.col("_rare").first(), pl.col("_s").max().alias("_best"))
            .sort(["_rare", "_best", "pair"], descending=[True, True, False]))
    rows = []
    for pair, is_rare, _ in best.head(SHEET_PAIRS).iter_rows():
        top = df.filter(pl.col("pair") == pair).sort(["_s", "key"], descending=[True, False]).head(SHEET_IMAGES)
        rows.append((pair, bool(is_rare), top.to_dicts()))
    return rows, best.height


def contact_sheet(out: Path, manifest: pl.DataFrame, split: str, path: Path) -> dict[str, int] | None:
    """A grid: one row per pair (label, then its best images by composition score). None: empty split."""
    from PIL import Image, ImageDraw

    from curate.images import open_rgb

    rows, total = sheet_rows(manifest, split)
    if not rows:
        return None
    wanted = {r["key"]: out / "shards" / r["shard"] for _, _, top in rows for r in top}
    images = {}
    for s in iter_keys(wanted, exts=("jpg",)):
        try:
            images[s["__key__"]] = open_rgb(s["jpg"], THUMB, fit="long")  # a JPEG decodes near thumbnail size
        except OSError as e:
            log.warning("contact sheet: %s not decodable (%s)", s["__key__"], e)
    pad, head = 6, 34
    width = LABEL_WIDTH + SHEET_IMAGES * (THUMB + pad) + pad
    sheet = Image.new("RGB", (width, head + len(rows) * (THUMB + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    big, small = _font(16), _font(12)
    shown = f"{len(rows)} of {total} pairs" if total > len(rows) else plural(total, "pair")
    draw.text((pad, 8), f"{split}: {shown}, best {SHEET_IMAGES} images each by composition score", fill="black",
              font=big)
    missing = 0
    for i, (pair, rare, top) in enumerate(rows):
        y = head + i * (THUMB + pad)
        lines = textwrap.wrap(pair, 22)[:3]
        for j, line in enumerate(lines):
            draw.text((pad, y + 6 + 18 * j), line, fill="black", font=big)
        tag = "rare (unseen)" if rare else "common (seen)"
        draw.text((pad, y + 10 + 18 * len(lines)), tag, fill="#aa3355" if rare else "#336699", font=small)
        for j, r in enumerate(top):
            x = LABEL_WIDTH + j * (THUMB + pad)
            im = images.get(r["key"])
            if im is None:
                missing += 1
                draw.rectangle([x, y, x + THUMB, y + THUMB], outline="#cc0000")
                draw.text((x + 6, y + THUMB // 2 - 6), "missing", fill="#cc0000", font=small)
                continue
            im = im.copy()
            im.thumbnail((THUMB, THUMB))
            sheet.paste(im, (x + (THUMB - im.width) // 2, y + (THUMB - im.height) // 2))
            score = r.get("score_comp")
            if isinstance(score, float):
                draw.rectangle([x, y + THUMB - 16, x + 44, y + THUMB], fill="black")
                draw.text((x + 3, y + THUMB - 15), f"{score:.2f}", fill="white", font=small)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return {"pairs_shown": len(rows), "pairs": total, "missing_images": missing}


# -- text ----------------------------------------------------------------------------------
def funnel_markdown(funnel: list[dict]) -> str:
    """The funnel table; with ground truth, two more columns: precision and recall (— where a row
    does not count images)."""
    if not any("precision" in f for f in funnel):
        lines = ["| stage | kept | removed | note |", "|---|---:|---:|---|"]
        for f in funnel:
            lines.append(f"| {f['stage']} | {f['count']:,} | {f['removed']:,} | {f['note']} |")
        return "\n".join(lines)
    lines = ["| stage | kept | removed | precision | recall | note |", "|---|---:|---:|---:|---:|---|"]
    for f in funnel:
        lines.append(f"| {f['stage']} | {f['count']:,} | {f['removed']:,} | {pct(f.get('precision'))} | "
                     f"{pct(f.get('recall'))} | {f['note']} |")
    return "\n".join(lines)


def truth_markdown(info: dict) -> str:
    """What the funnel's truth columns rest on (empty without truth)."""
    t = info.get("truth")
    if not t:
        return ""
    missing = t.get("keys_not_in_pool", 0)
    return (f"""Ground truth: {t['source']} ({t['images_with_truth']:,} images with truth"""
            + (f"; {missing:,} of its keys are not among the build's images" if missing else "") + f""").
**Precision**: {t['definitions']['precision']}. **Recall**: {t['definitions']['recall']}
({t['rare_units']:,} such images). The dataset: precision {pct(t['precision'])}, rare-pair images
{pct(t['rare_precision'])}, recall {pct(t['recall'])}. Rows without a value do not count images.

![precision and recall per stage](funnel_truth.png)
""")


def calibration_markdown(info: dict) -> str:
    cal = info.get("calibration")
    if not cal:
        return ""
    from .calibrate import curve_markdown, summary_line

    return f"""## Calibration

`--calibrate` chose the attribute-check and composition-score thresholds from the labelled
candidates ({cal['truth']}): {summary_line(cal)}. Curve of the chosen attribute margin (the whole
grid is in `{cal['curve']}`; estimates leave out near-duplicate removal, the funnel above has the
real result). The same labels chose the thresholds and measure the funnel, so its precision is
in-sample: to check it, calibrate on part of a labelled sample and measure with the rest.

![calibration curve](calibration.png)

{curve_markdown(cal)}
"""


def _sheet_markdown(split: str, st: dict[str, int]) -> str:
    shown = "" if st["pairs"] == st["pairs_shown"] else f", the first {st['pairs_shown']} shown"
    return f"**{split}** ({plural(st['pairs'], 'pair')}{shown}):\n\n![{split} contact sheet](sheet_{split}.png)"


def split_shards(manifest: pl.DataFrame) -> dict[str, tuple[str, int]]:
    """split -> (shard glob relative to the dataset folder, samples), in train/val/test order."""
    counts = dict(manifest.group_by("split").len().iter_rows())
    return {s: (f"shards/imagenet-ao-{s}-*.tar", int(counts[s])) for s in SPLITS if counts.get(s)}


def draw_pictures(out: Path, info: dict, manifest: pl.DataFrame) -> tuple[dict, dict[str, dict[str, int] | None]]:
    """The card's pictures: the histograms, the funnel (and, with truth, its precision/recall chart), the
    calibration curve (with ``--calibrate``) and a contact sheet per split. Returns ``info``, its
    ``calibration`` replaced by the curve read from its file (with ``curve``: the file), and the contact
    sheets' counts by split (None: an empty split)."""
    _histogram(manifest.group_by("attr").len(), "attr", out / "hist_attributes.png")
    _histogram(manifest.group_by("obj").len(), "obj", out / "hist_objects.png")
    funnel_chart(info["funnel"], out / "funnel.png")
    if info.get("truth"):
        truth_chart(info["funnel"], out / "funnel_truth.png")
    else:
        (out / "funnel_truth.png").unlink(missing_ok=True)  # left by an earlier run with truth
    if info.get("calibration"):
        cal = {**read_json(out / info["calibration"]["curve"]), "curve": info["calibration"]["curve"]}
        info = {**info, "calibration": cal}
        calibration_chart(cal, out / "calibration.png")
    sheets = {s: contact_sheet(out, manifest, s, out / f"sheet_{s}.png") for s in SPLITS}
    return info, sheets


def _summary_markdown(info: dict, manifest: pl.DataFrame, shard_counts: dict[str, int]) -> str:
    """The card's title and what follows it: what rare means, the sizes, splits, model and license."""
    c = info["counts"]
    rare_kept = c.get("rare_pairs_kept", 0)
    split_line = ", ".join(f"{k}: {v:,} in {shard_counts.get(k, 0)} shard(s)" for k, v in
                           sorted(c["splits"].items(), key=lambda kv: SPLITS.index(kv[0]) if kv[0] in SPLITS else 9))
    sources = ", ".join(f"{k} {v:,}" for k, v in manifest.group_by("source").len().sort("source").iter_rows()) \
        if "source" in manifest.columns else "see dataset.json"
    return f"""# {info['name']}: rare attribute-object images (ImageNet-AO style)

Built by `curate build imagenet-ao` (curate {info['versions'].get('curate', '?')}).
Rare means: the attribute and the object never co-occur (count <= {info['config']['max_cooccurrence']})
in the {c['captions_scanned']:,} captions scanned. Normalised mutual information of
attribute/object co-occurrence in those captions: **{c['nmi']:.4f}**.

- samples: **{c['samples']:,}** in {c['pairs']} pairs ({rare_kept} rare / unseen, {c['seen_pairs_kept']} common / seen)
- splits: {split_line}
- model used for retrieval and filtering: `{info['config']['model']}`. Zero-shot numbers by this model are
  **biased upwards** (filter model: it chose images it finds easy); `curate eval study` scores the rare
  set with independent models beside it
- license: **not set** (`license: other` in the header is a placeholder); images by source:
  {sources}: set the license your sources allow before sharing
"""


def _usage_markdown(name: str, first_split: str, fewest: int, schema: ShardSchema) -> str:
    """How to load the dataset (``datasets``, curate's loaders, other tools) and the fields of ``KEY.json``."""
    return f"""## Load it

{loading_snippet(f"path/to/{name}", f"shards/imagenet-ao-{first_split}-*.tar", fewest)}

Columns: `jpg` (the image), `json` (the fields below), `__key__`, `__url__` (the shard). Split
sizes are in the header: `datasets` refuses shards that lost or gained samples since this card
was written (`NonMatchingSplitsSizesError`). The manifest (`manifest.parquet`) holds the same
fields plus `shard` and `review_status`; `curate` loaders (`training.data.dataset_samples`,
`ShardDataset`) leave out samples a reviewer rejected. Other tools: `exports/czsl` is a CZSL
root (`CompositionDataset`, TRIDENT), `embeddings/` is a clip-retrieval embeddings folder
(`clip-retrieval index --embeddings_folder DATASET/embeddings --index_folder INDEX`; metadata
columns key, shard, caption, image_path, pair, split), `curate review DATASET` opens FiftyOne.

## Fields of `KEY.json`

Every field is present in every sample with one type; a value the build does not have is a
sentinel, never null: -1.0 (numbers), -1 (integers), "" (text).

{fields_markdown(schema, FIELD_DOCS)}
"""


def _examples_markdown(manifest: pl.DataFrame) -> str:
    """The ten highest-scoring rare-pair images as a table, or a line saying no rare pair was kept."""
    examples = manifest.filter(pl.col("rare")).sort("score_comp", descending=True).head(10) \
        if "rare" in manifest.columns else manifest.head(0)
    ex_lines = "\n".join(f"| {r['key']} | {r['pair']} | {r['source']} | {r['score_comp']:.3f} | {r['split']} |"
                         for r in examples.iter_rows(named=True))
    return ("| key | pair | source | composition score | split |\n|---|---|---|---:|---|\n" + ex_lines) if ex_lines \
        else "No rare pair was kept: every image is of a common (seen) pair."


def _contents_markdown(info: dict, manifest: pl.DataFrame, sheets: dict[str, dict[str, int] | None]) -> str:
    """The card from ``## The data`` on: contact sheets, funnel (with truth and calibration where measured),
    histograms, the best rare-pair images and the folder's layout."""
    sheet_md = "\n\n".join(_sheet_markdown(s, st) for s, st in sheets.items() if st) or "No samples."
    measured = "".join(f"\n\n{md.strip()}" for md in (truth_markdown(info), calibration_markdown(info)) if md)
    return f"""## The data

{sheet_md}

## Funnel

![funnel](funnel.png)

{funnel_markdown(info['funnel'])}{measured}

## Histograms

![images per attribute](hist_attributes.png)
![images per object](hist_objects.png)

## Highest-scoring rare-pair images

{_examples_markdown(manifest)}

## Layout

- `shards/imagenet-ao-SPLIT-NNNNNN.tar` — WebDataset (`KEY.jpg`, `KEY.json`), one set per split
- `manifest.parquet` — one row per sample (key, shard, attr, obj, pair, rare, split, scores, source, review_status)
- `pairs.parquet` — every attribute x object pair with its co-occurrence and marginal counts
- `embeddings/` — image embeddings (clip-retrieval layout)
- `dataset.json` — config, versions, counts, funnel
- `exports/` — {', '.join(info.get('exports', {})) or 'none'}
"""


def card_markdown(info: dict, manifest: pl.DataFrame, sheets: dict[str, dict[str, int] | None],
                  schema: ShardSchema) -> str:
    """The text of ``README.md``: the Hub YAML header, then the sections above."""
    splits = split_shards(manifest)
    shard_counts = dict(manifest.group_by("split").agg(pl.col("shard").n_unique()).iter_rows())
    fewest = min((shard_counts[s] for s in splits), default=1)
    header = card_header(splits, schema, pretty_name=f"{info['name']}: rare attribute-object images",
                         task_categories=["zero-shot-image-classification", "image-classification"],
                         tags=["compositional", "attribute-object", "imagenet-ao", "webdataset", "curate"])
    first_split = next(iter(splits), "test")
    return (f"{header}\n" + _summary_markdown(info, manifest, shard_counts)
            + "\n" + _usage_markdown(info["name"], first_split, fewest, schema)
            + "\n" + _contents_markdown(info, manifest, sheets))


def write_card(out: Path, info: dict, manifest: pl.DataFrame) -> Path:
    """``README.md`` + ``sheet_SPLIT.png``, ``funnel.png``, ``hist_attributes.png``, ``hist_objects.png``."""
    if "review_status" in manifest.columns:
        manifest = manifest.filter(pl.col("review_status").fill_null("") != "reject")
    info, sheets = draw_pictures(out, info, manifest)
    shards = sorted({out / "shards" / s for s in manifest["shard"].unique().to_list()})
    schema = scan_shards([p for p in shards if p.exists()])
    if schema.problems:
        log.warning("dataset shards: %s", "; ".join(schema.problems[:5]))
    path = out / "README.md"
    write_text(path, card_markdown(info, manifest, sheets, schema))
    return path
