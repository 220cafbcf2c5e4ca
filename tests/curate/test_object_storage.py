"""Object storage (issue 25): commands read and write s3:// through curate/storage.py, against a real
S3-compatible server (moto in server mode, HTTP on 127.0.0.1, authentication on; tests/s3_server.py).

gs:// goes through the same code (fsspec.url_to_fs -> gcsfs); it is tested end to end against a local GCS
server in test_gcs.py (gcp-storage-emulator on 127.0.0.1: read/write/find, the output lock's create-only
write, the CLI bucket to bucket equal to a local run and resumed elsewhere, a locked output, a missing bucket).
Here, only what needs no server: the scheme resolves to gcsfs, the mirror path, the URL mapping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3_server import start_server
from storage_helpers import CURATE, curate, local_files, make_shards, outputs, reshard_reference

from curate import storage
from curate.errors import CurateError


@pytest.fixture(scope="module")
def s3():
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture
def s3env(s3, tmp_path, monkeypatch):
    """The standard environment pointing at the test server; a fresh mirror cache per test."""
    import s3fs

    for k, v in s3.env(CURATE_CACHE=str(tmp_path / "cache"), CURATE_NO_PROGRESS="1").items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    storage._State._open.clear()
    yield s3
    s3fs.S3FileSystem.clear_instance_cache()
    storage._State._open.clear()


def upload(s3, bucket: str, folder: Path, prefix: str) -> None:
    c = s3.client()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            c.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(folder).as_posix()}", Body=p.read_bytes())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Input shards and the output of ``curate shards reshard`` on local folders, made once for the file."""
    return reshard_reference(tmp_path_factory.mktemp("reference"))


# -- the storage layer ---------------------------------------------------------------------------
def test_url_helpers_and_gs_resolve_without_a_server(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path))
    # fsspec's own config, from the environment: anonymous, so gcsfs probes no credentials service (fsspec
    # reads FSSPEC_GS_* when imported; when an earlier test imported it, set its config too, else the probe of
    # the metadata server takes ~15 s before gcsfs falls back to anonymous)
    import fsspec.config

    monkeypatch.setenv("FSSPEC_GS_TOKEN", "anon")
    monkeypatch.setitem(fsspec.config.conf, "gs", {**fsspec.config.conf.get("gs", {}), "token": "anon"})
    assert storage.is_remote("s3://b/k") and storage.is_remote("gs://b/k")
    assert not storage.is_remote("/data/x") and not storage.is_remote("http://127.0.0.1:8080/v1")
    local = storage.mirror_path("gs://bucket/a/b")
    assert local == (tmp_path / "remote" / "gs" / "bucket" / "a" / "b").resolve()
    assert storage.to_url(local / "c.tar") == "gs://bucket/a/b/c.tar"
    assert storage.urls_in({"pool": str(local), "n": 3, "x": ["/tmp/y"]}) == {"pool": "gs://bucket/a/b", "n": 3,
                                                                             "x": ["/tmp/y"]}
    fs, path = storage.filesystem("gs://bucket/a/b")
    assert type(fs).__name__ == "GCSFileSystem" and path == "bucket/a/b" and fs.credentials.method == "anon"
    with pytest.raises(CurateError, match="no storage library handles the URL scheme 'xyz'"):
        storage.filesystem("xyz://bucket/a")


def test_write_read_exists_on_s3(s3env):
    bucket = s3env.new_bucket()
    url = f"s3://{bucket}/a/b.json"
    assert not storage.exists(url)
    storage.write_bytes(url, b'{"x": 1}\n')
    assert storage.exists(url)
    with storage.open_read(url) as f:
        assert f.read() == b'{"x": 1}\n'
    assert list(storage.find(f"s3://{bucket}/a")) == [f"{bucket}/a/b.json"]
    assert list(storage.find(f"s3://{bucket}/a/*.json")) == [f"{bucket}/a/b.json"]


