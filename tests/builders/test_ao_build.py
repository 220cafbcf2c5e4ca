"""`curate build imagenet-ao` end to end on real inputs: captions, an HTTP image pool downloaded
with img2dataset, a folder pool with broken files, an untrained mini-CLIP (conftest ``tiny_mini_spec``;
the open_clip loading path has its own tests)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from build_helpers import curate_in, relaxed_toml

CURATE = str(Path(sys.executable).with_name("curate"))

# With a random model every image looks alike: keep the filters' plumbing, not their verdicts.
RELAXED = relaxed_toml()


def curate(*args, env=None, check=True, timeout=600):
    r = subprocess.run([CURATE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"curate {' '.join(map(str, args))} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def world_args(world):
    wj = world.path / "world.json"
    return ["--objects", wj, "--attributes", wj, "--captions", world.path / "captions"]


def check_dataset(out: Path) -> pl.DataFrame:
    from curate.shards import iter_shard

    m = pl.read_parquet(out / "manifest.parquet")
    assert m["key"].n_unique() == m.height > 0
    for col in ("key", "shard", "attr", "obj", "pair", "split", "rare", "source", "score_comp"):
        assert col in m.columns
    keys_in_shards = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        for s in iter_shard(shard):
            meta = json.loads(s["json"])
            keys_in_shards[s["__key__"]] = (shard.name, meta)
            assert s["jpg"][:3] == b"\xff\xd8\xff"
    assert set(keys_in_shards) == set(m["key"])
    for key, shard, attr, obj in m.select("key", "shard", "attr", "obj").iter_rows():
        assert keys_in_shards[key][0] == shard
        assert (keys_in_shards[key][1]["attr"], keys_in_shards[key][1]["obj"]) == (attr, obj)
    # no image in two splits, unseen pairs only in val/test
    assert m.group_by("key").agg(pl.col("split").n_unique()).filter(pl.col("split") > 1).height == 0
    assert set(m.filter(pl.col("rare"))["split"].unique()) <= {"val", "test"}
    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"]["samples"] == m.height and info["funnel"]
    assert (out / "README.md").read_text().count("| stage |") == 1
    assert (out / "hist_attributes.png").stat().st_size > 0 and (out / "hist_objects.png").stat().st_size > 0
    return m


def check_czsl(out: Path, m: pl.DataFrame) -> None:
    """Read the export the way ExplainableML/czsl's CompositionDataset does."""
    import torch

    root = out / "exports" / "czsl"
    pairs = {}
    for split in ("train", "val", "test"):
        lines = (root / "compositional-split-natural" / f"{split}_pairs.txt").read_text().strip().split("\n")
        pairs[split] = [tuple(t.split()) for t in lines if t]
        assert all(len(p) == 2 for p in pairs[split])
    all_pairs = set(pairs["train"]) | set(pairs["val"]) | set(pairs["test"])
    data = torch.load(root / "metadata_compositional-split-natural.t7", weights_only=True)
    assert len(data) == m.height
    for inst in data:
        assert (inst["attr"], inst["obj"]) in all_pairs
        assert inst["set"] in ("train", "val", "test")
        assert (root / "images" / inst["image"]).exists()
    unseen = {(a.replace(" ", "_"), o.replace(" ", "_")) for a, o in m.filter(pl.col("rare")).select("attr", "obj").rows()}
    assert not unseen & set(pairs["train"])


