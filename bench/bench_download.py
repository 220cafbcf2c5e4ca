"""Download + resize + shard: the build's pool ingestion vs plain `img2dataset`, from a local HTTP pool.

The input is a demo world's pool (5,000 JPEGs of 112 px by default, ``demo-out/world/pool``)
served over HTTP on 127.0.0.1 by ``builders.synthetic.httpserver.serve_folder`` in a process of
its own, and the URL list that ``write_url_list`` makes for it. Two sides, same input, same
settings (processes, threads, image size, resize mode, output format, shard size):

- **ours**: ``builders.imagenet_ao.pool.ingest_pool(URLS, OUT, image_size, workers)``, what
  ``curate build imagenet-ao --pool urls.parquet`` runs: img2dataset's own reader, resizer,
  downloader and WebDataset writer, with its workers forked after the imports instead of
  spawned (and no logger process), plus our URL list normalisation and stats;
- **img2dataset**: its CLI with the options ours uses (``pool.IMG2DATASET_OPTIONS``), so the
  difference is how the work is distributed; and, as a second peer row, its CLI with only the
  named settings given (its defaults for the rest: JPEG quality 95, EXIF extraction, upscaling
  small images).

Order alternated, median of ``--repeats``, load recorded, per image size. Both sides must
write the same number of samples, and with the same options the same bytes (every member of
every shard hashed), or the row reports the mismatch instead of a ratio.

    .venv/bin/python bench/bench_download.py [--pool demo-out/world/pool] [--sizes 256 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent

from bench.common import (  # noqa: E402
    Measured,
    alternate,
    fmt_ratio,
    median_of,
    ratio_or_mismatch,
    run_measured,
    save,
    summary_row,
    uptime,
)
from builders.imagenet_ao.pool import CHUNK, IMG2DATASET_OPTIONS  # noqa: E402

# both sides: no progress bars, and no albumentations version check over the network at import
ENV = {**os.environ, "CURATE_NO_PROGRESS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
SERVE = """
import sys, time
sys.path.insert(0, {repo!r})
from builders.synthetic.httpserver import serve_folder
with serve_folder({pool!r}) as url:
    print(url, flush=True)
    while True:
        time.sleep(3600)
"""
OURS = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from builders.imagenet_ao.pool import ingest_pool
ingest_pool({urls!r}, Path({out!r}), image_size={size}, workers={processes})
"""


def samples_digest(out: Path) -> tuple[int, str]:
    """How many samples the shards hold, and a hash of every member (shard, key, field, bytes), in
    key order: img2dataset writes a shard's samples in the order their downloads finish."""
    import hashlib

    from curate.shards import iter_shard

    members, n = [], 0
    for tar in sorted(out.glob("*.tar")):
        for s in iter_shard(tar):
            n += 1
            members += [(tar.name, s["__key__"], ext, hashlib.sha256(v).hexdigest())
                        for ext, v in s.items() if not ext.startswith("__")]
    return n, hashlib.sha256(repr(sorted(members)).encode()).hexdigest()


