"""Reading shards from object storage: curate's s3:// path vs webdataset's own, and local disk.

A local S3 server (moto's, in a process of its own on 127.0.0.1) holds shards of photo-like
JPEGs (``bench_read.make_photo_shards``: 512 px short side); every side reads every member of
every shard (the bytes, no decode) and must see the same samples (count, bytes, a CRC of every
member), or the row reports the mismatch:

- **local disk**: ``curate.shards.iter_shard`` over the same shards on local disk (the ceiling);
- **ours (s3, cold)**: what a curate command does with an ``s3://`` argument
  (``curate/storage.py``): the prefix mirrored into an empty ``CURATE_CACHE`` (one GET per
  object), then ``iter_shard`` over the mirror; **ours (s3, warm)**: the same with the mirror
  already there (a listing, nothing fetched: a rerun or a second command on the same input);
- **webdataset + fsspec**: ``webdataset.WebDataset`` over the ``s3://`` URLs, each shard streamed
  through s3fs (``gopen_schemes['s3']``: webdataset 0.2 has no s3 handler of its own);
- **webdataset pipe:**: ``pipe:aws s3 cp s3://... -``, webdataset's documented S3 recipe (when
  the ``aws`` CLI is there).

Each side runs in a fresh interpreter; the time is the read alone (imports excluded), order
alternated, median of ``--repeats``, load recorded.

    .venv/bin/python bench/bench_s3_read.py [--images 1000] [--shards 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent

from bench.common import alternate, fmt_ratio, load_average, ratio_or_mismatch, save, summary_row, uptime  # noqa: E402

SIDES = ("local disk", "ours (s3, cold)", "ours (s3, warm)", "webdataset + fsspec", "webdataset pipe:")


def _digest(samples) -> dict:
    """Samples, bytes and an order-free CRC of every member (key, field, bytes)."""
    import zlib

    n = size = crc = 0
    for s in samples:
        n += 1
        for ext, v in s.items():
            if ext.startswith("__") or not isinstance(v, bytes):
                continue
            size += len(v)
            crc ^= zlib.crc32(v, zlib.crc32(f"{s['__key__']}.{ext}".encode()))
    return {"samples": n, "bytes": size, "crc": crc}


def child(side: str, url: str, local: str, names: list[str]) -> None:
    """One side's read, timed from the first byte asked for; prints one JSON line."""
    from curate.shards import iter_shard

    if side.startswith("webdataset"):
        import webdataset as wds

        if side == "webdataset + fsspec":
            import fsspec
            from webdataset.gopen import gopen_schemes

            gopen_schemes["s3"] = lambda u, mode="rb", bufsize=8192, **kw: fsspec.open(u, mode).open()
            urls = [f"{url}/{n}" for n in names]
        else:
            urls = [f"pipe:aws s3 cp --quiet {url}/{n} -" for n in names]
        t = time.perf_counter()
        got = _digest({k: v for k, v in s.items()} for s in wds.WebDataset(urls, shardshuffle=False))
    elif side == "local disk":
        t = time.perf_counter()
        got = _digest(s for n in names for s in iter_shard(Path(local) / n))
    else:
        from curate.storage import Mirror

        t = time.perf_counter()
        m = Mirror(url)
        m.pull()
        got = _digest(s for n in names for s in iter_shard(m.local / n))
    print(json.dumps({"seconds": time.perf_counter() - t, **got}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, dict[str, str]]:
    """moto's S3 server on 127.0.0.1 in a process of its own, and the environment that reaches it."""
    port = _free_port()
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).read()
            break
        except OSError:
            time.sleep(0.1)
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    return server, env


def upload(shards: list[Path], env: dict[str, str]) -> str:
    import boto3

    c = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="bench", aws_secret_access_key="bench")
    c.create_bucket(Bucket="bench")
    for p in shards:
        c.upload_file(str(p), "bench", f"shards/{p.name}")
    return "s3://bench/shards"


