"""Benchmark: ingest of N samples into FiftyOne: `curate review` sync vs batched add_samples vs add_sample.

Same input for all three: one dataset folder (N unique 48x48 JPEGs in shards + manifest), and
the same output: a FiftyOne dataset whose samples carry the manifest's fields, with the images
extracted to files (FiftyOne needs one file per image). Timed, each in its own process (the
database connection is opened before the clock starts; peak RSS of that process reported):

* ours: ``annotations.sync.sync_dataset`` end to end (extract images, build documents, bulk
  insert, near-duplicate pass, saved views: one per pair and five more) into a fresh dataset;
* peer batched: what a user writes without curate: each shard read with ``tarfile``, each image
  written with ``open().write()``, then ``dataset.add_samples([fo.Sample(...), ...])``;
* peer loop: the same extraction, then ``dataset.add_sample(fo.Sample(...))`` per sample.

Nothing is deleted until every run is done: each run writes its media to a folder of its own
and leaves its FiftyOne dataset in place. This VM's disk is mounted with online ``discard``, and
deleting a run's 10,000 files makes file creation 10-20x slower for the next minute or so
(measured with a plain create-write-close loop: 45,000 files/s on a quiet disk, 2,200-3,600/s
after deleting 10,000 files; hard links, which need no new inode, stay at 70,000/s), so
whichever tool ran after a deletion paid for it. Before every run the parent flushes
(``os.sync()``) and times a create-write-close loop of 500 files (kept, like the media) in the
media folder, every 2 s until files are created at 10,000/s or more (at most 90 s); the wait and
the last rate are reported beside the time.

Media go to tmpfs (``/dev/shm``) and to disk (the cache folder, where `curate review` puts
them by default; ``disk:/folder`` for another place): file creation costs differ by an order of
magnitude between the two, and on a shared disk between folders and moments too. Each
(media, tool) runs ``--reps`` times in rotating order; the medians are reported with the load
average before and after every run (the machine is shared). Writes bench/results/
review_ingest.{json,md}. Run: ``.venv/bin/python bench/bench_review.py [--n 10000] [--reps 3]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import fmt_ratio, machine, summary_row  # noqa: E402

TOOLS = ("ours", "peer_batched", "peer_loop")


def make_dataset(root: Path, n: int) -> Path:
    """N unique small JPEGs in 2,000-sample shards plus a manifest, like `curate build` writes."""
    import numpy as np
    import polars as pl
    from PIL import Image

    from curate.manifest import write_manifest
    from curate.shards import ShardWriter

    rng = np.random.default_rng(0)
    attrs = ["red", "blue", "green", "striped", "dotted", "wooden", "metal", "furry"]
    objs = ["circle", "square", "star", "lemon", "heart", "car", "cup", "shoe", "tree", "fish"]
    rows = []
    with ShardWriter(root / "shards", prefix="bench", maxcount=2000) as w:
        for i in range(n):
            attr, obj = attrs[i % len(attrs)], objs[(i // len(attrs)) % len(objs)]
            key = f"s{i:07d}"
            arr = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=80)
            meta = {"key": key, "attr": attr, "obj": obj, "pair": f"{attr} {obj}", "source": "bench"}
            shard = w.write({"__key__": key, "jpg": buf.getvalue(), "json": meta})
            rows.append({**meta, "shard": shard, "split": ["train", "val", "test"][i % 3],
                         "score_comp": float(rng.random()), "score_obj": float(rng.random()),
                         "score_attr": float(rng.random()), "width": 48, "height": 48,
                         "caption": f"a photo of a {attr} {obj}", "url": f"http://example.invalid/{key}.jpg"})
    write_manifest(pl.DataFrame(rows), root)
    return root


# -- the three tools (each runs in a child process) ---------------------------------------------
def run_ours(folder: Path, name: str, media: Path) -> dict:
    from annotations.sync import SyncConfig, sync_dataset

    t0 = time.perf_counter()
    rep = sync_dataset(SyncConfig(dataset=folder, name=name, media_dir=media))
    return {"seconds": time.perf_counter() - t0, "samples": rep.added, "views": len(rep.views),
            "phases": {k: round(v, 3) for k, v in rep.phases.items()}}


def extract_plainly(folder: Path, media: Path) -> dict[str, str]:
    """A user's extraction: tarfile over each shard, one ``open().write()`` per image."""
    paths = {}
    for shard in sorted((folder / "shards").glob("*.tar")):
        out = media / shard.stem
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".jpg"):
                    path = out / member.name
                    with open(path, "wb") as f:
                        f.write(tar.extractfile(member).read())
                    paths[member.name[:-4]] = str(path)
    return paths


