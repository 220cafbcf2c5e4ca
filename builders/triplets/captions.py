"""Caption pairs that differ in exactly one content word (CoVR-style), found by a self-join.

Two captions of n tokens differ only at position i exactly when they share the n-1 other
tokens, i.e. when masking token i gives the same text. So every caption is expanded into its
n masked variants, each hashed to a u64, and a polars self-join on that hash pairs them up:
cost ~ (total tokens) instead of the O(n^2) comparison of every caption with every other.
Captions are normalised and deduplicated first (identical captions never pair), work is
partitioned by token count (two captions of different length never match), so peak memory
is bounded by the largest length bucket, and very common masked patterns ("a photo of a _")
are capped at ``max_group`` members so one slot cannot explode into millions of pairs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

# words that never count as "the" edit: a swap of "a" for "the" is not a content change
STOPWORDS = frozenset(
    """a an the of in on at to for with and or but is are was were be been it its this that these those
    there here some any by from as into onto over under very photo image picture one two of""".split()
)
_NON_WORD = r"[^0-9a-z']+"
MASK = "\x00"


def normalize_caption(text: str) -> str:
    """Lowercase, keep letters/digits/apostrophes, single spaces: the form that is compared."""
    return " ".join(re.sub(_NON_WORD, " ", (text or "").lower()).split())


def normalize_expr(col: str) -> pl.Expr:
    """:func:`normalize_caption` as a polars expression (same result, vectorised)."""
    return (
        pl.col(col).fill_null("").str.to_lowercase().str.replace_all(_NON_WORD, " ")
        .str.strip_chars().str.replace_all(" +", " ")
    )


@dataclass
class CaptionPairStats:
    captions: int = 0
    empty: int = 0
    unique: int = 0
    too_long: int = 0
    masked_rows: int = 0
    capped_groups: int = 0
    pairs: int = 0


def unique_captions(df: pl.DataFrame, col: str = "caption") -> tuple[pl.DataFrame, CaptionPairStats]:
    """Normalise and deduplicate: returns (cid, text, n_tok) with cid ordered by text (deterministic)."""
    st = CaptionPairStats(captions=df.height)
    norm = df.select(normalize_expr(col).alias("text"))
    st.empty = int((norm["text"] == "").sum())
    uniq = (
        norm.filter(pl.col("text") != "").unique("text").sort("text")
        .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("cid"),
                      (pl.col("text").str.count_matches(" ") + 1).cast(pl.UInt32).alias("n_tok"))
    )
    st.unique = uniq.height
    return uniq.select("cid", "text", "n_tok"), st


def _masked(bucket: pl.DataFrame, max_group: int) -> tuple[pl.DataFrame, int]:
    """One row per (caption, position): the masked-text hash and the word under the mask."""
    rows = (
        bucket.with_columns(pl.col("text").str.split(" ").alias("tok"))
        .explode("tok")
        .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("cid").alias("pos"),
                      pl.col("tok").str.len_chars().alias("tlen"))
        .with_columns((pl.col("tlen") + 1).cum_sum().over("cid").alias("_end"))
        .with_columns((pl.col("_end") - 1).alias("end"), (pl.col("_end") - 1 - pl.col("tlen")).alias("start"))
        .filter(~pl.col("tok").is_in(list(STOPWORDS)))
        .with_columns(
            (pl.col("text").str.slice(0, pl.col("start")) + pl.lit(MASK) + pl.col("text").str.slice(pl.col("end")))
            .alias("masked")
        )
        # two independent 64-bit hashes: a 128-bit key, so a false match is out of reach
        .select("cid", "pos", pl.col("tok").alias("word"),
                pl.col("masked").hash(seed=0).alias("h"), pl.col("masked").hash(seed=7).alias("h2"))
    )
    rows = rows.with_columns(pl.len().over("h", "h2", "pos").alias("gsize")).filter(pl.col("gsize") > 1)
    capped = rows.filter(pl.col("gsize") > max_group).select("h", "h2", "pos").n_unique() if rows.height else 0
    rows = rows.sort("h", "h2", "pos", "cid")
    return rows.filter(pl.int_range(pl.len()).over("h", "h2", "pos") < max_group).drop("gsize"), capped


def find_caption_pairs(
    df: pl.DataFrame, col: str = "caption", max_tokens: int = 32, max_group: int = 64
) -> tuple[pl.DataFrame, pl.DataFrame, CaptionPairStats]:
    """All unordered pairs of unique captions differing in exactly one content word.

    Returns ``(captions, pairs, stats)``: captions is (cid, text, n_tok); pairs is
    (cid_a, cid_b, pos, word_a, word_b) with cid_a < cid_b, sorted.
    """
    uniq, st = unique_captions(df, col)
    st.too_long = int((uniq["n_tok"] > max_tokens).sum())
    usable = uniq.filter(pl.col("n_tok") <= max_tokens)
    parts = []
    for n in sorted(usable["n_tok"].unique().to_list()):
        bucket = usable.filter(pl.col("n_tok") == n)
        if bucket.height < 2:
            continue
        m, capped = _masked(bucket, max_group)
        st.capped_groups += capped
        st.masked_rows += m.height
        if m.height == 0:
            continue
        j = m.join(m, on=["h", "h2", "pos"], suffix="_b").filter(pl.col("cid") < pl.col("cid_b"))
        parts.append(j.select(pl.col("cid").alias("cid_a"), "cid_b", "pos",
                              pl.col("word").alias("word_a"), "word_b"))
    if parts:
        pairs = pl.concat(parts)
        pairs = pairs.sort("cid_a", "cid_b")
    else:
        pairs = pl.DataFrame(schema={"cid_a": pl.UInt32, "cid_b": pl.UInt32, "pos": pl.UInt32,
                                     "word_a": pl.String, "word_b": pl.String})
    st.pairs = pairs.height
    return uniq, pairs, st


def naive_caption_pairs(texts: Iterable[str]) -> set[tuple[str, str]]:
    """The O(n^2) reference: compare every unique caption with every other (bench and tests)."""
    uniq = sorted({t for t in (normalize_caption(x) for x in texts) if t})
    toks = [u.split(" ") for u in uniq]
    out = set()
    for i in range(len(uniq)):
        ti = toks[i]
        for j in range(i + 1, len(uniq)):
            tj = toks[j]
            if len(ti) != len(tj):
                continue
            diff = [k for k in range(len(ti)) if ti[k] != tj[k]]
            if len(diff) == 1 and ti[diff[0]] not in STOPWORDS and tj[diff[0]] not in STOPWORDS:
                out.add((uniq[i], uniq[j]))
    return out