def test_missing_bucket_and_wrong_credentials_are_clear(s3env, monkeypatch):
    with pytest.raises(CurateError, match="bucket 'no-such-bucket' does not exist"):
        storage.check_bucket("s3://no-such-bucket/x")
    bucket = s3env.new_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(CurateError, match="access denied.*AWS_ACCESS_KEY_ID"):
        storage.check_bucket(f"s3://{bucket}/x")


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(s3env):
    bucket = s3env.new_bucket()
    fs, prefix = storage.filesystem(f"s3://{bucket}/out")
    lock = storage.RemoteLock(fs, prefix, f"s3://{bucket}/out")
    lock.acquire()
    second = storage.RemoteLock(fs, prefix, f"s3://{bucket}/out")
    with pytest.raises(CurateError, match=rf"another curate run \(pid {os.getpid()} on .*is writing this output"):
        second.acquire()
    lock.release()
    second.acquire()  # free again
    # a lock left by a killed run on this host (its pid is gone) is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    second.body["pid"] = int(dead.stdout)
    second._put(create=False)
    third = storage.RemoteLock(fs, prefix, f"s3://{bucket}/out")
    third.acquire()
    assert json.loads(fs.cat_file(third.key))["pid"] == os.getpid()
    third.release()


# -- a command on buckets ----------------------------------------------------------------------------
def test_reshard_bucket_to_bucket_equals_local_and_resumes_elsewhere(s3env, reference, tmp_path):
    src, ref = reference
    bucket = s3env.new_bucket()
    upload(s3env, bucket, src, "in")
    out = f"s3://{bucket}/out"
    r = curate(["shards", "reshard", f"s3://{bucket}/in", "--out", out, "--maxcount", "3", "-w", "1"])
    assert r.returncode == 0, r.stderr
    got = s3env.keys(bucket, "out/")
    files = {k[len("out/"):]: v for k, v in got.items() if "/.curate/" not in k and not k.startswith("out/.curate")}
    assert outputs(files) == outputs(ref) and outputs(ref)
    assert not any(storage.TMP_MARK in k for k in got)
    # done markers and the config fingerprint live beside the outputs; the config names the URLs
    run = json.loads(got["out/.curate/run.json"])
    assert run["config"]["inputs"][0].startswith(f"s3://{bucket}/in/")
    assert any(k.startswith("out/.curate/ledger/") for k in got)
    assert "out/.curate/remote-lock.json" not in got  # released
    # another machine (an empty mirror) resumes from the bucket: everything is done, nothing rewritten
    stamps = {o["Key"]: o["LastModified"] for o in s3env.client().list_objects_v2(Bucket=bucket, Prefix="out/shards")["Contents"]}
    r = curate(["shards", "reshard", f"s3://{bucket}/in", "--out", out, "--maxcount", "3", "-w", "1"],
               CURATE_CACHE=str(tmp_path / "other-machine"))
    assert r.returncode == 0, r.stderr
    after = {o["Key"]: o["LastModified"] for o in s3env.client().list_objects_v2(Bucket=bucket, Prefix="out/shards")["Contents"]}
    assert after == stamps


def test_mixed_local_input_and_bucket_output(s3env, reference):
    src, ref = reference
    bucket = s3env.new_bucket()
    r = curate(["shards", "reshard", str(src), "--out", f"s3://{bucket}/out", "--maxcount", "3", "-w", "1"])
    assert r.returncode == 0, r.stderr
    got = {k[len("out/"):]: v for k, v in s3env.keys(bucket, "out/").items()}
    assert outputs(got) == outputs(ref)


def test_foreign_prefix_is_never_touched(s3env, reference):
    src, _ = reference
    bucket = s3env.new_bucket()
    s3env.client().put_object(Bucket=bucket, Key="out/theirs.txt", Body=b"someone else's")
    for extra in ([], ["--overwrite"]):
        r = curate(["shards", "reshard", str(src), "--out", f"s3://{bucket}/out", *extra])
        assert r.returncode == 2
        assert f"s3://{bucket}/out: holds 1 object(s) that curate did not write" in r.stderr
    assert s3env.keys(bucket) == {"out/theirs.txt": b"someone else's"}


def test_bad_urls_are_named(s3env, reference):
    src, _ = reference
    r = curate(["shards", "reshard", str(src), "--out", "xyz://bucket/out"])
    assert r.returncode == 2 and "no storage library handles the URL scheme 'xyz'" in r.stderr
    r = curate(["shards", "reshard", str(src), "--out", "s3://no-such-bucket/out"])
    assert r.returncode == 2 and "bucket 'no-such-bucket' does not exist" in r.stderr
    bucket = s3env.new_bucket()
    r = curate(["shards", "reshard", f"s3://{bucket}/nothing-here", "--out", f"s3://{bucket}/out"])
    assert r.returncode == 2 and f"s3://{bucket}/nothing-here" in r.stderr and "remote/s3" not in r.stderr
    r = curate(["shards", "reshard", str(src), "--out", f"s3://{bucket}/out2"], AWS_SECRET_ACCESS_KEY="wrong")
    assert r.returncode == 2 and "access denied" in r.stderr and "AWS_ACCESS_KEY_ID" in r.stderr