@pytest.mark.slow
def test_build_from_http_url_list(tmp_path, small_world, tiny_mini_spec):
    """img2dataset downloads the pool from a local server; dead URLs and HTTP 500s are counted."""
    from builders.synthetic.httpserver import serve_folder, write_url_list

    pool = small_world.path / "pool"
    paths = pl.read_parquet(pool / "pool.parquet")["path"].to_list()
    faults = {paths[0]: 500, paths[1]: 404, paths[2]: 500}
    cfg = tmp_path / "build.toml"
    cfg.write_text(RELAXED)
    out = tmp_path / "ao"
    with serve_folder(pool, faults=faults) as base:
        urls, _ = write_url_list(pool, base, tmp_path)
        curate("build", "imagenet-ao", *world_args(small_world), "--pool", urls, "--model", tiny_mini_spec,
               "--config", cfg, "--out", out, "--workers", "1")
    m = check_dataset(out)
    check_czsl(out, m)
    info = json.loads((out / "dataset.json").read_text())
    pool_stats = info["sources"]["pool"]
    assert pool_stats["kind"] == "urls"
    assert pool_stats["failed_to_download"] == 3
    assert pool_stats["successes"] == len(paths) - 3
    assert set(m["source"]) == {"pool"}
    # the rarity stage found exactly the world's rare pairs
    gt = json.loads((small_world.path / "captions_ground_truth.json").read_text())
    pairs = pl.read_parquet(out / "pairs.parquet")
    assert set(pairs.filter(pl.col("rare")).select("attr", "obj").rows()) == {tuple(p) for p in gt["rare_pairs"]}
    assert (out / "exports" / "imagefolder").is_dir()
    # img2dataset's shards open in `datasets` with no arguments too (the card beside them types the JSON)
    import datasets

    from curate.hub import scan_shards

    assert scan_shards(sorted((out / "pool" / "shards").glob("*.tar"))).problems == []
    pool = datasets.load_dataset(str(out / "pool" / "shards"), cache_dir=str(tmp_path / "hf"))
    assert pool["train"].num_rows == pool_stats["successes"] and pool["train"][0]["json"]["status"] == "success"


