"""A real local Ray cluster (a head and a worker node started with the Ray CLI on 127.0.0.1): the build and
embed stages, their outputs in a bucket of a local S3-compatible server, give the same bytes as the local
executor; the pool download (served over HTTP on 127.0.0.1) spreads over the nodes; losing a node's raylet
mid-run loses nothing once the command is rerun."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
CURATE, RAY = str(BIN / "curate"), str(BIN / "ray")
pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(900),
              pytest.mark.skipif(not (BIN / "ray").exists(), reason="the ray extra is not installed")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raylets() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet/raylet"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.fixture(scope="module")
def s3():
    """A local S3-compatible server (tests/s3_server.py); every node's environment has its credentials, as a
    real cluster's nodes have theirs."""
    from s3_server import start_server

    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """A head node on this machine's files and a worker node that sees a disk of its own at the object-storage
    mirror's path (CURATE_CACHE/remote, bind-mounted in a mount namespace of its own: `unshare`), as a node
    of a real cluster with the same CURATE_CACHE path and no shared folder: its tasks pull what they read
    and upload what they write (curate.storage.pull_for_task, push_task_outputs)."""
    env = {**os.environ, **s3.env(), "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
           "RAY_AUTH_MODE": "disabled",  # a loopback-only test cluster; real clusters should use token auth
           # the GCS declares a node dead after 3 missed 1 s health checks (Ray's default: 5 missed 3 s
           # checks, each waited on up to 10 s), so the lost-node tests do not wait on Ray's timeouts
           "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_timeout_ms": "2000", "RAY_health_check_failure_threshold": "3"}
    port = _free_port()
    common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                   check=True, capture_output=True, env=env, timeout=180)
    head = _raylets()
    try:  # the cluster is stopped even when the worker node fails to start
        from curate.storage import mirror_root

        mirror, own = mirror_root(), tmp_path_factory.mktemp("worker-node-disk")
        mirror.mkdir(parents=True, exist_ok=True)
        bind = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(own), str(mirror)]
        if subprocess.run([*bind, "true"], capture_output=True).returncode != 0:  # needs root (CAP_SYS_ADMIN)
            bind, own = [], None
        subprocess.run([*bind, RAY, "start", "--address", f"127.0.0.1:{port}", *common], check=True,
                       capture_output=True, env=env, timeout=180)
        worker = _raylets() - head
        yield f"127.0.0.1:{port}", worker, env, own
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".tar", ".npy") or p.name == "manifest.parquet"}