def peer_cmd(urls: Path, out: Path, size: int, processes: int, threads: int, per_shard: int,
             same_options: bool) -> list[str]:
    cmd = [str(BIN / "img2dataset"), f"--url_list={urls}", "--input_format=parquet", "--url_col=url",
           "--caption_col=caption", "--output_format=webdataset", f"--output_folder={out}", f"--image_size={size}",
           "--resize_mode=keep_ratio", f"--processes_count={processes}", f"--thread_count={threads}",
           f"--number_sample_per_shard={per_shard}", "--distributor=multiprocessing", "--enable_wandb=False"]
    if same_options:
        named = {"url_list", "input_format", "url_col", "caption_col", "output_format", "output_folder", "image_size",
                 "resize_mode", "processes_count", "thread_count", "number_sample_per_shard", "distributor",
                 "enable_wandb"}
        for k, v in IMG2DATASET_OPTIONS.items():
            if k not in named and v is not None:
                cmd.append(f"--{k}={json.dumps(v) if isinstance(v, list) else v}")
    return cmd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, default=REPO / "demo-out" / "world" / "pool")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pool = args.pool
    if not (pool / "pool.parquet").exists():
        from builders.synthetic.world import ensure_world
        from curate.paths import cache_dir

        pool = ensure_world(cache_dir() / "bench" / "world-small", scale="small", seed=0).path / "pool"
    from builders.synthetic.httpserver import write_url_list

    print(uptime(), flush=True)
    server = subprocess.Popen([sys.executable, "-c", SERVE.format(repo=str(REPO), pool=str(pool))],
                              stdout=subprocess.PIPE, text=True)
    result: dict = {"pool": str(pool), "processes": args.processes, "threads": args.threads, "per_shard": CHUNK,
                    "repeats": args.repeats, "sizes": {}, "wrapper_options": dict(IMG2DATASET_OPTIONS)}
    summary, md_rows = [], []
    try:
        base = server.stdout.readline().strip()  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
            root = Path(tmp)
            urls, _ = write_url_list(pool, base, out_dir=root)
            n_urls = sum(1 for _ in open(root / "urls.txt"))
            for size in args.sizes:
                outs = {"ours": root / "ours", "img2dataset (same options)": root / "peer",
                        "img2dataset (defaults)": root / "peer-defaults"}
                counts: dict[str, int] = {}
                digests: dict[str, str] = {}

                def fresh(name: str, outs: dict[str, Path] = outs) -> Path:
                    shutil.rmtree(outs[name], ignore_errors=True)
                    return outs[name]

                def timed(name: str, cmd: list[str], outs: dict[str, Path] = outs,
                          counts: dict[str, int] = counts, digests: dict[str, str] = digests) -> Measured:
                    m = run_measured(cmd, env=ENV)
                    counts[name], digests[name] = samples_digest(outs[name])  # the last run's
                    return m

                code = OURS.format(repo=str(REPO), urls=str(urls), out=str(root / "ours"), size=size,
                                   processes=args.processes)
                runs = alternate({
                    "ours": lambda c=code: (fresh("ours"), timed("ours", [sys.executable, "-c", c]))[1],
                    "img2dataset (same options)": lambda s=size: (fresh("img2dataset (same options)"), timed(
                        "img2dataset (same options)", peer_cmd(urls, root / "peer", s, args.processes, args.threads,
                                                               CHUNK, True)))[1],
                    "img2dataset (defaults)": lambda s=size: (fresh("img2dataset (defaults)"), timed(
                        "img2dataset (defaults)", peer_cmd(urls, root / "peer-defaults", s, args.processes,
                                                           args.threads, CHUNK, False)))[1],
                }, args.repeats)
                med = {k: median_of(v) for k, v in runs.items()}
                rates = {k: counts[k] / m.wall for k, m in med.items()}
                same_bytes = digests["ours"] == digests["img2dataset (same options)"]
                res_size = {"urls": n_urls, "samples": counts, "identical_to_img2dataset_same_options": same_bytes,
                            "median": {k: {**m.to_dict(), "images_per_s": round(rates[k], 1)} for k, m in med.items()},
                            "runs": {k: [m.to_dict() for m in v] for k, v in runs.items()}}
                for peer in ("img2dataset (same options)", "img2dataset (defaults)"):
                    mismatch = None if counts[peer] == counts["ours"] else \
                        f"samples differ ({counts['ours']} vs {counts[peer]})"
                    if mismatch is None and peer == "img2dataset (same options)" and not same_bytes:
                        mismatch = "same options but different shard bytes"
                    ratio = ratio_or_mismatch(rates["ours"], rates[peer], mismatch)
                    cpu_ratio = ratio_or_mismatch(med[peer].cpu, med["ours"].cpu, mismatch)
                    res_size[f"ratio vs {peer}"] = ratio
                    res_size[f"cpu ratio vs {peer}"] = cpu_ratio
                    summary.append(summary_row(f"download + resize + shard, {size} px, vs {peer}",
                                               f"{rates['ours']:.0f} img/s", f"{rates[peer]:.0f} img/s", ratio,
                                               ">= 1.0x", peak_rss_mb={k: round(m.peak_rss_mb) for k, m in med.items()}))
                    md_rows.append(f"| {size} | {peer} | {rates['ours']:.0f} | {rates[peer]:.0f} | **{fmt_ratio(ratio)}** | "
                                   f"{med['ours'].cpu:.1f} / {med[peer].cpu:.1f} | "
                                   f"{med['ours'].peak_rss_mb:,.0f} / {med[peer].peak_rss_mb:,.0f} | "
                                   f"{counts['ours']} / {counts[peer]} | {', '.join(f'{x:.1f}' for x in med['ours'].load)} |")
                result["sizes"][str(size)] = res_size
                print(f"   {size} px: " + ", ".join(f"{k} {r:.0f} img/s" for k, r in rates.items()), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    result["summary"] = summary
    md = "\n".join([
        "# Download + resize + shard: pool ingestion vs img2dataset",
        "",
        f"{n_urls} JPEGs ({pool.name} of a demo world) over HTTP from 127.0.0.1 (a server process of its own), "
        f"{args.processes} processes x {args.threads} threads, resize mode keep_ratio, webdataset output, {CHUNK} "
        f"samples per shard. Median of {args.repeats}, order alternated; whole command, start-up included.",
        "",
        "| px | peer | ours img/s | peer img/s | ratio | CPU s ours / peer | peak RSS MB ours / peer | samples | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
        *md_rows,
        "",
        "Shards of ours and img2dataset with the same options identical byte for byte (every member hashed): "
        + ", ".join(f"{sz} px {'yes' if r['identical_to_img2dataset_same_options'] else 'NO'}"
                    for sz, r in result["sizes"].items()) + ".",
        "",
        "Where the difference comes from: `img2dataset.download` starts its workers and a logger process with "
        "`spawn`, three fresh interpreters that each import img2dataset again (webdataset, hence torch; wandb; "
        "pandas; albumentations: about 2 s of CPU each); ours forks its workers after the imports and reads the "
        "per-shard stats files itself, with img2dataset's reader, resizer, downloader and writer doing the work.",
        "",
        "Options ours gives img2dataset (the rest are its defaults): "
        + ", ".join(f"`{k}={v}`" for k, v in result["wrapper_options"].items()) + ".",
    ])
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    save("bench_download", result, md)


if __name__ == "__main__":
    main()