def _png_with_size(w: int, h: int) -> bytes:
    """A valid 1x1 PNG whose header claims w x h: a decompression bomb without the memory."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 4 + 4  # signature, length, type
    data[ihdr:ihdr + 8] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[12:12 + 4 + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.slow
def test_build_folder_pool_with_broken_images(tmp_path, small_world, tiny_mini_spec, capfd):
    """Corrupt JPEGs, zero-byte files, PNG with alpha, a 20000x20000 bomb: counted, never fatal."""
    import shutil

    from PIL import Image

    folder = tmp_path / "pool"
    folder.mkdir()
    for p in sorted((small_world.path / "pool" / "images").glob("*.jpg"))[:60]:  # the broken files matter, not how many
        shutil.copy(p, folder / p.name)
    good = sorted(folder.glob("*.jpg"))
    good[0].write_bytes(good[0].read_bytes()[:200])  # truncated JPEG
    good[1].write_bytes(b"")  # zero bytes
    good[2].write_bytes(b"not an image at all")
    (folder / "bomb.png").write_bytes(_png_with_size(20000, 20000))
    rgba = Image.new("RGBA", (96, 96), (255, 0, 0, 0))
    rgba.save(folder / "alpha.png")
    cfg = tmp_path / "build.toml"
    cfg.write_text(relaxed_toml(retrieve_k=500, images_per_pair=500))
    out = tmp_path / "ao"
    r = curate_in(capfd, "build", "imagenet-ao", *world_args(small_world), "--pool", folder, "--model",
                  tiny_mini_spec, "--config", cfg, "--out", out, "--workers", "1")  # in this process: its imports paid once
    assert r.returncode == 0, r.stderr
    rej = pl.read_parquet(out / "filters" / "rejected_images.parquet")
    reasons = dict(rej.select("src_key", "reason").rows())
    assert "bomb" in reasons and "bomb" in reasons["bomb"]
    assert reasons[good[1].stem].startswith("empty")
    assert reasons[good[2].stem].startswith("undecodable")
    assert good[0].stem in reasons
    m = check_dataset(out)
    assert not set(m["src_key"]) & set(reasons)
    # the PNG with alpha made it through, as a JPEG
    if "alpha" in set(m["src_key"]):
        assert m.filter(pl.col("src_key") == "alpha").height >= 1


def test_build_drops_pairs_with_too_few_candidates(tmp_path, small_world, tiny_mini_spec, capfd):
    # the commands run in this process (curate's main: its exit status, what it writes): a process each
    # would pay curate's imports three more times
    cfg = tmp_path / "build.toml"
    cfg.write_text(relaxed_toml(min_images_per_pair=3, generator_images=2, max_pairs=2, common_pairs=2))
    out = tmp_path / "ao"
    r = curate_in(capfd, "build", "imagenet-ao", *world_args(small_world), "--generator", "demo", "--model",
                  tiny_mini_spec, "--config", cfg, "--out", out, "--workers", "1")
    # 2 generated images per pair < minimum 3: every pair is dropped, which is a clear error
    assert r.returncode == 2, r.stderr
    assert "filtered out" in r.stderr and "Traceback" not in r.stderr
    cfg.write_text(relaxed_toml(generator_images=2, max_pairs=2, common_pairs=2, min_images_per_pair=2))
    out2 = tmp_path / "ao2"
    r = curate_in(capfd, "build", "imagenet-ao", *world_args(small_world), "--generator", "demo", "--model",
                  tiny_mini_spec, "--config", cfg, "--out", out2, "--workers", "1")
    assert r.returncode == 0, r.stderr
    info = json.loads((out2 / "dataset.json").read_text())
    assert info["counts"]["dropped_pairs"] == []
    assert info["counts"]["rare_pairs_kept"] == 2
    # zero-shot table: rare set vs reference (ordinary images), one composition label space
    r = curate_in(capfd, "eval", "zeroshot", out2, "--reference", small_world.path / "heldout")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out2 / "eval" / "zeroshot.json").read_text())
    assert set(rep["results"]) == {"rare", "reference"}
    rare, ref = rep["results"]["rare"], rep["results"]["reference"]
    assert rare["images"] == 2 * 2 and rare["pairs"] == 2
    assert ref["images"] == len(list(_iter_keys(small_world.path / "heldout")))
    assert rare["composition_classes"] == ref["composition_classes"] == 2 + ref["pairs"]
    assert rep["object_classes"] == len(small_world.objects)
    for x in (rare, ref):
        assert 0.0 <= x["object_top1"] <= x["object_top5"] <= 1.0
    assert "| rare |" in r.stdout + r.stderr and (out2 / "eval" / "zeroshot.md").exists()


def _iter_keys(folder):
    from curate.shards import iter_shard, list_shards

    for shard in list_shards(folder):
        for s in iter_shard(shard):
            yield s["__key__"]


def test_build_bad_config_and_captions(tmp_path, small_world, tiny_mini_spec, capfd):
    cfg = tmp_path / "build.toml"
    cfg.write_text("images_per_pari = 3\n")
    r = curate_in(capfd, "build", "imagenet-ao", "--config", cfg, "--out", tmp_path / "x")
    assert r.returncode == 2 and "images_per_pari" in r.stderr and "images_per_pair" in r.stderr
    cfg.write_text("images_per_pair = 'ten'\n")
    r = curate_in(capfd, "build", "imagenet-ao", "--config", cfg, "--out", tmp_path / "x")
    assert r.returncode == 2 and "images_per_pair" in r.stderr and "int" in r.stderr
    caps = tmp_path / "caps.csv"
    caps.write_text("url,alt\nhttp://x,a red heart\n")
    wj = small_world.path / "world.json"
    r = curate_in(capfd, "build", "imagenet-ao", "--objects", wj, "--attributes", wj, "--captions", caps,
                  "--generator", "demo", "--model", tiny_mini_spec, "--out", tmp_path / "y")
    assert r.returncode == 2 and "alt" in r.stderr and "caption column" in r.stderr
    assert "Traceback" not in r.stderr


STAGE_MARKERS = ["rarity_scan", "generate", "pool", "decode_check"]


@pytest.mark.slow
@pytest.mark.system
def test_kill_9_in_each_stage_then_rerun_gives_identical_manifest(tmp_path, small_build):
    # the reference is the session's uninterrupted build (conftest.py: this same command, relaxed filters,
    # pool + demo generator, one worker), so the test only pays for the killed runs
    args, ref = small_build.args, small_build.out
    out = tmp_path / "killed"
    ledger = out / ".curate" / "ledger"
    kills = 0
    for _ in range(len(STAGE_MARKERS)):
        before = {p.parent.name for p in ledger.rglob("*.json")} if ledger.exists() else set()
        p = subprocess.Popen([CURATE, *map(str, args), "--out", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        t0 = time.time()
        while p.poll() is None and time.time() - t0 < 120:
            now = {q.parent.name for q in ledger.rglob("*.json")} if ledger.exists() else set()
            if now - before:
                p.kill()
                kills += 1
                break
            time.sleep(0.05)
        p.wait()
        if p.returncode == 0:
            break
    assert kills >= 2
    curate(*args, "--out", out)
    assert (out / "manifest.parquet").read_bytes() == (ref / "manifest.parquet").read_bytes()
    for shard in sorted((ref / "shards").glob("*.tar")):
        assert (out / "shards" / shard.name).read_bytes() == shard.read_bytes()


def test_a_downloaded_block_is_rewritten_in_key_order_with_fixed_headers(tmp_path):
    """img2dataset writes a block's samples as their downloads finish, each member stamped with its write
    time: in_key_order makes the block's bytes the same whatever the timing (keys sorted, a sample's
    members in their order, curate's fixed tar headers; the parquet's rows by key)."""
    import random
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from builders.imagenet_ao.pool import in_key_order
    from curate.shards import FIXED_MTIME, iter_shard

    samples = {f"{i:09d}": {"jpg": bytes([i]) * (10 + i), "json": b'{"i": %d}' % i, "txt": b"cap %d" % i} for i in range(6)}

    def block(folder: Path, seed: int) -> Path:
        rng = random.Random(seed)
        folder.mkdir()
        keys = list(samples)
        rng.shuffle(keys)
        with tarfile.open(folder / "00000.tar", "w") as tar:
            for k in keys:
                for ext, data in samples[k].items():
                    info = tarfile.TarInfo(f"{k}.{ext}")
                    info.size, info.mtime = len(data), 1_700_000_000 + rng.random() * 1000
                    tar.addfile(info, io.BytesIO(data))
        pq.write_table(pa.table({"key": keys, "status": ["success"] * len(keys)}), folder / "00000.parquet")
        in_key_order(folder, "00000")
        return folder

    a, b = block(tmp_path / "a", 0), block(tmp_path / "b", 1)
    for f in ("00000.tar", "00000.parquet"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    with tarfile.open(a / "00000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [f"{k}.{e}" for k in sorted(samples) for e in ("jpg", "json", "txt")]
    assert {m.mtime for m in members} == {FIXED_MTIME}
    assert {s["__key__"]: s["jpg"] for s in iter_shard(a / "00000.tar")} == {k: v["jpg"] for k, v in samples.items()}
    assert pq.read_table(a / "00000.parquet").column("key").to_pylist() == sorted(samples)
    before = (a / "00000.tar").read_bytes()
    in_key_order(a, "00000")  # idempotent
    assert (a / "00000.tar").read_bytes() == before


def test_download_failures_group_by_cause_and_a_dead_list_is_one_short_error(tmp_path):
    """img2dataset's messages name the URL; grouped by cause, 40 dead URLs are two reasons, and a URL
    list where nothing downloads fails with one short line (not every URL's message)."""
    from builders.imagenet_ao.pool import failure_reason, ingest_pool
    from curate.errors import CurateError

    assert failure_reason("unknown url type: '/images/a.jpg'") == failure_reason("unknown url type: '/b/c.jpg'")
    assert failure_reason("<urlopen error http://x.org/1.jpg refused>") == "<urlopen error <url> refused>"
    assert failure_reason("HTTP Error 404: Not Found") == "HTTP Error 404: Not Found"
    urls = [f"/images/pool_{i:04d}.jpg" for i in range(20)] + [f"http://127.0.0.1:1/{i}.jpg" for i in range(20)]
    pl.DataFrame({"url": urls}).write_parquet(tmp_path / "urls.parquet")
    with pytest.raises(CurateError) as e:
        ingest_pool(str(tmp_path / "urls.parquet"), tmp_path / "pool", image_size=64, workers=1)
    msg = str(e.value)
    assert "downloaded no image" in msg and "40 URLs, 0 downloaded" in msg and len(msg) < 800, msg
    assert "20 x unknown url type: '…'" in msg
    pl.DataFrame({"url": pl.Series([], dtype=pl.Utf8)}).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(CurateError, match="the URL list is empty"):
        ingest_pool(str(tmp_path / "empty.parquet"), tmp_path / "pool2", image_size=64, workers=1)


@pytest.mark.system
def test_pool_download_writes_what_img2dataset_download_writes(tmp_path, small_world):
    """Our distribution of img2dataset's work (forked workers, no logger process) writes exactly what
    ``img2dataset.download`` writes with the same options: the same samples, byte for byte, over
    two shards and two processes. A JSON Lines URL list downloads too (with spawned workers), and a
    rerun keeps the shards it finished (img2dataset's incremental mode). 200 URLs in shards of 100 (the
    build's shards hold 1,000): the same two shards for a sixth of the downloads."""
    from img2dataset import download

    from builders.imagenet_ao.pool import download_urls, img2dataset_options
    from builders.synthetic.httpserver import serve_folder, write_url_list
    from curate.shards import iter_shard

    def content(out: Path) -> dict:
        return {(tar.name, s["__key__"], ext): v for tar in sorted(out.glob("*.tar"))
                for s in iter_shard(tar) for ext, v in s.items() if not ext.startswith("__")}

    pool = small_world.path / "pool"
    with serve_folder(pool) as base:
        urls, _ = write_url_list(pool, base, tmp_path)
        lst = pl.read_parquet(urls).select("url", "caption").head(200)
        lst.write_parquet(tmp_path / "u.parquet")
        lst.write_ndjson(tmp_path / "u.jsonl")
        ours = download_urls(tmp_path / "u.parquet", tmp_path / "ours", image_size=64, processes=2, threads=8,
                             block_size=100)
        download(**{**img2dataset_options(tmp_path / "u.parquet", tmp_path / "peer", 64, 2, 8, 10, "url", "caption"),
                    "number_sample_per_shard": 100})
        download_urls(tmp_path / "u.jsonl", tmp_path / "jsonl", image_size=64, processes=1, threads=8,
                      start_method="spawn", block_size=100)  # img2dataset's own way of starting workers, where fork is missing
        first = {p: p.stat().st_mtime_ns for p in ours}
        assert download_urls(tmp_path / "u.parquet", tmp_path / "ours", image_size=64, processes=2,
                             block_size=100) == ours
    assert [p.name for p in ours] == ["00000.tar", "00001.tar"]
    mine, peer = content(tmp_path / "ours"), content(tmp_path / "peer")
    assert len(mine) == 200 * 3 and mine == peer  # jpg + json + txt per sample
    assert content(tmp_path / "jsonl") == mine
    assert {p: p.stat().st_mtime_ns for p in ours} == first  # nothing downloaded again
    assert not (tmp_path / "ours" / "_tmp").exists()


INTERRUPTIBLE = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
sys.path.insert(0, {repo!r})
from pathlib import Path
from builders.imagenet_ao.pool import download_urls
download_urls(Path({urls!r}), Path({out!r}), image_size=64, processes=1, threads=4, block_size={block})
"""


@pytest.mark.slow
@pytest.mark.system
def test_pool_download_interrupted_then_rerun_downloads_only_the_rest(tmp_path, small_world):
    """Ctrl-C (SIGINT to the process group) stops a URL download within seconds, with one traceback
    (the parent's; the workers ignore it); a rerun keeps the shards finished before it and
    downloads the rest, ending with every URL's sample exactly once."""
    import signal

    from builders.imagenet_ao.pool import download_urls
    from builders.synthetic.httpserver import serve_folder, write_url_list
    from curate.shards import iter_shard

    pool, out = small_world.path / "pool", tmp_path / "out"
    with serve_folder(pool) as base:
        urls, _ = write_url_list(pool, base, tmp_path)
        # 1,200 URLs (the pool's 400, three times) in 4 blocks of 300 (the build's blocks hold 1,000)
        pl.concat([pl.read_parquet(urls).select("url", "caption")] * 3).write_parquet(tmp_path / "u.parquet")
        code = INTERRUPTIBLE.format(repo=str(Path(__file__).resolve().parents[2]), urls=str(tmp_path / "u.parquet"),
                                    out=str(out), block=300)
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        t0 = time.time()
        while not list(out.glob("*_stats.json")) and p.poll() is None and time.time() - t0 < 120:
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)
        t1 = time.time()
        _, err = p.communicate(timeout=60)
        assert p.returncode != 0 and time.time() - t1 < 15, err[-2000:]
        assert "PoolWorker" not in err and err.count("KeyboardInterrupt") == 1, err[-3000:]  # the parent's only
        kept = {s.name: s.stat().st_mtime_ns for s in out.glob("*.tar") if (out / f"{s.stem}_stats.json").exists()}
        assert 1 <= len(kept) < 4
        shards = download_urls(tmp_path / "u.parquet", out, image_size=64, processes=1, threads=8, block_size=300)
    assert len(shards) == 4
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # not downloaded again
    keys = [s["__key__"] for tar in shards for s in iter_shard(tar, exts=())]
    assert len(keys) == len(set(keys)) == 1200


# --- the build's steps: what a changed input redoes, one step on its own -------------------------
def _small_config(world, captions: Path, model: str, out: Path):
    from build_helpers import RELAXED_FILTERS, SMALL

    from builders.imagenet_ao.config import BuildConfig

    wj = str(world.path / "world.json")
    return BuildConfig(out=str(out), objects=wj, attributes=wj, captions=[str(captions)], generator="demo",
                       model=model, **{**RELAXED_FILTERS, **SMALL})


def _ran(res) -> dict[str, tuple[int, int]]:
    """(tasks done, tasks skipped) per stage of a build's summary."""
    return {s.name: (s.done, s.skipped) for s in res.stages}


def test_each_build_step_runs_on_its_own_and_changed_captions_redo_what_depends_on_them(tmp_path, small_world,
                                                                                       tiny_mini_spec):
    """One first build, then: a rerun skips every step; each step forgotten and run alone is redone with
    the same bytes; a changed caption file redoes the rarity scan and what depends on it only (two
    tests that made the same first build, merged)."""
    import shutil

    from builders.imagenet_ao.pipeline import STEPS, BuildContext, build, fingerprint_config
    from curate.executor import LocalExecutor
    from curate.ledger import Ledger, run_step

    captions = tmp_path / "captions"
    shutil.copytree(small_world.path / "captions", captions)
    out = tmp_path / "ao"
    cfg = _small_config(small_world, captions, tiny_mini_spec, out)
    first = build(cfg, workers=1)
    names = [s.name for s in STEPS]
    assert all(_ran(first)[n] == (1, 0) for n in names)  # the demo world knows its truth: every step ran
    files = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and ".curate" not in p.parts}

    again = _ran(build(cfg, workers=1))
    assert all(again[n] == (0, 1) for n in names), again  # nothing changed: every step skipped
    assert "rarity scan" not in again  # (its step was skipped, so it was not even listed)

    # each step on its own
    def fresh() -> BuildContext:  # as in a new process: the earlier steps' stats come from their markers
        return BuildContext(out, cfg=cfg, ex=LocalExecutor(1), run_cfg=fingerprint_config(cfg))

    for step in STEPS:
        assert run_step(step, fresh()).summary.skipped == 1, step.name
    for step in reversed(STEPS):  # forget each step, then run it alone: it is redone, the same bytes come out
        Ledger(out, step.name).reset()
        ctx = fresh()
        assert run_step(step, ctx).summary.done == 1, step.name
        assert [s.name for s in ctx.summaries][-1] == step.name
        got = {p: p.read_bytes() for p in files}
        assert got == files, [str(p) for p in files if got[p] != files[p]]

    # a caption that names no attribute and no object: the counts stay, the number of captions grows
    scanned = sorted(captions.glob("*.parquet"))
    df = pl.read_parquet(scanned[0])
    pl.concat([df, df.head(1).with_columns(pl.lit("nothing to see here").alias("caption"))]).write_parquet(scanned[0])
    third = build(cfg, workers=1)
    ran = _ran(third)
    assert ran["rarity scan"] == (1, len(scanned) - 1)  # only the file that changed is scanned again
    assert ran["pairs"] == (1, 0) and ran["targets"] == (1, 0)  # they read the captions' counts
    for n in ("candidates", "filters", "output", "truth"):  # the targets came out the same: all kept
        assert ran[n] == (0, 1), (n, ran)
    assert ran["card"] == (1, 0)  # the card reports the number of captions scanned
    assert third.counts["captions_scanned"] == first.counts["captions_scanned"] + 1
    for p, data in files.items():  # the file's counts and the card changed, nothing else
        if p.name not in ("dataset.json", "README.md") and p.parent.name != "parts":
            assert p.read_bytes() == data, p