def _curate(args, env, check=True):
    r = subprocess.run([CURATE, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _bucket_digests(s3, bucket: str, prefix: str) -> dict[str, str]:
    """``_digests`` of what the command wrote under ``s3://BUCKET/PREFIX/``."""
    got = {k[len(prefix) + 1:]: v for k, v in s3.keys(bucket, prefix + "/").items()}
    return {k: hashlib.sha256(v).hexdigest() for k, v in sorted(got.items())
            if Path(k).suffix in (".tar", ".npy") or Path(k).name == "manifest.parquet"}


def test_build_and_embed_on_a_ray_cluster_into_a_bucket_match_the_local_executor(cluster, s3, tmp_path, small_world,
                                                                                  small_build, small_build_embeddings):
    """On the two-node cluster, with their outputs in a bucket of a real S3-compatible server
    (tests/s3_server.py): the small build with its pool downloaded from a URL list served over HTTP on
    127.0.0.1 gives the bytes of the same build on the local executor (the pool's shards included), and
    the session's embed (conftest.py) the bytes of its local run. The worker node has a CURATE_CACHE of its
    own (no shared folder): its tasks pull what they read into their own mirror and upload what they write,
    and the driver fetches their uploads before marking them done."""
    from builders.synthetic.httpserver import serve_folder, write_url_list

    address, _, env, worker_disk = cluster
    pool = small_world.path / "pool"
    bucket = s3.new_bucket("ray")
    env = {**env, "CURATE_NO_PROGRESS": "1"}
    ray_args = ["--executor", "ray", "--address", address]
    with serve_folder(pool) as base, _head_cpu_held(address, env):  # every task of the commands on the worker
        urls, _ = write_url_list(pool, base, tmp_path)
        args = [str(urls) if a == str(pool / "images") else a for a in small_build.args]
        assert str(urls) in args
        _curate([*args, "--out", tmp_path / "local"], env)  # the local executor (one server: the same URLs)
        _curate([*args, *ray_args, "--out", f"s3://{bucket}/ds"], env)
        _curate([*small_build_embeddings.args, *ray_args, "--out", f"s3://{bucket}/emb"], env)
    local, ray = _digests(tmp_path / "local"), _bucket_digests(s3, bucket, "ds")
    assert local == ray and "pool/shards/00000.tar" in local and "manifest.parquet" in local
    emb = _digests(small_build_embeddings.out)
    assert emb == _bucket_digests(s3, bucket, "emb") and any(k.endswith(".npy") for k in emb)
    # the tasks ran on the worker's own disk: what they wrote there reached the bucket (and the driver)
    if worker_disk is None:
        pytest.skip("no mount namespace here (unshare needs root): the worker shared the driver's mirror")
    own = worker_disk / "s3" / bucket
    assert (own / "ds" / "pool" / "shards" / "00000.tar").is_file() and any((own / "emb").rglob("*.npy"))


@contextlib.contextmanager
def _head_cpu_held(address: str, env: dict[str, str]):
    """The head node's one CPU taken by an idle actor while the block runs, so Ray places every task of a
    command on the worker node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    old = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update({k: env[k] for k in old})
    ray.init(address=address, log_to_driver=False)
    try:
        head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])

        @ray.remote(num_cpus=1)
        class Hold:
            def ready(self) -> bool:
                return True

        holder = Hold.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
        assert ray.get(holder.ready.remote(), timeout=120)
        yield
        ray.kill(holder)
    finally:
        ray.shutdown()
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


DOWNLOAD = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from builders.imagenet_ao.pool import download_urls
from curate.executor import get_executor
ex = get_executor({executor!r}, workers=2, address={address!r})  # what --executor ray --address gives a build
download_urls(Path({urls!r}), Path({out!r}), image_size=64, processes=2, threads=4, executor=ex, block_size={block})
"""


BLOCK, URLS = 12, 96  # 8 blocks of 12 URLs


def _download(urls: Path, out: Path, env, executor="local", address=None, wait=True):
    code = DOWNLOAD.format(repo=str(Path(__file__).resolve().parents[2]), executor=executor, address=address,
                           urls=str(urls), out=str(out), block=BLOCK)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=env)
    if wait:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return p


def _pool_content(out: Path) -> dict:
    """Every member of every block's shard (the URL's port taken out: each test serves on a new one)."""
    import re

    from curate.shards import iter_shard

    return {(t.name, s["__key__"], ext): hashlib.sha256(re.sub(rb"127\.0\.0\.1:\d+", b"HOST", v)).hexdigest()
            for t in sorted(out.glob("*.tar")) for s in iter_shard(t) for ext, v in s.items() if not ext.startswith("__")}


def _block_markers(out: Path) -> dict[str, dict]:
    return {m.stem: json.loads(m.read_text()) for m in sorted((out / ".curate/ledger/download_pool").glob("*.json"))}


def test_pool_download_spreads_over_the_nodes_and_a_lost_node_costs_only_its_blocks(cluster, tmp_path, small_world):
    """The pool download's blocks (8 of 12 URLs, served over HTTP on 127.0.0.1) run on the cluster's nodes; a
    node lost mid-download (with the command) leaves its finished blocks, the rerun downloads only the others,
    and the result is the local run's samples, its blocks made on more than one node."""
    import polars as pl

    from builders.synthetic.httpserver import serve_folder, write_url_list

    address, _, env, _ = cluster
    pool = small_world.path / "pool"
    with serve_folder(pool) as base:
        urls, _ = write_url_list(pool, base, tmp_path)
        pl.read_parquet(urls).select("url", "caption").head(URLS).write_parquet(tmp_path / "u.parquet")
        # a third node joins while the local reference download (which does not use Ray) runs; it goes
        # away mid-download with the command that used it
        before = _raylets()
        join = subprocess.Popen([RAY, "start", "--address", address, "--num-cpus", "1", "--disable-usage-stats",
                                 "--node-ip-address", "127.0.0.1"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
        _download(tmp_path / "u.parquet", tmp_path / "local", env)
        ref = _pool_content(tmp_path / "local")
        assert len(ref) == URLS * 3  # jpg, json, txt
        _, err = join.communicate(timeout=180)
        assert join.returncode == 0, err[-3000:]
        extra, out = _raylets() - before, tmp_path / "lost"
        p = _download(tmp_path / "u.parquet", out, env, "ray", address, wait=False)
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and len(_block_markers(out) if out.exists() else {}) < 2:
            time.sleep(0.02)
        for pid in [*extra, p.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.wait(timeout=60)
        kept = {n: (out / f"{n}.tar").stat().st_mtime_ns for n in _block_markers(out)}
        assert 2 <= len(kept) < 8, kept
        _download(tmp_path / "u.parquet", out, env, "ray", address)
    assert {n: (out / f"{n}.tar").stat().st_mtime_ns for n in kept} == kept  # finished blocks not downloaded again
    blocks = _block_markers(out)
    assert len(blocks) == 8 and _pool_content(out) == ref
    # the blocks ran on several nodes (a block finished but not yet marked when the kill came is adopted by
    # the rerun: its marker names no node)
    assert len({b["stats"].get("node") for b in blocks.values()} - {None}) >= 2, blocks


def test_losing_the_worker_node_mid_run_loses_nothing(cluster, tmp_path, small_world, tiny_mini_spec):
    """The tiny mini-CLIP (each Ray worker imports only torch for it, not open_clip's libraries)."""
    address, worker, env, _ = cluster
    shards = small_world.path / "train"
    ref = tmp_path / "ref"
    # the local reference embed runs while the cluster run below starts, is cut and rerun (it uses no Ray)
    local = subprocess.Popen([CURATE, "embed", str(shards), "--model", tiny_mini_spec, "--out", str(ref)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    out = tmp_path / "out"
    p = subprocess.Popen([CURATE, "embed", str(shards), "--model", tiny_mini_spec, "--executor", "ray",
                          "--address", address, "--out", str(out)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env)
    ledger = out / ".curate" / "ledger" / "embed"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not (ledger.exists() and any(ledger.glob("*.json"))):
        time.sleep(0.05)
    for pid in worker:  # the worker node goes away mid-run
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait(timeout=600)
    # whatever that run did, rerunning (the head still has a CPU) finishes the job with nothing lost
    _curate(["embed", shards, "--model", tiny_mini_spec, "--executor", "ray", "--address", address,
             "--out", out], env)
    _, err = local.communicate(timeout=600)
    assert local.returncode == 0, err[-3000:]
    assert _digests(out) == _digests(ref)
    assert not [q for q in out.rglob("*") if ".tmp-" in q.name]
    shutil.rmtree(out)