@pytest.mark.system
def test_server_stopping_mid_run_leaves_no_half_object_and_the_rerun_completes(s3env, tmp_path):
    """A second server over the same store stops while the run uploads; the run fails with a clear line,
    the bucket holds only whole objects, and a rerun (through the first server) completes."""
    from moto.server import ThreadedMotoServer

    src = make_shards(tmp_path / "big-in", n=8, per=6)
    ref_out = tmp_path / "ref"
    assert curate(["shards", "reshard", str(src), "--out", str(ref_out), "--maxcount", "2", "-w", "1"]).returncode == 0
    ref = local_files(ref_out)
    bucket = s3env.new_bucket()
    second = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    second.start()
    host, port = second.get_host_and_port()
    proc = subprocess.Popen([CURATE, "shards", "reshard", str(src), "--out", f"s3://{bucket}/out", "--maxcount", "2",
                             "-w", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "CURATE_SYNC_SECONDS": "0.05",
                                 "CURATE_SLOW_TASK_SECONDS": "0.3"})
    deadline = time.time() + 60
    while time.time() < deadline and not any(k.startswith("out/shards/") for k in s3env.keys(bucket)):
        time.sleep(0.05)
    second.stop()
    _, err = proc.communicate(timeout=120)
    got = s3env.keys(bucket, "out/")
    if proc.returncode != 0:
        assert "failed" in err or "error" in err
    for k, v in got.items():  # every object there is whole: byte-identical to the reference file
        rel = k[len("out/"):]
        if rel in ref and rel.startswith("shards/") and rel.endswith(".tar"):
            assert v == ref[rel], rel
        assert storage.TMP_MARK not in k
    r = curate(["shards", "reshard", str(src), "--out", f"s3://{bucket}/out", "--maxcount", "2", "-w", "1"],
               CURATE_CACHE=str(tmp_path / "rerun-cache"))
    assert r.returncode == 0, r.stderr
    files = {k[len("out/"):]: v for k, v in s3env.keys(bucket, "out/").items()}
    assert outputs(files) == outputs(ref)


def test_doctor_reports_a_bucket(s3env):
    bucket = s3env.new_bucket()
    r = curate(["doctor", "--skip-database", "--bucket", f"s3://{bucket}/data"], COLUMNS="250")
    line = next(x for x in r.stderr.splitlines() if f"bucket s3://{bucket}/data" in x)
    assert "OK" in line and "reachable" in line, r.stderr
    r = curate(["doctor", "--skip-database", "--bucket", "s3://no-such-bucket"], COLUMNS="250")
    line = next(x for x in r.stderr.splitlines() if "bucket s3://no-such-bucket" in x)
    assert r.returncode == 1 and "FAIL" in line and "does not exist" in line, r.stderr


