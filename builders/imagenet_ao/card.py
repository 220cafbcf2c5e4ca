"""The dataset card: ``README.md`` with the funnel table, counts and histograms (PNG)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from curate.fsutil import atomic_open, write_text


def _histogram(counts: pl.DataFrame, label: str, path: Path, top: int = 40) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = counts.sort(["len", label], descending=[True, False]).head(top)
    fig, ax = plt.subplots(figsize=(8, 0.25 * max(4, counts.height) + 1))
    ax.barh(counts[label].to_list()[::-1], counts["len"].to_list()[::-1], color="#4477aa")
    ax.set_xlabel("images")
    ax.set_title(f"images per {label}" + (f" (top {top})" if counts.height >= top else ""))
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)


def funnel_markdown(funnel: list[dict]) -> str:
    lines = ["| stage | kept | removed | note |", "|---|---:|---:|---|"]
    for f in funnel:
        lines.append(f"| {f['stage']} | {f['count']:,} | {f['removed']:,} | {f['note']} |")
    return "\n".join(lines)


def write_card(out: Path, info: dict, manifest: pl.DataFrame) -> Path:
    _histogram(manifest.group_by("attr").len(), "attr", out / "hist_attributes.png")
    _histogram(manifest.group_by("obj").len(), "obj", out / "hist_objects.png")
    c = info["counts"]
    splits = ", ".join(f"{k}: {v}" for k, v in c["splits"].items())
    examples = manifest.filter(pl.col("rare")).sort("score_comp", descending=True).head(10)
    ex_lines = "\n".join(f"| {r['key']} | {r['pair']} | {r['source']} | {r['score_comp']:.3f} | {r['split']} |"
                         for r in examples.iter_rows(named=True))
    text = f"""# {info['name']}: rare attribute-object images (ImageNet-AO style)

Built by `curate build imagenet-ao` (curate {info['versions'].get('curate', '?')}).
Rare means: the attribute and the object never co-occur (count <= {info['config']['max_cooccurrence']})
in the {c['captions_scanned']:,} captions scanned. Normalised mutual information of
attribute/object co-occurrence in those captions: **{c['nmi']:.4f}**.

- samples: **{c['samples']:,}** in {c['pairs']} pairs ({c['rare_pairs_kept']} rare / unseen, {c['seen_pairs_kept']} common / seen)
- splits: {splits}
- model used for retrieval and filtering: `{info['config']['model']}`

## Funnel

{funnel_markdown(info['funnel'])}

## Histograms

![images per attribute](hist_attributes.png)
![images per object](hist_objects.png)

## Highest-scoring rare-pair images

| key | pair | source | composition score | split |
|---|---|---|---:|---|
{ex_lines}

## Layout

- `shards/*.tar` — WebDataset (`KEY.jpg`, `KEY.json`)
- `manifest.parquet` — one row per sample (key, shard, attr, obj, pair, rare, split, scores, source, review_status)
- `pairs.parquet` — every attribute x object pair with its co-occurrence and marginal counts
- `embeddings/` — image embeddings (clip-retrieval layout)
- `dataset.json` — config, versions, counts, funnel
- `exports/` — {', '.join(info.get('exports', {})) or 'none'}
"""
    path = out / "README.md"
    write_text(path, text)
    return path