def test_a_changed_pool_image_is_packed_embedded_and_filtered_again(tmp_path, small_world, tiny_mini_spec):
    """A pool image replaced under the same name: the rerun repacks its chunk, embeds that shard again
    and redoes the steps after the rarity scan; the dataset equals a fresh build of the new pool (the
    old code kept the old shard's embeddings: pack and embed markers were done by existence)."""
    import dataclasses
    import shutil

    from builders.imagenet_ao.pipeline import KEPT_EMB, build

    world_pool = sorted((small_world.path / "pool" / "images").glob("*.jpg"))
    pool = tmp_path / "pool"
    pool.mkdir()
    for p in world_pool[:60]:
        shutil.copy(p, pool / p.name)
    cfg = dataclasses.replace(_small_config(small_world, small_world.path / "captions", tiny_mini_spec, tmp_path / "a"),
                              pool=str(pool), generator=None, retrieve_k=60, images_per_pair=60)
    build(cfg, workers=1)
    m = pl.read_parquet(tmp_path / "a" / "manifest.parquet")
    changed = pool / f"{m['src_key'][0]}.jpg"  # an image of the dataset
    changed.write_bytes(world_pool[60].read_bytes())

    ran = _ran(build(cfg, workers=1))
    assert ran["pairs"] == ran["targets"] == (0, 1)
    assert ran["candidates"] == ran["filters"] == ran["output"] == (1, 0)
    embed_markers = list((tmp_path / "a" / "pool" / "embeddings" / ".curate" / "ledger" / "embed").glob("*.json"))
    assert embed_markers and all(json.loads(p.read_text()).get("inputs") for p in embed_markers)

    fresh = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    build(fresh, workers=1)
    a, b = tmp_path / "a", tmp_path / "b"
    assert np.array_equal(np.load(a / KEPT_EMB), np.load(b / KEPT_EMB))
    for rel in ["embeddings/img_emb/img_emb_0.npy", *(str(p.relative_to(b)) for p in sorted((b / "shards").glob("*.tar")))]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    cols = ["key", "attr", "obj", "split", "score_comp", "src_key"]
    assert pl.read_parquet(a / "manifest.parquet").select(cols).equals(pl.read_parquet(b / "manifest.parquet").select(cols))
