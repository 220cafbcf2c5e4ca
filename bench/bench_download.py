"""Download + resize + shard: the build's pool ingestion vs plain `img2dataset`, from a local HTTP pool.

The input is a demo world's pool (5,000 JPEGs of 112 px by default, ``demo-out/world/pool``)
served over HTTP on 127.0.0.1 by ``builders.synthetic.httpserver.serve_folder`` in a process of
its own, and the URL list that ``write_url_list`` makes for it (``--urls N``: its rows repeated
up to N, the same images downloaded again). Two sides, same input, same settings (processes,
threads, image size, resize mode, output format, shard size):

- **ours**: ``builders.imagenet_ao.pool.ingest_pool(URLS, OUT, image_size, workers)``, what
  ``curate build imagenet-ao --pool urls.parquet`` runs: img2dataset's own reader, resizer,
  downloader and WebDataset writer, one executor task per block of 1,000 URLs (a local pool
  forked after the imports), plus our URL list normalisation and stats;
- **img2dataset**: its CLI with the options ours uses (``pool.IMG2DATASET_OPTIONS``), so the
  difference is how the work is distributed; and, as a second peer row, its CLI with only the
  named settings given (its defaults for the rest: JPEG quality 95, EXIF extraction, upscaling
  small images).

Order alternated, median of ``--repeats``, load recorded, per image size. Both sides must
write the same number of samples, and with the same options the same samples (every member of
every shard hashed), or the row reports the mismatch instead of a ratio. Two rates: the whole
command (start-up included) and the steady state (``steady_rate``: after ``--steady-after``
images, from the shards' own end times), which is what a large download sees.

    .venv/bin/python bench/bench_download.py [--pool demo-out/world/pool] [--sizes 256 64]
    .venv/bin/python bench/bench_download.py --urls 50000 --sizes 256 --peers same   # v2 steady state
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
    median,
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


def steady_rate(out: Path, skip: int) -> float:
    """Images per second once ``skip`` images are done: from the end time of the shard that took the
    count past ``skip`` to the last shard's end (img2dataset's ``*_stats.json``, written by both sides
    the same way), so start-up (interpreters, imports, the reader) is left out."""
    shards = sorted((json.loads(p.read_text()) for p in out.glob("*_stats.json")), key=lambda s: s["end_time"])
    done, t_skip, after = 0, None, 0
    for s in shards:
        if t_skip is None:
            done += s["successes"]
            if done >= skip:
                t_skip = s["end_time"]
        else:
            after += s["successes"]
    if t_skip is None or not after or shards[-1]["end_time"] <= t_skip:
        return float("nan")
    return after / (shards[-1]["end_time"] - t_skip)


PEERS = {"img2dataset (same options)": ("peer", True), "img2dataset (defaults)": ("peer-defaults", False)}


def _url_list(pool: Path, base: str, root: Path, n: int | None) -> tuple[Path, int]:
    """The pool's URL list, its rows repeated up to ``n`` (the same images downloaded again)."""
    import polars as pl

    from builders.synthetic.httpserver import write_url_list

    urls, _ = write_url_list(pool, base, out_dir=root)
    df = pl.read_parquet(urls)
    if n is not None and n != df.height:
        df = pl.concat([df] * (n // df.height + 1)).head(n)
        urls = root / f"urls-{n}.parquet"
        df.write_parquet(urls)
    return urls, df.height


def run_size(urls: Path, root: Path, size: int, args, peers: list[str]) -> dict:
    """Both sides at one image size, order alternated, ``--repeats`` times: each run's whole-command
    measure, its steady-state rate and the last run's samples and digest."""
    outs = {"ours": root / "ours", **{k: root / PEERS[k][0] for k in peers}}
    counts: dict[str, int] = {}
    digests: dict[str, str] = {}

    def timed(name: str, cmd: list[str]) -> Measured:
        shutil.rmtree(outs[name], ignore_errors=True)
        m = run_measured(cmd, env=ENV)
        m.extra["steady_images_per_s"] = round(steady_rate(outs[name], args.steady_after), 1)
        counts[name], digests[name] = samples_digest(outs[name])  # the last run's
        return m

    code = OURS.format(repo=str(REPO), urls=str(urls), out=str(outs["ours"]), size=size, processes=args.processes)
    sides = {"ours": lambda: timed("ours", [sys.executable, "-c", code])}
    for k in peers:
        sides[k] = lambda k=k: timed(k, peer_cmd(urls, outs[k], size, args.processes, args.threads, CHUNK,
                                                   PEERS[k][1]))
    runs = alternate(sides, args.repeats)
    return {"runs": runs, "counts": counts, "digests": digests}


def _size_rows(size: int, n_urls: int, got: dict, args, summary: list, md_rows: list) -> dict:
    runs, counts, digests = got["runs"], got["counts"], got["digests"]
    med = {k: median_of(v) for k, v in runs.items()}
    rates = {k: counts[k] / m.wall for k, m in med.items()}
    steady = {k: median([m.extra["steady_images_per_s"] for m in v]) for k, v in runs.items()}
    same_bytes = digests["ours"] == digests.get("img2dataset (same options)")
    res = {"urls": n_urls, "samples": counts, "identical_to_img2dataset_same_options": same_bytes,
           "steady_images_per_s": steady, "steady_after_images": args.steady_after,
           "median": {k: {**m.to_dict(), "images_per_s": round(rates[k], 1)} for k, m in med.items()},
           "runs": {k: [m.to_dict() for m in v] for k, v in runs.items()}}
    for peer in [k for k in runs if k != "ours"]:
        mismatch = None if counts[peer] == counts["ours"] else f"samples differ ({counts['ours']} vs {counts[peer]})"
        if mismatch is None and peer == "img2dataset (same options)" and not same_bytes:
            mismatch = "same options but different shard bytes"
        ratio = ratio_or_mismatch(rates["ours"], rates[peer], mismatch)
        res[f"ratio vs {peer}"] = ratio
        res[f"cpu ratio vs {peer}"] = ratio_or_mismatch(med[peer].cpu, med["ours"].cpu, mismatch)
        rss = {k: round(m.peak_rss_mb) for k, m in med.items()}
        summary.append(summary_row(f"download + resize + shard, {size} px, {n_urls:,} URLs, vs {peer}",
                                   f"{rates['ours']:.0f} img/s", f"{rates[peer]:.0f} img/s", ratio, ">= 1.0x",
                                   peak_rss_mb=rss))
        if n_urls > args.steady_after:
            s_ratio = ratio_or_mismatch(steady["ours"], steady[peer], mismatch)
            res[f"steady ratio vs {peer}"] = s_ratio
            summary.append(summary_row(
                f"download steady state (after {args.steady_after:,} images), {size} px, {n_urls:,} URLs, vs {peer}",
                f"{steady['ours']:.0f} img/s", f"{steady[peer]:.0f} img/s", s_ratio, ">= 1.0x img2dataset at 50k"))
        md_rows.append(f"| {size} | {peer} | {rates['ours']:.0f} | {rates[peer]:.0f} | **{fmt_ratio(ratio)}** | "
                       f"{steady['ours']:.0f} | {steady[peer]:.0f} | "
                       f"**{fmt_ratio(res.get(f'steady ratio vs {peer}', '-'))}** | "
                       f"{med['ours'].cpu:.1f} / {med[peer].cpu:.1f} | "
                       f"{med['ours'].peak_rss_mb:,.0f} / {med[peer].peak_rss_mb:,.0f} | "
                       f"{counts['ours']} / {counts[peer]} | {', '.join(f'{x:.1f}' for x in med['ours'].load)} |")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, default=REPO / "demo-out" / "world" / "pool")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--urls", type=int, default=None, help="URLs in the list (the pool's, repeated); default: the pool")
    ap.add_argument("--steady-after", type=int, default=10_000, help="steady state: the rate after this many images")
    ap.add_argument("--peers", choices=["both", "same"], default="both", help="same: only img2dataset, same options")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pool = args.pool
    if not (pool / "pool.parquet").exists():
        from builders.synthetic.world import ensure_world
        from curate.paths import cache_dir

        pool = ensure_world(cache_dir() / "bench" / "world-small", scale="small", seed=0).path / "pool"
    peers = list(PEERS) if args.peers == "both" else ["img2dataset (same options)"]
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
            urls, n_urls = _url_list(pool, base, root, args.urls)
            for size in args.sizes:
                got = run_size(urls, root, size, args, peers)
                result["sizes"][str(size)] = _size_rows(size, n_urls, got, args, summary, md_rows)
                print(f"   {size} px: {result['sizes'][str(size)]['steady_images_per_s']}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    result["summary"] = summary
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    name = "bench_download" if args.urls is None else f"bench_download_{args.urls // 1000}k"
    save(name, result, _markdown(result, n_urls, pool, args, md_rows))


def _markdown(result: dict, n_urls: int, pool: Path, args, md_rows: list[str]) -> str:
    return "\n".join([
        "# Download + resize + shard: pool ingestion vs img2dataset",
        "",
        f"{n_urls:,} URLs ({pool.name} of a demo world, its JPEGs listed again as often as needed) over HTTP from "
        f"127.0.0.1 (a server process of its own), {args.processes} processes x {args.threads} threads, resize mode "
        f"keep_ratio, webdataset output, {CHUNK} samples per shard. Median of {args.repeats}, order alternated. "
        "Whole command: start-up included; steady state: images per second from the shard that took the count "
        f"past {args.steady_after:,} images to the last shard (the shards' own end times), start-up left out.",
        "",
        "| px | peer | ours img/s | peer img/s | ratio | ours steady img/s | peer steady img/s | steady ratio | "
        "CPU s ours / peer | peak RSS MB ours / peer | samples | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *md_rows,
        "",
        "Shards of ours and img2dataset with the same options identical sample for sample (every member hashed): "
        + ", ".join(f"{sz} px {'yes' if r['identical_to_img2dataset_same_options'] else 'NO'}"
                    for sz, r in result["sizes"].items()) + ".",
        "",
        "Where the difference comes from: `img2dataset.download` starts its workers and a logger process with "
        "`spawn`, three fresh interpreters that each import img2dataset again (webdataset, hence torch; wandb; "
        "pandas; albumentations: about 2 s of CPU each); ours runs one executor task per block of 1,000 URLs "
        "(a local pool forked after the imports; Ray nodes with `--executor ray`), with img2dataset's reader, "
        "resizer, downloader and writer doing the work, and reads the per-shard stats files itself.",
        "",
        "Options ours gives img2dataset (the rest are its defaults): "
        + ", ".join(f"`{k}={v}`" for k, v in result["wrapper_options"].items()) + ".",
    ])


if __name__ == "__main__":
    main()