def run_side(side: str, url: str, local: Path, names: list[str], env: dict[str, str], cache: Path) -> dict:
    if side == "ours (s3, cold)":
        shutil.rmtree(cache, ignore_errors=True)
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from bench.bench_s3_read import child; "
            f"child({side!r}, {url!r}, {str(local)!r}, {names!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**env, "CURATE_CACHE": str(cache)}, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"{side} failed:\n{r.stderr[-3000:]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "load": load_average()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from bench.bench_read import make_photo_shards

    print(uptime(), flush=True)
    sides = [s for s in SIDES if s != "webdataset pipe:" or shutil.which("aws")]
    with tempfile.TemporaryDirectory(prefix="bench-s3-read-") as tmp:
        root = Path(tmp)
        shards = make_photo_shards(root / "shards", args.images, args.shards, args.side)
        server, env = start_s3()
        try:
            url = upload(shards, env)
            names = [p.name for p in shards]
            runs = alternate({s: (lambda s=s: run_side(s, url, root / "shards", names, env, root / "cache"))
                              for s in sides}, args.repeats)
        finally:
            server.terminate()
            server.wait(timeout=30)
        total = sum(p.stat().st_size for p in shards)
    save("bench_s3_read", *_report(runs, total, args))


def _report(runs: dict, total: int, args) -> tuple[dict, str]:
    med = {k: sorted(v, key=lambda r: r["seconds"])[(len(v) - 1) // 2] for k, v in runs.items()}
    ref = {k: med["local disk"][k] for k in ("samples", "bytes", "crc")}
    rate = {k: m["bytes"] / 2**20 / m["seconds"] for k, m in med.items()}
    bad = {k: None if all(r[x] == ref[x] for r in runs[k] for x in ref) else "samples differ from local disk's"
           for k in runs}
    peers = [k for k in runs if k.startswith("webdataset")]
    summary, rows = [], []
    for ours in ("ours (s3, cold)", "ours (s3, warm)"):
        for peer in peers:
            ratio = ratio_or_mismatch(rate[ours], rate[peer], bad[ours] or bad[peer])
            summary.append(summary_row(f"shards from a local S3 server, {ours} vs {peer}", f"{rate[ours]:.0f} MB/s",
                                       f"{rate[peer]:.0f} MB/s", ratio, ">= 1.0x webdataset" if "cold" in ours else ""))
    for k, m in med.items():
        vs = {p: fmt_ratio(ratio_or_mismatch(rate[k], rate[p], bad[k] or bad[p])) for p in peers}
        rows.append(f"| {k} | {m['seconds']:.2f} | {rate[k]:.0f} | {m['samples']:,} | "
                    + " | ".join(vs[p] for p in peers) + f" | {bad[k] or 'same'} | {m['load'][0]:.1f} |")
    result = {"images": args.images, "shards": args.shards, "bytes": total, "repeats": args.repeats,
              "median": med, "mb_per_s": rate, "runs": runs, "summary": summary}
    md = "\n".join([
        f"## Reading shards from a local S3 server ({args.shards} shards, {args.images:,} photo-like JPEGs of "
        f"{args.side} px, {total / 2**20:.0f} MB)",
        "",
        "moto's S3 server on 127.0.0.1 (a process of its own); every member of every shard read (bytes, no decode), "
        f"in a fresh interpreter per run, time of the read alone. Median of {args.repeats}, order alternated.",
        "",
        "| side | seconds | MB/s | samples | " + " | ".join(f"ratio vs {p}" for p in peers) + " | same samples as local disk | load |",
        "|---|---:|---:|---:|" + "---:|" * len(peers) + "---|---|",
        *rows,
        "",
        "ours (s3, cold): the prefix mirrored into an empty cache (what a curate command does with an s3:// "
        "argument, `curate/storage.py`), then read from the mirror; warm: the mirror already there (one listing). "
        "webdataset + fsspec: each shard streamed through s3fs; pipe:: `aws s3 cp URL -` per shard.",
    ])
    return result, md


if __name__ == "__main__":
    main()
