"""Reading shards: ``curate.shards.iter_shard`` vs a plain ``webdataset`` pipeline vs raw ``tarfile``.

Same shards, same work per sample (read every member; decode the JPEG to RGB with PIL for the
"decoded" rows), run back to back in one process, order alternated, median of ``--repeats``.
Two kinds of shards: written by curate (plain ustar) and by ``webdataset.TarWriter`` (what
img2dataset writes: PAX headers). Goal: >= 1.0x plain webdataset.

    .venv/bin/python bench/bench_read.py --images 4000 --shards 4
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save  # noqa: E402


def make_shards(root: Path, images: int, shards: int, size: int) -> dict[str, list[Path]]:
    import numpy as np
    import webdataset as wds
    from PIL import Image

    from curate.images import encode_jpeg
    from curate.shards import ShardWriter

    rng = np.random.default_rng(0)
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
    return {"curate (ustar)": sorted((root / "curate").glob("*.tar")), "webdataset (PAX)": sorted((root / "wds").glob("*.tar"))}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kinds = make_shards(Path(tmp), args.images, args.shards, args.size)
        rows, result = [], {"images": args.images, "shards": args.shards, "size": args.size, "runs": {}}
        for kind, shards in kinds.items():
            for decode in (False, True):
                times: dict[str, list[float]] = {name: [] for name in READERS}
                for rep in range(args.repeats):
                    names = list(READERS) if rep % 2 == 0 else list(READERS)[::-1]
                    for name in names:
                        t0 = time.perf_counter()
                        n = READERS[name](shards, decode)
                        times[name].append(time.perf_counter() - t0)
                        assert n == args.images, (name, n)
                med = {name: statistics.median(v) for name, v in times.items()}
                what = "decoded" if decode else "bytes only"
                for name, t in med.items():
                    rate = args.images / t
                    ratio = med["webdataset"] / t
                    rows.append(f"| {kind} | {what} | {name} | {rate:,.0f} | {ratio:.2f}x |")
                    result["runs"][f"{kind} / {what} / {name}"] = {"seconds": t, "samples_per_s": rate,
                                                                   "vs_webdataset": ratio}
    load = os.getloadavg()[0]
    result["load_average"] = load
    md = "\n".join([f"Reading {args.images} samples ({args.size}px JPEG + json) from {args.shards} shards, "
                    f"median of {args.repeats}, load average {load:.2f}", "",
                    "| shards | work | reader | samples/s | vs webdataset |", "|---|---|---|---:|---:|", *rows])
    save("bench_read", result, md)


if __name__ == "__main__":
    main()