def _samples(fo, folder: Path, paths: dict[str, str]):
    from curate.manifest import read_manifest

    for r in read_manifest(folder).iter_rows(named=True):
        yield fo.Sample(
            filepath=paths[r["key"]], key=r["key"], shard=r["shard"], split=r["split"], source=r["source"],
            attr=fo.Classification(label=r["attr"]), obj=fo.Classification(label=r["obj"]),
            pair=fo.Classification(label=r["pair"]), score_comp=r["score_comp"], score_obj=r["score_obj"],
            score_attr=r["score_attr"], width=r["width"], height=r["height"], caption=r["caption"], url=r["url"],
            metadata=fo.ImageMetadata(width=r["width"], height=r["height"]))


def run_peer(folder: Path, name: str, media: Path, batched: bool) -> dict:
    import fiftyone as fo

    t0 = time.perf_counter()
    paths = extract_plainly(folder, media)
    t_extract = time.perf_counter() - t0
    ds = fo.Dataset(name)
    if batched:
        ds.add_samples(list(_samples(fo, folder, paths)), progress=False)
    else:
        for s in _samples(fo, folder, paths):
            ds.add_sample(s)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples": len(ds), "phases": {"extract": round(t_extract, 3),
                                                               "add": round(seconds - t_extract, 3)}}


def child(tool: str, folder: Path, media: Path, name: str) -> None:
    from annotations.database import connect

    connect()  # database up before the clock starts
    # the dataset is left in place (dropping its collections frees disk blocks: see the docstring);
    # the parent deletes every run's dataset after the last run
    res = run_ours(folder, name, media) if tool == "ours" else run_peer(folder, name, media,
                                                                        batched=tool == "peer_batched")
    import resource

    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    print("RESULT " + json.dumps(res), flush=True)


