"""Reading shards: ``curate.shards.iter_shard`` vs a plain ``webdataset`` pipeline vs raw ``tarfile``.

Same shards, same work per sample (read every member; decode the JPEG to RGB with PIL for the
"decoded" rows). Each reader runs in a fresh interpreter of its own (so its peak RSS is its
own; the clock starts after the imports), order alternated, median of ``--repeats``. Two kinds
of shards: written by curate (plain ustar) and by ``webdataset.TarWriter`` (what img2dataset
writes: PAX headers). Every reader must see every sample, or the row reports the mismatch
instead of a ratio. Then our reader and webdataset at 1x and 10x the input, bytes only: time
and peak memory growth. Goal: >= 1.0x plain webdataset.

Then **decoded to the model's input**: shards of photo-like JPEGs at ``--model-sides`` (512 and
1,024 px on the short side, 4:3), each read and turned into 224 px uint8 CHW tensors (shortest side to 224, bicubic,
centre crop: open_clip's geometry): ours with the fast decode (``curate.images.open_rgb(data,
224)``: JPEG DCT scaling), ours with the exact decode, and webdataset + PIL full decode + the
same resize. Goals: >= 1.6x webdataset at 512 px, >= 2.5x at 1,024 px.

    .venv/bin/python bench/bench_read.py --images 4000 --shards 4
    .venv/bin/python bench/bench_read.py --images 0 --model-images 600    # the model-input rows only
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


MODEL_SIZE = 224
MODEL_GOALS = {512: 1.6, 1024: 2.5}


def make_photo_shards(root: Path, images: int, shards: int, side: int) -> list[Path]:
    """Curate shards of photo-like JPEGs (``bench/decode_accuracy.py``), ``side`` px on the short
    side, 4:3 and 3:4 (a "512 px photo" is 683 x 512); 16 distinct images repeated."""
    from bench.decode_accuracy import photo_like
    from curate.shards import ShardWriter

    long = side * 4 // 3
    jpegs = [photo_like(long, side, seed=i) if i % 2 else photo_like(side, long, seed=i) for i in range(16)]
    per = -(-images // shards)
    with ShardWriter(root, prefix="p", maxcount=per) as w:
        for i in range(images):
            w.write({"__key__": f"k{i:07d}", "jpg": jpegs[i % 16], "json": {"i": i}})
    return sorted(root.glob("*.tar"))


def _decode(data: bytes, decode: str = "full") -> None:
    """``full``: PIL decode to RGB; ``model:fast`` / ``model:exact``: curate's decoder (at the DCT
    scale covering 224 px, or full size) then the model's geometry; ``model:pil``: PIL full decode
    and convert (what a webdataset ``.decode("pil")`` pipeline does) then the same geometry."""
    from PIL import Image

    if decode == "full":
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB").load()
        return
    if decode == "model:pil":
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
    else:
        from curate.images import open_rgb

        im = open_rgb(data, MODEL_SIZE if decode == "model:fast" else None)
    to_model_tensor(im)


def to_model_tensor(im):
    """Shortest side to 224 (bicubic), centre crop, uint8 CHW tensor."""
    import numpy as np
    import torch
    from PIL import Image

    s = MODEL_SIZE / min(im.size)
    im = im.resize((max(MODEL_SIZE, round(im.width * s)), max(MODEL_SIZE, round(im.height * s))), Image.BICUBIC)
    left, top = (im.width - MODEL_SIZE) // 2, (im.height - MODEL_SIZE) // 2
    arr = np.asarray(im.crop((left, top, left + MODEL_SIZE, top + MODEL_SIZE)), np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def ours(shards: list[Path], decode: str) -> int:
    from curate.shards import iter_shard

    n = 0
    for shard in shards:
        for s in iter_shard(shard):
            if decode:
                _decode(s["jpg"], decode)
            n += 1
    return n


def webdataset_plain(shards: list[Path], decode: str) -> int:
    import webdataset as wds

    n = 0
    ds = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False)
    for s in ds:
        if decode:
            _decode(s["jpg"], "model:pil" if decode.startswith("model:") else decode)
        n += 1
    return n


def tarfile_stream(shards: list[Path], decode: str) -> int:
    n = 0
    for shard in shards:
        with tarfile.open(shard, "r|") as tar:
            key = None
            for m in tar:
                data = tar.extractfile(m).read()
                k, ext = m.name.split(".", 1)
                if decode and ext == "jpg":
                    _decode(data, decode)
                if k != key:
                    n += 1
                    key = k
    return n


READERS = {"curate iter_shard": ours, "webdataset": webdataset_plain, "tarfile r|": tarfile_stream}
IMPORTS = {"curate iter_shard": "curate.shards", "webdataset": "webdataset", "tarfile r|": "tarfile"}


def child(reader: str, shard_list: str, decode: str) -> None:
    """One reader in this fresh interpreter: prints {samples, seconds, peak_rss_mb}."""
    import importlib

    import PIL.Image  # noqa: F401 - imported before the clock, like the reader's own module

    if decode.startswith("model:"):
        import torch  # noqa: F401 - both sides make tensors: torch is imported before the clock

        import curate.images  # noqa: F401

    importlib.import_module(IMPORTS[reader])
    shards = [Path(p) for p in json.loads(shard_list)]
    t0 = time.perf_counter()
    n = READERS[reader](shards, decode)
    dt = time.perf_counter() - t0
    print(json.dumps({"samples": n, "seconds": dt,
                      "peak_rss_mb": peak_rss_mb()}))


def isolated(reader: str, shards: list[Path], decode: bool | str) -> dict:
    mode = decode if isinstance(decode, str) else ("full" if decode else "")
    r = subprocess.run([sys.executable, __file__, "--child", reader, json.dumps([str(s) for s in shards]),
                        mode or "-"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--growth", type=int, default=10, help="the large input is this many times --images (0: skip)")
    ap.add_argument("--model-images", type=int, default=600, help="images per model-input run (0: skip)")
    ap.add_argument("--model-sides", type=int, nargs="+", default=[512, 1024], help="photo sides of those shards")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], "" if args.child[2] == "-" else args.child[2])
        return
    print(uptime(), flush=True)
    rows, summary = [], []
    result: dict = {"images": args.images, "shards": args.shards, "size": args.size, "repeats": args.repeats,
                    "runs": {}, "growth": {}}
    grow_rows: list[str] = []
    if args.images:
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
    model_rows: list[str] = []
    if args.model_images:
        with tempfile.TemporaryDirectory() as tmp:
            for side in args.model_sides:
                shards = make_photo_shards(Path(tmp) / str(side), args.model_images, args.shards, side)
                sides = {"curate iter_shard + fast decode": ("curate iter_shard", "model:fast"),
                         "curate iter_shard + exact decode": ("curate iter_shard", "model:exact"),
                         "webdataset + PIL full decode": ("webdataset", "model:pil")}
                runs = alternate({name: (lambda r=r, m=m, s=shards: isolated(r, s, m)) for name, (r, m) in sides.items()},
                                 args.repeats)
                secs = {name: median([r["seconds"] for r in v]) for name, v in runs.items()}
                counts = {name: {r["samples"] for r in v} for name, v in runs.items()}
                load = load_average()
                peer = secs["webdataset + PIL full decode"]
                for name in sides:
                    mismatch = None if counts[name] == {args.model_images} else f"{sorted(counts[name])} samples read"
                    ratio = ratio_or_mismatch(peer, secs[name], mismatch)
                    model_rows.append(f"| {side} px | {name} | {args.model_images / secs[name]:,.0f} | "
                                      f"{fmt_ratio(ratio)} | {load[0]:.2f} |")
                    result["runs"][f"model input {side} px / {name}"] = {
                        "seconds": secs[name], "samples_per_s": args.model_images / secs[name],
                        "vs_webdataset": ratio, "load": load, "all": runs[name]}
                fast = secs["curate iter_shard + fast decode"]
                summary.append(summary_row(
                    f"read {side} px JPEG shards to 224 px tensors (fast decode), vs webdataset + PIL",
                    f"{args.model_images / fast:,.0f} images/s", f"{args.model_images / peer:,.0f} images/s",
                    ratio_or_mismatch(peer, fast, None), f">= {MODEL_GOALS.get(side, 1.0)}x"))
    result["summary"] = summary
    result["load_average"] = load_average()
    md = [f"Reading {args.images} samples ({args.size}px JPEG + json) from {args.shards} shards; each reader in a "
          f"fresh interpreter (clock after imports), median of {args.repeats}, order alternated.", "",
          "| shards | work | reader | samples/s | vs webdataset | peak RSS MB | load |", "|---|---|---|---:|---:|---:|---|",
          *rows] if rows else []
    if grow_rows:
        md += ["", f"Growth, bytes only, 1x -> {args.growth}x ({args.images} -> {args.images * args.growth} samples):",
               "", "| shards | reader | seconds 1x / 10x | time exponent | peak RSS MB 1x / 10x | memory exponent |",
               "|---|---|---:|---:|---:|---:|", *grow_rows, "",
               "Exponents: 1 = grows linearly with the input, 0 = flat."]
    if model_rows:
        md += ([""] if md else []) + [f"Decoded to the model's input ({args.model_images} photo-like JPEGs per size, 4:3 and 3:4, to "
                   f"{MODEL_SIZE} px uint8 tensors: shortest side bicubic + centre crop), median of {args.repeats}:",
               "", "| JPEG size (short side) | reader + decode | images/s | vs webdataset + PIL | load |",
               "|---|---|---:|---:|---|", *model_rows]
    # the model-input rows alone (--images 0) go to their own file, beside the reader rows
    save("bench_read" if args.images else "bench_read_model_input", result, "\n".join(md))


if __name__ == "__main__":
    main()
