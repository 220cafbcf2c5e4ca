"""Issue 25 point 2, end to end: commands whose inputs and outputs are all in a bucket of a real
S3-compatible server (moto's, on 127.0.0.1; tests/s3_server.py) give the bytes of the local run,
a SIGKILLed build resumes from the bucket on another machine (an empty mirror), and the readers our
outputs promise (webdataset, ``datasets.load_dataset``) read them from the bucket through fsspec.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3_server import start_server

pytestmark = [pytest.mark.slow, pytest.mark.system]
CURATE = str(Path(sys.executable).with_name("curate"))
# files that name where the run read its inputs (a local or a mirror path), not only what it made
PATH_RECORDS = ("dataset.json", "README.md", "stats.json", "embeddings.json", "triplets.json", "index.json")
PATH_TABLES = ("candidates.parquet", "filters/decode/", "filters/kept.parquet", "embeddings/metadata/",
               "metadata/", "index/keys.parquet")


@pytest.fixture(scope="module")
def s3():
    srv = start_server()
    yield srv
    srv.stop()


def run(s3, args: list[str], cache: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    r = subprocess.run([CURATE, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **s3.env(CURATE_CACHE=str(cache), CURATE_NO_PROGRESS="1"), **env})
    return r


def upload(s3, bucket: str, src: Path, prefix: str) -> None:
    c = s3.client()
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for p in files:
        rel = p.name if src.is_file() else p.relative_to(src).as_posix()
        c.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=p.read_bytes())


def bucket_files(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    return {k[len(prefix) + 1:]: v for k, v in s3.keys(bucket, prefix + "/").items()}


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def made(files: dict[str, bytes]) -> dict[str, bytes]:
    """The outputs to compare byte for byte: not curate's bookkeeping, not the files that record paths."""
    return {k: v for k, v in files.items()
            if ".curate" not in k.split("/") and k.rsplit("/", 1)[-1] not in PATH_RECORDS and not k.endswith(".png")
            and not any(k.startswith(t) or f"/{t}" in f"/{k}" for t in PATH_TABLES)}


@pytest.fixture(scope="module")
def world_bucket(s3, small_world):
    """The small demo world's inputs (vocabulary, captions, image pool) in a bucket."""
    bucket = s3.new_bucket("world")
    upload(s3, bucket, small_world.path, "world")
    return bucket


def build_args(small_build, world: str) -> list[str]:
    """small_build's arguments with the world's files replaced by their URLs (the config stays local)."""
    args = list(small_build.args)
    swap = {"--objects": f"{world}/world.json", "--attributes": f"{world}/world.json",
            "--captions": f"{world}/captions", "--pool": f"{world}/pool/images"}
    for i, a in enumerate(args[:-1]):
        if a in swap:
            args[i + 1] = swap[a]
    return args


