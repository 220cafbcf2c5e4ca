"""Which split each image of the pool goes to, and what the split held out (``--split-by``).

- ``composition`` (the default): every *composition* is held out whole. A composition is an
  attribute-object pair ("striped heart"), or the normalised caption for images without one
  (caption mode), or the image itself when it has neither. Every image of a composition goes to
  its composition's split, and triplets are mined inside a split, so a test edit (reference
  composition -> target composition) never occurs in train, and no test reference or target is a
  training image; val likewise. Test and val are grown edit by edit: an edit (two compositions one
  word apart, in the modes asked for) is drawn in seeded order and both its compositions join the
  split, until the split holds its share of the images; so every held-out composition has a
  partner to be edited into. What is left goes to train; compositions no edit can reach are
  spread over the splits by the ratios (they only feed hard negatives).
- ``edit``: images split one by one as ``image``, and every *edit* (two compositions one word
  apart, either direction) drawn into one split by the ratios and mined there only: no test edit
  occurs in train and no test image is a training image, but the test compositions are seen in
  training (through other edits): unseen edits of seen compositions, between the two others.
- ``image``: every image on its own, by the ratios (the old behaviour): no test image is a
  training image, but test edits are also training edits, so a trained model is scored on
  edits it has learnt.

``--splits manifest`` takes the dataset's own split column instead (``split_by`` is then
recorded as ``manifest``). :func:`split_summary` measures, after mining, what each split shares
with train, whatever the mode: the numbers the triplets card and ``triplets.json`` print.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from curate.manifest import unit_hash

from .config import SPLIT_BY, SPLITS, assign_split

__all__ = ["SPLIT_BY", "describe", "edit_split", "split_column", "split_summary"]
HELD_OUT = ("test", "val")  # grown in this order from the edits, the rest is train


def composition_keys(pool: pl.DataFrame) -> list[str]:
    """One composition per pool row: ``attr obj``, else ``caption:TEXT``, else ``image:KEY``."""
    from .captions import normalize_expr

    df = pool.select(pl.col("key"), pl.col("attr"), pl.col("obj"), normalize_expr("caption").alias("text"))
    out = []
    for key, attr, obj, text in df.iter_rows():
        if attr is not None and obj is not None:
            out.append(f"pair:{attr}\t{obj}")
        elif text:
            out.append(f"caption:{text}")
        else:
            out.append(f"image:{key}")
    return out


def composition_edges(pool: pl.DataFrame, comps: list[str], modes: list[str], max_tokens: int = 32,
                      max_group: int = 64) -> list[tuple[str, str]]:
    """Unordered pairs of compositions one edit apart in ``modes`` (each pair once, sorted)."""
    pairs = sorted({c for c in comps if c.startswith("pair:")})
    edges: set[tuple[str, str]] = set()
    by: dict[tuple[int, str], list[str]] = {}
    for c in pairs:
        attr, obj = c[len("pair:"):].split("\t")
        if "attribute" in modes:  # same object, other attribute
            by.setdefault((1, obj), []).append(c)
        if "object" in modes:  # same attribute, other object
            by.setdefault((0, attr), []).append(c)
    for group in by.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                edges.add((a, b) if a < b else (b, a))
    if "caption" in modes:
        from .captions import find_caption_pairs

        with_text = pool.with_columns(pl.Series("_comp", comps))
        uniq, cpairs, _ = find_caption_pairs(with_text, "caption", max_tokens, max_group)
        text = dict(zip(uniq["cid"].to_list(), uniq["text"].to_list(), strict=True))
        # a caption edit joins the compositions of the images carrying those captions
        from .captions import normalize_expr

        norm = with_text.select(normalize_expr("caption").alias("text"), "_comp")
        comps_of: dict[str, set[str]] = {}
        for t, c in norm.iter_rows():
            comps_of.setdefault(t, set()).add(c)
        for ca, cb in cpairs.select("cid_a", "cid_b").iter_rows():
            for a in comps_of.get(text[ca], ()):
                for b in comps_of.get(text[cb], ()):
                    if a != b:
                        edges.add((a, b) if a < b else (b, a))
    return sorted(edges)


def assign_by_composition(sizes: dict[str, int], edges: list[tuple[str, str]], ratios: dict[str, float],
                          seed: int) -> dict[str, str]:
    """Composition -> split. Test, then val, take edits in seeded order (both ends join the split,
    neither may already belong to another) until they hold their share of the images; the other
    reachable compositions are train; compositions without any edit follow the ratios."""
    total = sum(sizes.values())
    order = sorted(edges, key=lambda e: (unit_hash(seed, f"edit\t{e[0]}\t{e[1]}"), e))
    out: dict[str, str] = {}
    for split in HELD_OUT:
        budget = ratios.get(split, 0.0) * total
        filled = 0
        for a, b in order:
            if filled >= budget:
                break
            if any(out.get(x, split) != split for x in (a, b)):
                continue
            for x in (a, b):
                if x not in out:
                    out[x] = split
                    filled += sizes.get(x, 0)
    reachable = {x for e in edges for x in e}
    for c in sorted(sizes):
        if c not in out:
            out[c] = ("train" if ratios.get("train", 0.0) > 0 else _largest(ratios)) if c in reachable \
                else assign_split(c, ratios, seed)
    return out


def _largest(ratios: dict[str, float]) -> str:
    return max(SPLITS, key=lambda s: ratios.get(s, 0.0))


def split_column(pool: pl.DataFrame, ratios: dict[str, float], seed: int, split_by: str, modes: list[str],
                 max_tokens: int = 32, max_group: int = 64) -> list[str]:
    """The split of each pool row under ``split_by`` (see the module docstring)."""
    if split_by in ("image", "edit"):
        return [assign_split(k, ratios, seed) for k in pool["key"]]
    comps = composition_keys(pool)
    sizes: dict[str, int] = {}
    for c in comps:
        sizes[c] = sizes.get(c, 0) + 1
    split_of = assign_by_composition(sizes, composition_edges(pool, comps, modes, max_tokens, max_group),
                                     ratios, seed)
    return [split_of[c] for c in comps]


def edit_split(mode: str, info: dict[str, Any], ratios: dict[str, float], seed: int) -> str:
    """``--split-by edit``: the one split an edit is mined in, the same for both of its directions."""
    if mode == "caption":
        ends = sorted([f"caption:{info.get('ref_caption')}", f"caption:{info.get('tgt_caption')}"])
    else:
        ends = sorted([f"pair:{info['ref_attr']}\t{info['ref_obj']}", f"pair:{info['tgt_attr']}\t{info['tgt_obj']}"])
    return assign_split(f"edit\t{ends[0]}\t{ends[1]}", ratios, seed)


# -- what the splits share (measured on the mined triplets) ------------------------------------------

def _edit(r: dict[str, Any]) -> tuple:
    """A triplet's edit: reference composition -> target composition (captions in caption mode)."""
    if r["mode"] == "caption":
        return ("caption", r.get("ref_caption"), r.get("tgt_caption"))
    return (r["ref_attr"], r["ref_obj"], r["tgt_attr"], r["tgt_obj"])