def test_an_object_deleted_from_an_input_prefix_leaves_the_mirror_too(s3env, reference):
    src, _ = reference
    bucket = s3env.new_bucket()
    upload(s3env, bucket, src, "in")
    r = curate(["shards", "reshard", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out1", "-w", "1"])
    assert r.returncode == 0, r.stderr
    s3env.client().delete_object(Bucket=bucket, Key="in/in-000001.tar")
    r = curate(["shards", "reshard", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out2", "-w", "1"])
    assert r.returncode == 0, r.stderr
    run = json.loads(s3env.keys(bucket, "out2/.curate/run.json")["out2/.curate/run.json"])
    assert [u.rsplit("/", 1)[1] for u in run["config"]["inputs"]] == ["in-000000.tar", "in-000002.tar"]


def test_a_second_run_on_a_locked_output_is_refused(s3env, reference):
    """The output's lock object, held by a live process, stops a second run at once; its objects stay."""
    import socket

    src, _ = reference
    bucket = s3env.new_bucket()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "beat": time.time()}
    s3env.client().put_object(Bucket=bucket, Key="out/.curate/remote-lock.json", Body=json.dumps(holder).encode())
    r = curate(["shards", "reshard", str(src), "--out", f"s3://{bucket}/out"])
    assert r.returncode == 2
    assert f"another curate run (pid {os.getpid()} on {socket.gethostname()}" in r.stderr
    assert f"delete s3://{bucket}/out/.curate/remote-lock.json" in r.stderr
    assert list(s3env.keys(bucket)) == ["out/.curate/remote-lock.json"]


def test_iter_shard_and_read_manifest_take_urls(s3env, reference, tmp_path):
    """The one shard reader and the manifest reader open s3:// directly (fsspec), same samples and rows."""
    import gzip

    from curate.manifest import read_manifest
    from curate.shards import ReadReport, iter_shard

    src, ref = reference
    bucket = s3env.new_bucket()
    upload(s3env, bucket, src, "in")
    c = s3env.client()
    c.put_object(Bucket=bucket, Key="ref/manifest.parquet", Body=ref["manifest.parquet"])
    c.put_object(Bucket=bucket, Key="in/gz.tar.gz", Body=gzip.compress((src / "in-000001.tar").read_bytes()))
    local = list(iter_shard(src / "in-000000.tar"))
    rep = ReadReport("x")
    assert list(iter_shard(f"s3://{bucket}/in/in-000000.tar", rep)) == local and rep.error is None and local
    assert [s["__key__"] for s in iter_shard(f"s3://{bucket}/in/gz.tar.gz")] == [f"k1_{j}" for j in range(4)]
    import io

    import polars as pl

    assert read_manifest(f"s3://{bucket}/ref").equals(pl.read_parquet(io.BytesIO(ref["manifest.parquet"])))
    with pytest.raises(CurateError, match="no manifest.parquet"):
        read_manifest(f"s3://{bucket}/in")


def test_a_task_knows_whether_it_sees_the_commands_mirror(tmp_path, monkeypatch):
    """Executor tasks on a node that does not see the driver's mirror folder (no token there) sync themselves;
    a node whose CURATE_CACHE is another path is refused with the fix (tables record mirror paths)."""
    from curate import storage

    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    root = str(storage.mirror_root())
    assert storage.needs_task_sync(None) is False
    token = tmp_path / "cache" / "remote" / ".shared-check" / "driver-1"
    spec = {"root": root, "token": str(token), "mirrors": [["s3://b/out", True]]}
    assert storage.needs_task_sync(spec) is True  # the driver's token is not here: another machine's disk
    token.parent.mkdir(parents=True)
    token.write_text("x")
    assert storage.needs_task_sync(spec) is False  # this very folder (same machine, or one shared folder)
    with pytest.raises(CurateError, match="CURATE_CACHE to the same path on every node"):
        storage.needs_task_sync({**spec, "root": "/elsewhere/remote", "token": "/elsewhere/remote/.shared-check/t"})
    assert storage.task_sync_spec() is None  # no command with URLs running


def _write_then(outcome: str) -> str:
    """A task that writes one file under the output URL's mirror, then fails or succeeds."""
    out = storage.mirror_path(os.environ["TEST_OUT_URL"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{outcome}.bin").write_bytes(b"written by the task")
    if outcome == "fail":
        raise RuntimeError("the task failed after writing")
    return outcome


def test_a_task_away_from_the_mirror_uploads_only_when_it_succeeds(s3env, tmp_path, monkeypatch):
    """A task on a node that does not see the driver's mirror runs on its own mirror: a task that succeeds
    uploads what it wrote and names the keys; one that fails uploads nothing when it ends (its rerun redoes it)."""
    from curate.executor import _call_synced

    bucket = s3env.new_bucket()
    url = f"s3://{bucket}/out"
    monkeypatch.setenv("TEST_OUT_URL", url)
    spec = {"root": str(storage.mirror_root()), "token": str(tmp_path / "driver-elsewhere" / "token"),
            "mirrors": [[url, True]]}
    failed = _call_synced(_write_then, "fail", spec)
    assert not failed.ok and "the task failed after writing" in failed.error and not failed.uploaded
    assert s3env.keys(bucket, "out/") == {}
    done = _call_synced(_write_then, "ok", spec)
    assert done.ok and done.value == "ok" and f"{bucket}/out/ok.bin" in done.uploaded
    assert s3env.keys(bucket, "out/")["out/ok.bin"] == b"written by the task"
    # (what the failed task left in this node's mirror goes up with the next push: no marker names it, so
    # the rerun still redoes that task)
