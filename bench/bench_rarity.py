"""Rarity scan speed: curate's scan vs the correct naive regex loop vs polars str.contains per pair.

Same captions, same vocabulary, one run. A pair co-occurs in a caption when a form of the
attribute and a form of the object both appear as whole words, case-insensitively, where a
word boundary is any character that is not an ASCII letter or digit (what the scan does, see
``builders/imagenet_ao/rarity.py``). The baselines implement exactly that:

- **naive loop**: for every pair, every caption: lower-case it and ``re.search`` a compiled
  ``(?<![a-z0-9])(form|form...)(?![a-z0-9])`` for the attribute and for the object (Python's
  ``\b`` would be wrong: it treats ``_`` and non-ASCII letters as word characters; a substring
  test would count "red" in "tired"). Run on a subset (it is too slow for the corpus) and
  extrapolated as captions/s; its counts must equal our scan's on that subset.
- **polars**: one ``str.contains`` expression pair per attribute-object pair over the corpus;
  its counts must equal ours.

A baseline whose counts differ is reported as a mismatch, not a ratio. Our scan runs in its
own interpreter at 1x (a tenth of the corpus) and 10x: time and peak memory growth (memory
must stay flat: the scan streams batches).

    python bench/bench_rarity.py [--world DIR] [--naive-captions 20000]

Without --world it materialises the demo world at scale `large` (1M captions) in the curate
cache (`bench/world-large`; a few minutes once, then cached).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    fmt_ratio,
    growth,
    load_average,
    ratio_or_mismatch,
    run_isolated,
    save,
    summary_row,
    uptime,
)

BOUNDARY_BEFORE, BOUNDARY_AFTER = "(?<![a-z0-9])", "(?![a-z0-9])"


def form_regex(forms: list[str]) -> str:
    """Whole-word alternation of lower-cased forms; a non letter/digit inside a form (``t-shirt``)
    matches any single non letter/digit, non-space character, as the scan's normalisation does."""
    alts = []
    for f in forms:
        words = re.sub(r"[^a-z0-9 ]", "\0", f.strip().lower()).split("\0")
        alts.append("[^a-z0-9 ]".join(re.escape(w) for w in words))
    return BOUNDARY_BEFORE + "(?:" + "|".join(alts) + ")" + BOUNDARY_AFTER


def naive_loop(captions: list[str], pairs: list[tuple[list[str], list[str]]]) -> list[int]:
    """The notebook way, done right: for every pair, every caption, lower-case it and search both regexes."""
    counts = []
    for attr_forms, obj_forms in pairs:
        a_re, o_re = re.compile(form_regex(attr_forms)), re.compile(form_regex(obj_forms))
        n = 0
        for c in captions:
            lc = (c or "").lower()
            if a_re.search(lc) and o_re.search(lc):
                n += 1
        counts.append(n)
    return counts


def polars_contains(files: list[Path], pairs: list[tuple[list[str], list[str]]], column: str) -> list[int]:
    """Straightforward polars: one str.contains expression pair per attribute-object pair.

    Rust's regex has no look-behind: the boundaries are consumed instead (``(^|[^a-z0-9])``), which
    counts the same captions."""
    import polars as pl

    lf = pl.scan_parquet([str(f) for f in files]).select(pl.col(column).fill_null("").str.to_lowercase().alias("c"))

    def alt(forms):
        body = form_regex(forms)[len(BOUNDARY_BEFORE):-len(BOUNDARY_AFTER)]
        return r"(?:^|[^a-z0-9])" + body + r"(?:[^a-z0-9]|$)"

    exprs = [(pl.col("c").str.contains(alt(a)) & pl.col("c").str.contains(alt(o))).sum().alias(str(i))
             for i, (a, o) in enumerate(pairs)]
    row = lf.select(exprs).collect().row(0)
    return list(row)


def ours_on(captions: list[str], vocab) -> list[int]:
    """Our scan's counting on an in-memory list (the subset the naive loop sees), pairs in vocab order."""
    import polars as pl

    from builders.imagenet_ao.rarity import TermTable, count_batch

    got = count_batch(pl.Series(captions, dtype=pl.String), TermTable.from_vocab(vocab))["pairs"]
    return [int(got[i, j]) for i in range(len(vocab.attributes)) for j in range(len(vocab.objects))]