def split_summary(df: pl.DataFrame, split_by: str) -> dict[str, Any]:
    """Per split: triplets, images, compositions and edits, and how many of each the held-out splits
    share with train (0 under ``composition``). ``images`` counts references and targets;
    ``gallery`` every image a split's triplets name (what the CIRR export's gallery holds)."""
    rows = {s: df.filter(pl.col("split") == s).to_dicts() for s in SPLITS}
    imgs = {s: {x for r in rs for x in (r["reference"], r["target"])} for s, rs in rows.items()}
    gallery = {s: {x for r in rs for x in (r["reference"], r["target"], *(r.get("negatives") or []),
                                           *(r.get("gt") or []))} for s, rs in rows.items()}
    refs = {s: {r["reference"] for r in rs} for s, rs in rows.items()}
    edits = {s: {_edit(r) for r in rs} for s, rs in rows.items()}
    comps = {s: {c for r in rs for c in ((r["ref_attr"], r["ref_obj"]), (r["tgt_attr"], r["tgt_obj"]))
                 if r["mode"] != "caption"} for s, rs in rows.items()}
    out: dict[str, Any] = {"split_by": split_by,
                           "triplets": {s: len(rows[s]) for s in SPLITS},
                           "images": {s: len(imgs[s]) for s in SPLITS},
                           "gallery": {s: len(gallery[s]) for s in SPLITS},
                           "compositions": {s: len(comps[s]) for s in SPLITS},
                           "edits": {s: len(edits[s]) for s in SPLITS}}
    for s in HELD_OUT:
        out[f"{s}_shared_with_train"] = {
            "edits": len(edits[s] & edits["train"]),
            "references_that_are_train_images": len(refs[s] & imgs["train"]),
            "images_that_are_train_images": len(gallery[s] & gallery["train"]),
            "compositions": len(comps[s] & comps["train"])}
    return out


def describe(summary: dict[str, Any]) -> str:
    """One paragraph for the card: the mode, the counts, and what test shares with train."""
    t, sh = summary["triplets"], summary.get("test_shared_with_train", {})
    mode = summary["split_by"]
    how = {"composition": "by composition (every attribute-object pair, or caption, held out whole: test and "
                          "val edits and images never occur in train)",
           "edit": "by edit (each edit mined in one split only, images split one by one: test edits and "
                   "images never occur in train, test compositions do, through other edits)",
           "image": "by image (a test edit may also be a training edit: scores measure memorised edits too)",
           "manifest": "from the dataset's own split column"}.get(mode, mode)
    return (f"Split {how}. Triplets train/val/test {t['train']}/{t['val']}/{t['test']}; reference and target "
            f"images {'/'.join(str(summary['images'][s]) for s in SPLITS)}; compositions "
            f"{'/'.join(str(summary['compositions'][s]) for s in SPLITS)}; edits "
            f"{'/'.join(str(summary['edits'][s]) for s in SPLITS)}. Test shares with train: "
            f"{sh.get('edits', 0)} edits, {sh.get('references_that_are_train_images', 0)} references that are "
            f"training images, {sh.get('compositions', 0)} compositions.")
