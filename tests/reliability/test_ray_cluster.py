"""A real local Ray cluster (a head and a worker node started with the Ray CLI on 127.0.0.1): the build and
embed stages give the same bytes as the local executor, and losing the worker node's raylet mid-run
loses nothing once the command is rerun."""

from __future__ import annotations

import hashlib
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
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(not (BIN / "ray").exists(), reason="the ray extra is not installed")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raylets() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet/raylet"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.fixture(scope="module")
def cluster():
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
           "RAY_AUTH_MODE": "disabled"}  # a loopback-only test cluster; real clusters should use token auth
    port = _free_port()
    common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                   check=True, capture_output=True, env=env, timeout=180)
    head = _raylets()
    subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", *common], check=True, capture_output=True,
                   env=env, timeout=180)
    worker = _raylets() - head
    try:
        yield f"127.0.0.1:{port}", worker, env
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


def test_build_and_embed_on_a_ray_cluster_match_the_local_executor(cluster, tmp_path, small_build,
                                                                   small_build_embeddings):
    """The session's local build and embed (conftest.py; the kill tests compare with them too) rerun on
    the cluster give the same bytes."""
    address, _, env = cluster
    ray_args = ["--executor", "ray", "--address", address]
    _curate([*small_build.args, *ray_args, "--out", tmp_path / "ray" / "out"], env)
    local, ray = _digests(small_build.out), _digests(tmp_path / "ray" / "out")
    assert local == ray and any(k.endswith(".tar") for k in local)
    _curate([*small_build_embeddings.args, *ray_args, "--out", tmp_path / "emb-ray"], env)
    assert _digests(small_build_embeddings.out) == _digests(tmp_path / "emb-ray")


def test_losing_the_worker_node_mid_run_loses_nothing(cluster, tmp_path, small_world, tiny_clip_spec):
    address, worker, env = cluster
    shards = small_world.path / "train"
    ref = tmp_path / "ref"
    _curate(["embed", shards, "--model", tiny_clip_spec, "--out", ref], env)
    out = tmp_path / "out"
    p = subprocess.Popen([CURATE, "embed", str(shards), "--model", tiny_clip_spec, "--executor", "ray",
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
    _curate(["embed", shards, "--model", tiny_clip_spec, "--executor", "ray", "--address", address,
             "--out", out], env)
    assert _digests(out) == _digests(ref)
    assert not [q for q in out.rglob("*") if ".tmp-" in q.name]
    shutil.rmtree(out)
