"""Candidate filters. Each is a named, configurable step that records how many it removed.

All work on L2-normalised CLIP embeddings (images ``[N, D]``; text per class) so they are
cheap matrix products; the image bytes are only touched by the decode/resolution check.

- ``decode``: the image decodes and is at least ``min_resolution`` pixels on its short side
  (a decompression-bomb guard refuses absurdly large images before decoding them);
- ``object``: the target object is within the top-``object_topk`` of zero-shot
  classification over *all* objects (80 OpenAI ImageNet templates, averaged per class);
- ``attribute``: the target attribute scores highest among the attributes of its family
  for that object (``a photo of a {attr} {obj}`` prompts); its *margin* (target score minus
  the family's best other) is what ``--calibrate`` thresholds instead;
- ``composition``: cosine(image, "a photo of a {attr} {obj}") >= ``comp_threshold``;
- ``dedup``: greedy near-duplicate removal (cosine >= ``dedup_threshold``) within and across
  pairs, keeping the higher composition score;
- ``cap``/``minimum``: at most ``images_per_pair`` per pair (best first; ``seen_images_per_pair``
  for a seen pair when set); pairs with fewer than ``min_images_per_pair`` left are dropped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import polars as pl

MAX_PIXELS = 64_000_000  # 8000 x 8000; beyond that we refuse to decode (bomb guard)


@dataclass
class FilterConfig:
    min_resolution: int = 64
    object_topk: int = 5
    attribute_check: bool = True
    comp_threshold: float = 0.0
    dedup_threshold: float = 0.95
    images_per_pair: int = 20
    min_images_per_pair: int = 3
    seen_images_per_pair: int = 0  # cap of a seen (not rare) pair; 0 = images_per_pair


def check_image(data: bytes, min_resolution: int) -> tuple[bool, str, int, int]:
    """(ok, reason, width, height) without trusting the file: size read from the header first."""
    from PIL import Image

    if not data:
        return False, "empty file", 0, 0
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                return False, f"too large ({w}x{h}, decompression-bomb guard)", w, h
            if im.format == "JPEG":  # every coefficient is still entropy-decoded (a truncated or corrupt
                im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))  # file fails as at full size), the
                # pixels are made at 1/8 scale: whether it decodes is all this check keeps
            im.load()
            if min(w, h) < min_resolution:
                return False, f"too small ({w}x{h} < {min_resolution})", w, h
            return True, "", w, h
    except Image.DecompressionBombError:
        return False, "decompression-bomb guard", 0, 0
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad image
        return False, f"undecodable ({type(e).__name__})", 0, 0


def object_rank(img: np.ndarray, obj_text: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of each image's target object among all objects."""
    sims = img @ obj_text.T
    tgt = sims[np.arange(len(target)), target]
    return (sims > tgt[:, None]).sum(1)


def attribute_scores(img: np.ndarray, pair_text: dict[tuple[str, str], np.ndarray], attrs: list[str],
                     objs: list[str], families: dict[str, list[str]],
                     family_of: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(wins, margin) per image: does the target attribute beat every other attribute of its family
    for that object, and by how much (target score minus the best other; +inf for a family of one)."""
    wins = np.ones(len(attrs), dtype=bool)
    margin = np.full(len(attrs), np.inf)
    for i, (a, o) in enumerate(zip(attrs, objs, strict=True)):
        fam = families.get(family_of.get(a, ""), [a])
        if len(fam) < 2:
            continue
        t = np.stack([pair_text[(x, o)] for x in fam])
        s = t @ img[i]
        wins[i] = fam[int(np.argmax(s))] == a
        j = fam.index(a)
        margin[i] = float(s[j]) - float(np.max(np.delete(s, j)))
    return wins, margin


def attribute_wins(img: np.ndarray, pair_text: dict[tuple[str, str], np.ndarray], attrs: list[str],
                   objs: list[str], families: dict[str, list[str]], family_of: dict[str, str]) -> np.ndarray:
    """True where the target attribute beats every other attribute of its family for that object."""
    return attribute_scores(img, pair_text, attrs, objs, families, family_of)[0]


def dedup(emb: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy near-duplicate removal: keep the best-scoring image of every cluster of cos >= threshold."""
    from curate.index import greedy_dedup

    return greedy_dedup(emb, scores, threshold)


def cap_and_minimum(df: pl.DataFrame, images_per_pair: int, min_images_per_pair: int,
                    seen_images_per_pair: int = 0) -> tuple[pl.DataFrame, list[str]]:
    """Keep the best ``images_per_pair`` per (attr, obj) (``seen_images_per_pair`` for a seen pair,
    ``rare`` false, when set); drop pairs with fewer than the minimum."""
    df = df.sort(["attr", "obj", "score_comp", "source", "src_key"], descending=[False, False, True, False, False])
    cap = pl.lit(images_per_pair)
    if seen_images_per_pair and "rare" in df.columns:
        cap = pl.when(pl.col("rare").fill_null(True)).then(cap).otherwise(pl.lit(seen_images_per_pair))
    df = (df.with_columns(pl.int_range(pl.len()).over(["attr", "obj"]).alias("_rank"))
          .filter(pl.col("_rank") < cap).drop("_rank"))
    counts = df.group_by(["attr", "obj"]).len()
    small = counts.filter(pl.col("len") < min_images_per_pair).select("attr", "obj")
    dropped = sorted(f"{a} {o}" for a, o in small.iter_rows())
    return df.join(small, on=["attr", "obj"], how="anti"), dropped