@pytest.fixture(scope="module")
def s3_build(s3, world_bucket, small_build, tmp_path_factory):
    """``curate build imagenet-ao`` with pool, captions, vocabulary and output all in buckets."""
    out_bucket = s3.new_bucket("out")
    args = build_args(small_build, f"s3://{world_bucket}/world") + ["--out", f"s3://{out_bucket}/ds"]
    r = run(s3, args, tmp_path_factory.mktemp("cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out_bucket


def test_build_in_buckets_equals_the_local_build(s3, s3_build, small_build):
    got = bucket_files(s3, s3_build, "ds")
    ref = local_files(small_build.out)
    assert set(made(got)) == set(made(ref))
    assert made(got) == made(ref)
    assert any(k.startswith("shards/") for k in got) and "manifest.parquet" in got
    run_json = json.loads(got[".curate/run.json"])
    assert run_json["config"]["pool"].startswith("s3://")
    assert ".curate/remote-lock.json" not in got


def test_sigkill_mid_build_and_rerun_elsewhere_loses_nothing(s3, world_bucket, small_build, tmp_path):
    bucket = s3.new_bucket("kill")
    args = build_args(small_build, f"s3://{world_bucket}/world") + ["--out", f"s3://{bucket}/ds"]
    env = {**os.environ, **s3.env(CURATE_CACHE=str(tmp_path / "first"), CURATE_NO_PROGRESS="1",
                                  CURATE_SYNC_SECONDS="0.5")}
    proc = subprocess.Popen([CURATE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # kill once a few steps are safely in the bucket
        if sum(k.startswith("ds/.curate/ledger/") for k in s3.keys(bucket, "ds/.curate/")) >= 3:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # another machine of the same image: the same CURATE_CACHE path, empty; everything comes from the bucket
    shutil.rmtree(tmp_path / "first")
    r = run(s3, args, tmp_path / "first")
    assert r.returncode == 0, r.stderr[-3000:]
    assert made(bucket_files(s3, bucket, "ds")) == made(local_files(small_build.out))


def test_embed_reads_and_writes_buckets(s3, s3_build, small_build_embeddings, tmp_path):
    args = list(small_build_embeddings.args)
    args[1] = f"s3://{s3_build}/ds/pool/shards"
    r = run(s3, [*args, "--out", f"s3://{s3_build}/emb"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = bucket_files(s3, s3_build, "emb")
    assert made(got) == made(local_files(small_build_embeddings.out)) and any(k.endswith(".npy") for k in got)


@pytest.fixture(scope="module")
def s3_triplets(s3, s3_build, small_build, tmp_path_factory):
    """``curate triplets`` from the bucket's dataset into the bucket, and the same run on the local build."""
    opts = ["--splits", "train=0.5,val=0.25,test=0.25", "--split-by", "image", "--max-per-pair", "3"]
    r = run(s3, ["triplets", f"s3://{s3_build}/ds", "--out", f"s3://{s3_build}/trip", *opts],
            tmp_path_factory.mktemp("cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    ref = tmp_path_factory.mktemp("ref-trip") / "trip"
    r = run(s3, ["triplets", str(small_build.out), "--out", str(ref), *opts], tmp_path_factory.mktemp("cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    return ref


def test_triplets_read_and_write_buckets(s3, s3_build, s3_triplets):
    got = bucket_files(s3, s3_build, "trip")
    assert "triplets.parquet" in got
    assert made(got) == made(local_files(s3_triplets))


def test_train_cir_reads_and_writes_buckets(s3, s3_build, s3_triplets, tiny_mini_spec, tmp_path):
    from training.models.mini_clip import save_random_mini

    # a backbone other than the dataset's model (another seed of its mini-CLIP), so the images are read
    # from the bucket's shards and encoded, not taken from the dataset's embeddings
    vocab = (Path(tiny_mini_spec.removeprefix("mini:")) / "vocab.json").read_text()
    backbone = save_random_mini(tmp_path / "other-mini", [" ".join(json.loads(vocab))], seed=1)
    r = run(s3, ["train", "cir", "--triplets", f"s3://{s3_build}/trip", "--out", f"s3://{s3_build}/cir-run",
                 "--backbone", backbone, "--epochs", "2", "--batch-size", "32", "--device", "cpu"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = bucket_files(s3, s3_build, "cir-run")
    assert {"run.json", "metrics.jsonl", "best/model.safetensors", "report.md"} <= set(got)
    assert [json.loads(x)["epoch"] for x in got["metrics.jsonl"].decode().splitlines()] == [1, 2]


def test_train_trident_reads_and_writes_buckets(s3, s3_build, tiny_mini_spec, tmp_path):
    import numpy as np

    from curate.manifest import read_manifest

    # word vectors for the dataset's vocabulary, from a local file: local and remote paths in one command
    m = read_manifest(_mirror_of(s3, s3_build))
    names = sorted({w for c in ("attr", "obj") for v in m[c].to_list() for w in str(v).split()})
    rng = np.random.default_rng(0)
    words = tmp_path / "vectors.txt"
    words.write_text("".join(f"{w} " + " ".join(f"{x:.4f}" for x in rng.normal(size=8)) + "\n" for w in names))
    r = run(s3, ["train", "trident", "--data", f"s3://{s3_build}/ds", "--out", f"s3://{s3_build}/trident-run",
                 "--backbone", tiny_mini_spec, "--word-embeddings", f"glove:{words}", "--epochs", "1",
                 "--batch-size", "4", "--device", "cpu", "--threads", "1"], tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    got = bucket_files(s3, s3_build, "trident-run")
    assert {"metrics.jsonl", "best/model.safetensors", "report.md", "results.json"} <= set(got), sorted(got)


def _mirror_of(s3, bucket: str) -> Path:
    """The dataset's manifest, fetched from the bucket into a local file."""
    import tempfile

    d = Path(tempfile.mkdtemp())
    (d / "manifest.parquet").write_bytes(s3.keys(bucket, "ds/manifest.parquet")["ds/manifest.parquet"])
    return d


def test_webdataset_and_datasets_read_the_bucket(s3, s3_build, small_build, monkeypatch, tmp_path):
    """Both readers open our shards in the bucket through fsspec (s3fs), endpoint and keys from the environment."""
    import datasets
    import fsspec
    import polars as pl
    import s3fs
    import webdataset as wds

    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # it refuses every remote URL, ours on 127.0.0.1 too
    s3fs.S3FileSystem.clear_instance_cache()
    m = pl.read_parquet(io.BytesIO(s3.keys(s3_build, "ds/manifest.parquet")["ds/manifest.parquet"]))
    train = sorted(f"s3://{s3_build}/ds/shards/{s}" for s in m.filter(pl.col("split") == "train")["shard"].unique())
    assert train
    monkeypatch.setitem(importlib.import_module("webdataset.gopen").gopen_schemes, "s3", lambda url, mode="rb", bufsize=8192: fsspec.open(url, mode).open())
    keys = [s["__key__"] for s in wds.WebDataset(train, shardshuffle=False)]
    assert sorted(keys) == sorted(m.filter(pl.col("split") == "train")["key"].to_list())
    ds = datasets.load_dataset("webdataset", data_files={"train": train}, split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(ds["__key__"]) == sorted(keys) and ds[0]["jpg"].size[0] > 0


def test_index_and_search_read_and_write_buckets(s3, s3_build, small_build_embeddings, tmp_path):
    """``curate index`` of the bucket's embeddings into the bucket, then ``curate search`` of that index: the
    same hits as on the local folders."""
    upload(s3, s3_build, small_build_embeddings.out, "emb-for-index")
    r = run(s3, ["index", f"s3://{s3_build}/emb-for-index", "--out", f"s3://{s3_build}/idx"], tmp_path / "c1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert {"index.faiss", "keys.parquet", "index.json"} <= set(bucket_files(s3, s3_build, "idx"))
    r = run(s3, ["index", str(small_build_embeddings.out), "--out", str(tmp_path / "idx")], tmp_path / "c2")
    assert r.returncode == 0, r.stderr[-3000:]
    hits = []
    for where in (f"s3://{s3_build}/idx", str(tmp_path / "idx")):
        r = run(s3, ["search", where, "--text", "a photo of a red square", "-k", "5", "--json"], tmp_path / "c3")
        assert r.returncode == 0, r.stderr[-3000:]
        hits.append([json.loads(x)["key"] for x in r.stdout.splitlines() if x.startswith("{")])
    assert hits[0] == hits[1] and len(hits[0]) == 5
