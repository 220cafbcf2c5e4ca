"""Reading shards: ``curate.shards.iter_shard`` vs a plain ``webdataset`` pipeline vs raw ``tarfile``.

Same shards, same work per sample (read every member; decode the JPEG to RGB with PIL for the
"decoded" rows). Each reader runs in a fresh interpreter of its own (so its peak RSS is its
own; the clock starts after the imports), order alternated, median of ``--repeats``. Two kinds
of shards: written by curate (plain ustar) and by ``webdataset.TarWriter`` (what img2dataset
writes: PAX headers). Every reader must see every sample, or the row reports the mismatch
instead of a ratio. Then our reader and webdataset at 1x and 10x the input, bytes only: time
and peak memory growth. Goal: >= 1.0x plain webdataset.

    .venv/bin/python bench/bench_read.py --images 4000 --shards 4
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    alternate,
    fmt_ratio,
    growth,
    load_average,
    median,
    peak_rss_mb,
    ratio_or_mismatch,
    save,
    summary_row,
    uptime,
)


def make_shards(root: Path, images: int, shards: int, size: int, seed: int = 0) -> dict[str, list[Path]]:
    import numpy as np
    import webdataset as wds
    from PIL import Image

    from curate.images import encode_jpeg
    from curate.shards import ShardWriter

    rng = np.random.default_rng(seed)
    jpegs = [encode_jpeg(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))) for _ in range(64)]
    per = -(-images // shards)
    with ShardWriter(root / "curate", prefix="c", maxcount=per) as w:
        for i in range(images):
            w.write({"__key__": f"k{i:07d}", "jpg": jpegs[i % 64], "json": {"i": i, "caption": f"image {i}"}})
    (root / "wds").mkdir()
    for s in range(shards):
        with wds.TarWriter(str(root / "wds" / f"w-{s:06d}.tar")) as tw:
            for i in range(s * per, min(images, (s + 1) * per)):
                tw.write({"__key__": f"k{i:07d}", "jpg": jpegs[i % 64], "json": {"i": i, "caption": f"image {i}"}})
    return {"curate (ustar)": sorted((root / "curate").glob("*.tar")),
            "webdataset (PAX)": sorted((root / "wds").glob("*.tar"))}


def _decode(data: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.convert("RGB").load()


def ours(shards: list[Path], decode: bool) -> int:
    from curate.shards import iter_shard

    n = 0
    for shard in shards:
        for s in iter_shard(shard):
            if decode:
                _decode(s["jpg"])
            n += 1
    return n


def webdataset_plain(shards: list[Path], decode: bool) -> int:
    import webdataset as wds

    n = 0
    ds = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False)
    for s in ds:
        if decode:
            _decode(s["jpg"])
        n += 1
    return n


def tarfile_stream(shards: list[Path], decode: bool) -> int:
    n = 0
    for shard in shards:
        with tarfile.open(shard, "r|") as tar:
            key = None
            for m in tar:
                data = tar.extractfile(m).read()
                k, ext = m.name.split(".", 1)
                if decode and ext == "jpg":
                    _decode(data)
                if k != key:
                    n += 1
                    key = k
    return n


READERS = {"curate iter_shard": ours, "webdataset": webdataset_plain, "tarfile r|": tarfile_stream}
IMPORTS = {"curate iter_shard": "curate.shards", "webdataset": "webdataset", "tarfile r|": "tarfile"}


def child(reader: str, shard_list: str, decode: bool) -> None:
    """One reader in this fresh interpreter: prints {samples, seconds, peak_rss_mb}."""
    import importlib

    import PIL.Image  # noqa: F401 - imported before the clock, like the reader's own module

    importlib.import_module(IMPORTS[reader])
    shards = [Path(p) for p in json.loads(shard_list)]
    t0 = time.perf_counter()
    n = READERS[reader](shards, decode)
    dt = time.perf_counter() - t0
    print(json.dumps({"samples": n, "seconds": dt,
                      "peak_rss_mb": peak_rss_mb()}))


def isolated(reader: str, shards: list[Path], decode: bool) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", reader, json.dumps([str(s) for s in shards]),
                        "1" if decode else "0"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--growth", type=int, default=10, help="the large input is this many times --images (0: skip)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[2] == "1")
        return
    print(uptime(), flush=True)
    rows, summary = [], []
    result: dict = {"images": args.images, "shards": args.shards, "size": args.size, "repeats": args.repeats,
                    "runs": {}, "growth": {}}
    with tempfile.TemporaryDirectory() as tmp:
        kinds = make_shards(Path(tmp) / "1x", args.images, args.shards, args.size)
        for kind, shards in kinds.items():
            for decode in (False, True):
                what = "decoded" if decode else "bytes only"
                runs = alternate({name: (lambda n=name, s=shards, d=decode: isolated(n, s, d)) for name in READERS},
                                 args.repeats)
                secs = {name: median([r["seconds"] for r in v]) for name, v in runs.items()}
                rss = {name: median([r["peak_rss_mb"] for r in v]) for name, v in runs.items()}
                counts = {name: {r["samples"] for r in v} for name, v in runs.items()}
                load = load_average()
                for name in READERS:
                    mismatch = None if counts[name] == {args.images} else f"{sorted(counts[name])} samples read"
                    ratio = ratio_or_mismatch(secs["webdataset"], secs[name], mismatch)
                    rows.append(f"| {kind} | {what} | {name} | {args.images / secs[name]:,.0f} | {fmt_ratio(ratio)} | "
                                f"{rss[name]:.0f} | {load[0]:.2f} |")
                    result["runs"][f"{kind} / {what} / {name}"] = {
                        "seconds": secs[name], "samples_per_s": args.images / secs[name], "vs_webdataset": ratio,
                        "peak_rss_mb": rss[name], "load": load, "all": runs[name]}
                    if name == "curate iter_shard":
                        summary.append(summary_row(f"read shards, {kind}, {what}, vs webdataset",
                                                   f"{args.images / secs[name]:,.0f} samples/s",
                                                   f"{args.images / secs['webdataset']:,.0f} samples/s", ratio,
                                                   ">= 1.0x", peak_rss_mb={k: round(v) for k, v in rss.items()}))
        grow_rows = []
        if args.growth:
            big = make_shards(Path(tmp) / "10x", args.images * args.growth, args.shards * args.growth, args.size)
            for kind in kinds:
                for name in ("curate iter_shard", "webdataset"):
                    pts = [isolated(name, s, False) for s in (kinds[kind], big[kind])]
                    n = [args.images, args.images * args.growth]
                    g = {"samples": n, "seconds": [p["seconds"] for p in pts],
                         "peak_rss_mb": [p["peak_rss_mb"] for p in pts],
                         "time_exponent": growth(n, [p["seconds"] for p in pts]),
                         "rss_exponent": growth(n, [p["peak_rss_mb"] for p in pts]), "load": load_average()}
                    result["growth"][f"{kind} / {name}"] = g
                    grow_rows.append(f"| {kind} | {name} | {g['seconds'][0]:.2f} / {g['seconds'][1]:.2f} | "
                                     f"{g['time_exponent']} | {g['peak_rss_mb'][0]:.0f} / {g['peak_rss_mb'][1]:.0f} | "
                                     f"{g['rss_exponent']} |")
    result["summary"] = summary
    result["load_average"] = load_average()
    md = [f"Reading {args.images} samples ({args.size}px JPEG + json) from {args.shards} shards; each reader in a "
          f"fresh interpreter (clock after imports), median of {args.repeats}, order alternated.", "",
          "| shards | work | reader | samples/s | vs webdataset | peak RSS MB | load |", "|---|---|---|---:|---:|---:|---|",
          *rows]
    if grow_rows:
        md += ["", f"Growth, bytes only, 1x -> {args.growth}x ({args.images} -> {args.images * args.growth} samples):",
               "", "| shards | reader | seconds 1x / 10x | time exponent | peak RSS MB 1x / 10x | memory exponent |",
               "|---|---|---:|---:|---:|---:|", *grow_rows, "",
               "Exponents: 1 = grows linearly with the input, 0 = flat."]
    save("bench_read", result, "\n".join(md))


if __name__ == "__main__":
    main()