# -- the parent: rotate, repeat, measure --------------------------------------------------------
def create_rate(root: Path, n: int = 2000) -> float:
    """Files/s a plain create-write-close loop gets in ``root`` right now (the disk's state: other
    processes' fsyncs can slow file creation on a shared disk 30-fold)."""
    folder = Path(tempfile.mkdtemp(prefix="probe-", dir=root))  # kept until the end, like the media
    data = os.urandom(2500)
    t = time.perf_counter()
    for i in range(n):
        fd = os.open(folder / f"{i}.jpg", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.close(fd)
    return round(n / (time.perf_counter() - t))


SETTLED_RATE = 10_000  # file creates/s a quiet disk gives easily (tmpfs: ~100k; this VM's disk, quiet: 20-50k)
MAX_SETTLE_S = 90.0


def settle(root: Path) -> tuple[float, float]:
    """Wait (at most MAX_SETTLE_S) until file creation in ``root`` is quick again; returns (rate, seconds waited).

    The previous run's writes and the FiftyOne database's own checkpoints (its folder is on the same
    disk) keep a disk busy for a while after a run, and file creation stalls behind them: without
    waiting, whichever tool runs next pays for the one before it."""
    t0 = time.perf_counter()
    while True:
        os.sync()  # the previous run's media (and their deletion) written back
        rate = create_rate(root, n=500)
        waited = time.perf_counter() - t0
        if rate >= SETTLED_RATE or waited >= MAX_SETTLE_S:
            os.sync()  # ... and the probe's
            return rate, round(waited, 1)
        time.sleep(2.0)


def run_child(tool: str, folder: Path, media: Path, name: str) -> dict:
    media.parent.mkdir(parents=True, exist_ok=True)
    rate, waited = settle(media.parent)
    load = os.getloadavg()[0]
    proc = subprocess.Popen([sys.executable, __file__, "--child", tool, "--folder", str(folder), "--media-dir",
                             str(media), "--name", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{tool} failed:\n{err[-3000:]}")
    res = json.loads(line[len("RESULT "):])
    res["load_before"], res["load_after"] = round(load, 2), round(os.getloadavg()[0], 2)
    res["file_creates_per_s_before"] = rate
    res["settle_wait_s"] = waited
    return res


def media_roots(kinds: list[str], base: Path) -> dict[str, Path]:
    roots = {}
    for kind in kinds:
        if kind == "tmpfs":
            shm = Path("/dev/shm")
            if not shm.is_dir():
                print("no /dev/shm: tmpfs runs skipped", flush=True)
                continue
            roots[kind] = Path(tempfile.mkdtemp(prefix="bench-review-media-", dir=shm))
        elif kind.startswith("disk:"):  # another folder on disk (another region of it, another disk)
            where = Path(kind.split(":", 1)[1])
            where.mkdir(parents=True, exist_ok=True)
            roots[kind] = Path(tempfile.mkdtemp(prefix="bench-review-media-", dir=where))
        else:  # "disk": the cache folder, where `curate review` puts media by default
            roots[kind] = Path(tempfile.mkdtemp(prefix="bench-review-media-", dir=base))
    return roots


def summarise(runs: dict[str, dict[str, list[dict]]], n: int) -> dict:
    out: dict = {}
    for kind, by_tool in runs.items():
        med = {t: statistics.median(r["seconds"] for r in rs) for t, rs in by_tool.items()}
        out[kind] = {
            t: {"median_seconds": round(med[t], 3), "samples_per_s": round(n / med[t], 1),
                "runs_seconds": [round(r["seconds"], 3) for r in rs],
                "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in rs if r["peak_rss_mb"]),
                "load": [(r["load_before"], r["load_after"]) for r in rs],
                "file_creates_per_s": [r["file_creates_per_s_before"] for r in rs],
                "settle_wait_s": [r.get("settle_wait_s", 0.0) for r in rs],
                "phases_median": {p: round(statistics.median(r["phases"][p] for r in rs), 3)
                                  for p in rs[0]["phases"]}}
            for t, rs in by_tool.items()}
        counts = {t: sorted({r["samples"] for r in rs}) for t, rs in by_tool.items()}
        out[kind]["samples"] = counts
        for peer in ("peer_batched", "peer_loop"):
            differ = counts[peer] != counts["ours"] or len(counts["ours"]) != 1
            out[kind][f"ratio_vs_{peer.removeprefix('peer_')}"] = (
                f"MISMATCH: samples {counts['ours']} vs {counts[peer]}" if differ
                else round(med[peer] / med["ours"], 2))
    return out


GOALS = {"tmpfs": ">= 5x batched", "disk": ">= 3x batched"}


def summary(results: dict) -> list[dict]:
    """The rows `bench/run_all.py` puts in the table: ours vs each peer, per media folder."""
    rows = []
    for kind, r in results.items():
        for peer, label in (("peer_batched", "batched add_samples"), ("peer_loop", "add_sample loop")):
            rows.append(summary_row(f"FiftyOne review sync vs {label}, media on {kind}",
                                    f"{r['ours']['samples_per_s']:,.0f} samples/s",
                                    f"{r[peer]['samples_per_s']:,.0f} samples/s",
                                    r[f"ratio_vs_{peer.removeprefix('peer_')}"],
                                    GOALS.get(kind.split(":")[0], "") if peer == "peer_batched" else ""))
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# review ingest into FiftyOne ({result['n']:,} samples, {m['cores']} cores, {m['date']})", "",
             f"Median of {result['reps']} runs per tool, rotating order, each in its own process. "
             f"Load average (1 min) before the first run {result['load_start']}, after the last "
             f"{result['load_end']} (shared machine). Every run writes its media to a folder of its own and nothing "
             "is deleted before the last run: this VM's disk is mounted with online discard, and right after 10,000 "
             "files are deleted it creates files 10-20x slower for a minute or so (2,200-3,600/s instead of "
             "45,000/s), which made whichever tool ran next pay for the deletion (2.4x instead of 8.7x in an "
             "earlier run that deleted between runs). Each side extracts the same 10,000 images to files.", ""]
    for kind in result["media"]:
        r = result["results"][kind]
        lines += [f"## media on {kind} ({result['media'][kind]})", "",
                  "| tool | median s | samples/s | peak RSS MB | runs (s) | load before/after | file creates/s before "
                  "(settle wait s) |",
                  "|---|---:|---:|---:|---|---|---|"]
        for t in TOOLS:
            x = r[t]
            lines.append(f"| {t} | {x['median_seconds']:.2f} | {x['samples_per_s']:,.0f} | "
                         f"{x['peak_rss_mb_median']:.0f} | {', '.join(f'{v:.2f}' for v in x['runs_seconds'])} | "
                         f"{'; '.join(f'{a}/{b}' for a, b in x['load'])} | "
                         f"{', '.join(f'{v:,} ({w:g})' for v, w in zip(x['file_creates_per_s'], x['settle_wait_s'], strict=True))} |")
        lines += ["", f"ours vs batched `add_samples`: **{fmt_ratio(r['ratio_vs_batched'])}**; vs the `add_sample` "
                  f"loop: **{fmt_ratio(r['ratio_vs_loop'])}**. Our phases (median s): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in r["ours"]["phases_median"].items())
                  + ". Peer batched: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                   r["peer_batched"]["phases_median"].items()) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--media", default="tmpfs,disk",
                    help="comma list: tmpfs (/dev/shm), disk (the cache folder), disk:/some/folder")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--child", choices=TOOLS)
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--media-dir", type=Path)
    ap.add_argument("--name")
    ap.add_argument("--cleanup", metavar="TAG", help="delete the FiftyOne datasets of the runs tagged TAG")
    args = ap.parse_args()
    os.environ.setdefault("CURATE_NO_PROGRESS", "1")
    for k, v in {"FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_VALIDATION": "false"}.items():
        os.environ.setdefault(k, v)
    if args.child:
        child(args.child, args.folder, args.media_dir, args.name)
        return
    if args.cleanup:
        from annotations.database import connect

        fo = connect()
        for name in fo.list_datasets():
            if name.startswith("bench-") and name.endswith(f"-{args.cleanup}"):
                fo.delete_dataset(name)
        return
    from curate.paths import cache_dir

    cache_dir().mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-review-", dir=cache_dir()))
    db_dir = None
    if "FIFTYONE_DATABASE_DIR" not in os.environ:  # a database of its own, removed at the end
        db_dir = os.environ["FIFTYONE_DATABASE_DIR"] = tempfile.mkdtemp(prefix="bench-review-db-")
    load_start = round(os.getloadavg()[0], 2)
    roots = media_roots([k.strip() for k in args.media.split(",") if k.strip()], base)
    runs: dict[str, dict[str, list[dict]]] = {}
    tag = str(int(time.time()))
    try:
        t = time.perf_counter()
        folder = make_dataset(base / "bench-ds", args.n)
        print(f"made {args.n} samples in {time.perf_counter() - t:.1f} s", flush=True)
        for kind, root in roots.items():
            runs[kind] = {t: [] for t in TOOLS}
            for rep in range(args.reps):
                order = TOOLS[rep % 3:] + TOOLS[:rep % 3]
                for tool in order:
                    media = root / f"{tool}-{rep}"
                    res = run_child(tool, folder, media, f"bench-{tool}-{kind}-{rep}-{tag}")
                    runs[kind][tool].append(res)
                    print(f"{kind} rep {rep} {tool}: {res['seconds']:.2f} s, {res['peak_rss_mb']} MB RSS, "
                          f"load {res['load_before']}->{res['load_after']}, "
                          f"{res['file_creates_per_s_before']:,} file creates/s before (after {res['settle_wait_s']} s)",
                          flush=True)
    finally:  # the deletions, after the last run
        subprocess.run([sys.executable, __file__, "--cleanup", tag], check=False)
        shutil.rmtree(base, ignore_errors=True)
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)
        if db_dir:
            shutil.rmtree(db_dir, ignore_errors=True)
    import fiftyone as fo

    result = {
        "benchmark": "review ingest into FiftyOne", "n": args.n, "reps": args.reps, "fiftyone": fo.__version__,
        "machine": {**machine(), "load": [load_start]},
        "media": {k: str(v.parent) for k, v in roots.items()},
        "load_start": load_start, "load_end": round(os.getloadavg()[0], 2),
        "results": summarise(runs, args.n), "runs": runs,
    }
    result["summary"] = summary(result["results"])
    from curate.fsutil import write_json, write_text

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "review_ingest.json", result)
    md = markdown(result)
    write_text(args.out / "review_ingest.md", md)
    print(md)


if __name__ == "__main__":
    main()