SCAN_CODE = """
import json, time, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from builders.imagenet_ao.vocab import load_vocabulary
from builders.imagenet_ao.rarity import scan_corpus
from bench.common import peak_rss_mb
files = [Path(p) for p in {files!r}]
v = load_vocabulary({world!r} + "/world.json", {world!r} + "/world.json")
t = time.perf_counter()
res = scan_corpus(files, v, Path({out!r}))
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "captions": res.captions, "peak_rss_mb": peak_rss_mb(),
                  "pairs": res.pairs.select("attr", "obj", "cooccurrence").rows()}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, default=None)
    ap.add_argument("--naive-captions", type=int, default=20000)
    args = ap.parse_args()
    root = str(Path(__file__).resolve().parent.parent)
    print(uptime(), flush=True)
    world = args.world
    if world is None:
        from builders.synthetic.world import ensure_world
        from curate.paths import cache_dir

        world = ensure_world(cache_dir() / "bench" / "world-large", scale="large", seed=0).path
    import polars as pl

    from builders.imagenet_ao.vocab import load_vocabulary

    files = sorted((world / "captions").glob("*.parquet"))
    v = load_vocabulary(world / "world.json", world / "world.json")
    pairs = [(a.forms, o.forms) for a in v.attributes for o in v.objects]
    names = [(a.name, o.name) for a in v.attributes for o in v.objects]
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench-rarity-"))
    # ours on the whole corpus, and on a 10x smaller slice for the growth comparison
    small = tmp / "small.parquet"
    total_rows = sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in files)
    pl.scan_parquet([str(f) for f in files]).head(max(1, total_rows // 10)).collect().write_parquet(small)
    ours = run_isolated(SCAN_CODE.format(root=root, files=[str(f) for f in files], world=str(world), out=str(tmp / "o1")))
    ours_small = run_isolated(SCAN_CODE.format(root=root, files=[str(small)], world=str(world), out=str(tmp / "o2")))
    load_ours = load_average()
    # naive loop on a subset (it is too slow for the whole corpus), extrapolated as captions/s
    caps = pl.scan_parquet([str(f) for f in files]).head(args.naive_captions).collect()["caption"].to_list()
    t = time.perf_counter()
    naive_counts = naive_loop(caps, pairs)
    naive_s = time.perf_counter() - t
    load_naive = load_average()
    ours_subset = ours_on(caps, v)
    t = time.perf_counter()
    pc = polars_contains(files, pairs, "caption")
    polars_s = time.perf_counter() - t
    load_polars = load_average()
    ours_pairs = {(a, o): c for a, o, c in ours["pairs"]}
    ours_full = [ours_pairs[k] for k in names]
    naive_diff = [(names[i], a, b) for i, (a, b) in enumerate(zip(ours_subset, naive_counts, strict=True)) if a != b]
    polars_diff = [(names[i], a, b) for i, (a, b) in enumerate(zip(ours_full, pc, strict=True)) if a != b]
    r_ours = ours["captions"] / ours["seconds"]
    r_naive = len(caps) / naive_s
    r_polars = total_rows / polars_s
    ratio_naive = ratio_or_mismatch(r_ours, r_naive, f"{len(naive_diff)} pair counts differ, e.g. {naive_diff[:3]}"
                                    if naive_diff else None)
    ratio_polars = ratio_or_mismatch(r_ours, r_polars, f"{len(polars_diff)} pair counts differ, e.g. {polars_diff[:3]}"
                                     if polars_diff else None)
    sizes = [ours_small["captions"], ours["captions"]]
    result = {
        "captions": total_rows, "pairs": len(pairs), "files": len(files),
        "ours": {"captions_per_s": r_ours, "seconds": ours["seconds"], "peak_rss_mb": ours["peak_rss_mb"],
                 "load": load_ours},
        "ours_10x_smaller": {"captions": ours_small["captions"], "seconds": ours_small["seconds"],
                             "peak_rss_mb": ours_small["peak_rss_mb"]},
        "time_growth_exponent": growth(sizes, [ours_small["seconds"], ours["seconds"]]),
        "rss_growth_exponent": growth(sizes, [ours_small["peak_rss_mb"], ours["peak_rss_mb"]]),
        "naive_loop": {"captions_per_s": r_naive, "captions_measured": len(caps), "seconds": naive_s,
                       "nonzero_pairs_in_subset": sum(1 for c in naive_counts if c), "load": load_naive,
                       "counts_agree_with_ours_on_subset": not naive_diff},
        "polars_contains_per_pair": {"captions_per_s": r_polars, "seconds": polars_s, "load": load_polars,
                                     "counts_agree_with_ours": not polars_diff},
        "ratio_vs_naive": ratio_naive, "ratio_vs_polars_contains": ratio_polars,
        "summary": [
            summary_row("rarity scan vs naive regex loop", f"{r_ours:,.0f} captions/s", f"{r_naive:,.0f} captions/s",
                        ratio_naive, ">= 100x, flat memory", peak_rss_mb={"ours 1x": round(ours_small["peak_rss_mb"]),
                                                                         "ours 10x": round(ours["peak_rss_mb"])}),
            summary_row("rarity scan vs polars str.contains per pair", f"{r_ours:,.0f} captions/s",
                        f"{r_polars:,.0f} captions/s", ratio_polars, ""),
        ],
    }
    md = f"""## Rarity scan ({total_rows:,} captions, {len(pairs)} pairs, {len(files)} files)

| method | captions/s | ratio (ours / method) | counts agree with ours | load |
|---|---:|---:|---|---|
| curate scan (streaming, Aho-Corasick) | {r_ours:,.0f} | 1.0 | - | {load_ours[0]:.2f} |
| naive regex loop ({len(caps):,} captions, extrapolated) | {r_naive:,.0f} | {fmt_ratio(ratio_naive)} | {not naive_diff} (on the subset) | {load_naive[0]:.2f} |
| polars str.contains per pair | {r_polars:,.0f} | {fmt_ratio(ratio_polars)} | {not polars_diff} | {load_polars[0]:.2f} |

Our scan at 1x ({ours_small['captions']:,} captions): {ours_small['seconds']:.2f} s, peak RSS
{ours_small['peak_rss_mb']:.0f} MB; at 10x ({ours['captions']:,}): {ours['seconds']:.2f} s,
{ours['peak_rss_mb']:.0f} MB. Time grows as input^{result['time_growth_exponent']}, memory as
input^{result['rss_growth_exponent']} (1 = linear, 0 = flat).
"""
    save("rarity", result, md)
    print(json.dumps({"ratio_vs_naive": result["ratio_vs_naive"]}))


if __name__ == "__main__":
    main()
