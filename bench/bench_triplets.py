"""Caption-mode mining: polars self-join on masked captions vs naive pairwise comparison.

Synthesises N captions (default 1,000,000) from a compositional vocabulary (attributes x
objects x scenes x templates, so many pairs differ in exactly one word), then runs, each in
its own interpreter so peak RSS is its own:

- ours: ``builders.triplets.captions.find_caption_pairs`` on all N captions;
- naive: every unique caption compared with every other (``naive_caption_pairs``) on a
  10k-caption subset, with wall time extrapolated quadratically to N (its memory is flat);
- ours again on the same 10k subset, checked to find exactly the naive pairs.

Usage: .venv/bin/python bench/bench_triplets.py [--n 1000000] [--subset 10000]
Writes bench/results/bench_triplets.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ATTRS = ("red blue green yellow black white striped dotted wooden metal glass plastic furry shiny tiny huge old "
         "new broken folded wet dry frozen burning velvet paper stone golden silver rusty").split()
OBJECTS = ("cat dog car bus lemon apple heart star chair table lamp boat bird horse cup bottle shoe hat clock "
           "guitar phone book bicycle kite train plane sofa bed vase flower tree house bridge umbrella ball "
           "pizza cake robot teapot").split()
SCENES = ("on a table|in the garden|on the beach|in a kitchen|on the street|in the snow|at night|"
          "in a forest|on a shelf|under the bridge|near a window|in the rain").split("|")
TEMPLATES = ("a photo of a {a} {o}|a {a} {o} {s}|the {a} {o} {s}|a close up of a {a} {o}|"
             "an image of a {a} {o} {s}|{a} {o}|a {a} {o} next to a {a2} {o2}|two {a} {o}s {s}|"
             "a blurry photo of the {a} {o}|a {a} {o} and a {o2} {s}").split("|")


def synth_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.choice(TEMPLATES)
        out.append(t.format(a=rng.choice(ATTRS), o=rng.choice(OBJECTS), s=rng.choice(SCENES),
                            a2=rng.choice(ATTRS), o2=rng.choice(OBJECTS)))
    return out


def part_ours(n: int, subset: int) -> dict:
    import polars as pl

    from builders.triplets.captions import find_caption_pairs

    caps = synth_captions(n)[:subset] if subset else synth_captions(n)
    t0 = time.perf_counter()
    uniq, pairs, st = find_caption_pairs(pl.DataFrame({"caption": caps}), max_group=10**9)
    dt = time.perf_counter() - t0
    texts = dict(zip(uniq["cid"].to_list(), uniq["text"].to_list(), strict=True))
    sample = sorted((texts[a], texts[b]) for a, b in zip(pairs["cid_a"], pairs["cid_b"], strict=True)) \
        if subset else []
    return {"captions": len(caps), "unique": st.unique, "pairs": st.pairs, "seconds": dt,
            "pairs_list": sample if subset else None}


def part_naive(n: int, subset: int) -> dict:
    from builders.triplets.captions import naive_caption_pairs

    caps = synth_captions(n)[:subset]
    t0 = time.perf_counter()
    pairs = naive_caption_pairs(caps)
    dt = time.perf_counter() - t0
    return {"captions": len(caps), "unique": len(set(caps)), "pairs": len(pairs), "seconds": dt,
            "pairs_list": sorted(pairs)}


def isolated(part: str, n: int, subset: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--part", part, "--n", str(n), "--subset", str(subset)],
                       capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--subset", type=int, default=10_000)
    ap.add_argument("--part", choices=["ours", "naive"])
    args = ap.parse_args()
    if args.part:
        sys.path.insert(0, str(ROOT))
        fn = part_ours if args.part == "ours" else part_naive
        t0 = time.perf_counter()
        res = fn(args.n, args.subset)
        res["wall_s"] = time.perf_counter() - t0
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return
    ours = isolated("ours", args.n, 0)
    ours_sub = isolated("ours", args.n, args.subset)
    naive = isolated("naive", args.n, args.subset)
    agree = ours_sub.pop("pairs_list") == naive.pop("pairs_list")
    ours.pop("pairs_list")
    # naive cost grows with (unique captions)^2: extrapolate from the subset to the full corpus
    scale = (ours["unique"] / ours_sub["unique"]) ** 2
    naive_full_s = naive["seconds"] * scale
    result = {
        "n_captions": args.n, "subset": args.subset, "ours_full": ours, "ours_subset": ours_sub,
        "naive_subset": naive, "naive_full_extrapolated_s": naive_full_s,
        "speedup_full": naive_full_s / ours["seconds"], "speedup_subset": naive["seconds"] / ours_sub["seconds"],
        "same_pairs_on_subset": agree,
    }
    sys.path.insert(0, str(ROOT))
    from bench.common import save, summary_row

    result["summary"] = [summary_row(
        f"triplet mining vs naive pairwise ({args.n:,} captions, naive extrapolated from {args.subset:,})",
        f"{ours['seconds']:.1f} s, {ours['peak_rss_mb']:,.0f} MB", f"{naive_full_s:,.0f} s",
        result["speedup_full"] if agree else "MISMATCH: pairs differ on the subset")]
    md = "\n".join([
        "# Caption-mode triplet mining: self-join vs naive pairwise",
        "",
        f"{args.n:,} synthetic captions ({ours['unique']:,} unique); naive run on a {args.subset:,}-caption subset "
        f"({ours_sub['unique']:,} unique) and extrapolated by (unique ratio)^2 = {scale:,.0f}x.",
        "",
        "| run | captions | unique | one-word pairs | mining s | process peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
        f"| ours (polars self-join) | {ours['captions']:,} | {ours['unique']:,} | {ours['pairs']:,} | "
        f"{ours['seconds']:.1f} | {ours['peak_rss_mb']:.0f} |",
        f"| ours, subset | {ours_sub['captions']:,} | {ours_sub['unique']:,} | {ours_sub['pairs']:,} | "
        f"{ours_sub['seconds']:.2f} | {ours_sub['peak_rss_mb']:.0f} |",
        f"| naive pairwise, subset | {naive['captions']:,} | {naive['unique']:,} | {naive['pairs']:,} | "
        f"{naive['seconds']:.1f} | {naive['peak_rss_mb']:.0f} |",
        f"| naive pairwise, full (extrapolated) | {args.n:,} | {ours['unique']:,} | - | {naive_full_s:,.0f} | - |",
        "",
        f"Speed-up at {args.n:,} captions: **{result['speedup_full']:,.0f}x** (naive extrapolated / ours); "
        f"on the subset itself {result['speedup_subset']:,.0f}x. Same pairs on the subset: {agree}.",
    ])
    save("bench_triplets", result, md)


if __name__ == "__main__":
    main()
