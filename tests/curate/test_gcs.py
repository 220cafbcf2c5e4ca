"""gs:// end to end: the real ``curate`` CLI and curate/storage.py against a local GCS server
(gcp-storage-emulator on 127.0.0.1, in memory, ``ifGenerationMatch`` honoured; tests/curate/gcs_server.py),
reached through gcsfs with ``STORAGE_EMULATOR_HOST`` and anonymous credentials. The s3:// versions of
these tests are in test_object_storage.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from gcs_server import start_server
from storage_helpers import RESHARD, curate, outputs, reshard_reference

from curate import storage
from curate.errors import CurateError

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def gcs():
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture
def gsenv(gcs, tmp_path, monkeypatch):
    """The environment pointing gcsfs at the test server (anonymous); a fresh mirror cache per test."""
    import fsspec.config
    import gcsfs

    for k, v in gcs.env(CURATE_CACHE=str(tmp_path / "cache"), CURATE_NO_PROGRESS="1").items():
        monkeypatch.setenv(k, v)
    # fsspec reads FSSPEC_GS_* when it is imported (so the curate subprocesses get them); here it is already
    monkeypatch.setitem(fsspec.config.conf, "gs", {**fsspec.config.conf.get("gs", {}), "token": "anon",
                                                   "project": "test"})
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    gcsfs.GCSFileSystem.clear_instance_cache()
    storage._State._open.clear()
    yield gcs
    gcsfs.GCSFileSystem.clear_instance_cache()
    storage._State._open.clear()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Input shards and ``curate shards reshard``'s output on local folders, made once for the file."""
    return reshard_reference(tmp_path_factory.mktemp("reference"))


# -- the storage layer ---------------------------------------------------------------------------
def test_write_read_find_and_the_change_tag_on_gs(gsenv):
    bucket = gsenv.new_bucket()
    url = f"gs://{bucket}/a/b.json"
    assert not storage.exists(url)
    storage.write_bytes(url, b'{"x": 1}\n')
    assert storage.exists(url)
    with storage.open_read(url) as f:
        assert f.read() == b'{"x": 1}\n'
    assert gsenv.keys(bucket) == {"a/b.json": b'{"x": 1}\n'}
    assert list(storage.find(f"gs://{bucket}/a")) == [f"{bucket}/a/b.json"]
    assert list(storage.find(f"gs://{bucket}/a/*.json")) == [f"{bucket}/a/b.json"]
    # the mirror's change check (_tag: gcsfs reports GCS's "etag") sees a rewrite of the same size
    before = storage._tag(storage.find(url)[f"{bucket}/a/b.json"])
    storage.write_bytes(url, b'{"x": 2}\n')
    storage.filesystem(url)[0].invalidate_cache()
    after = storage._tag(storage.find(url)[f"{bucket}/a/b.json"])
    assert before[0] and after[0] and before != after and before[1] == after[1] == 9
    with pytest.raises(CurateError, match="bucket 'no-such-bucket' does not exist.*STORAGE_EMULATOR_HOST"):
        storage.check_bucket("gs://no-such-bucket/x")


def test_create_only_write_and_the_lock_on_gs(gsenv):
    """gcsfs sends ``ifGenerationMatch=0`` for ``mode="create"`` and turns GCS's 412 into FileExistsError:
    the lock's create is refused by the server while another holder's object exists."""
    bucket = gsenv.new_bucket()
    fs, _ = storage.filesystem(f"gs://{bucket}")
    fs.pipe_file(f"{bucket}/once", b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{bucket}/once", b"second", mode="create")
    assert gsenv.keys(bucket) == {"once": b"first"}

    fs, prefix = storage.filesystem(f"gs://{bucket}/out")
    lock = storage.RemoteLock(fs, prefix, f"gs://{bucket}/out")
    lock.acquire()
    second = storage.RemoteLock(fs, prefix, f"gs://{bucket}/out")
    with pytest.raises(CurateError, match=rf"another curate run \(pid {os.getpid()} on .*is writing this output"):
        second.acquire()
    assert not second.held
    holder = json.loads(gsenv.keys(bucket, "out/")["out/.curate/remote-lock.json"])
    assert holder["since"] == lock.body["since"]  # the second acquisition did not overwrite the first's object
    lock.beat()  # the holder rewrites its heartbeat (an unconditional write)
    lock.release()
    assert gsenv.keys(bucket, "out/") == {}
    second.acquire()  # free again
    # a lock left by a killed run on this host (its pid is gone) is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    second.body["pid"] = int(dead.stdout)
    second._put(create=False)
    third = storage.RemoteLock(fs, prefix, f"gs://{bucket}/out")
    third.acquire()
    assert json.loads(fs.cat_file(third.key))["pid"] == os.getpid()
    third.release()


# -- the CLI on buckets --------------------------------------------------------------------------
def test_reshard_bucket_to_bucket_equals_local_and_resumes_elsewhere(gsenv, reference, tmp_path):
    src, ref = reference
    bucket = gsenv.new_bucket()
    for p in sorted(src.iterdir()):
        gsenv.put(bucket, f"in/{p.name}", p.read_bytes())
    out = f"gs://{bucket}/out"
    r = curate(["shards", "reshard", f"gs://{bucket}/in", "--out", out, *RESHARD])
    assert r.returncode == 0, r.stderr
    got = gsenv.keys(bucket, "out/")
    files = {k[len("out/"):]: v for k, v in got.items() if not k.startswith("out/.curate/")}
    assert outputs(files) == outputs(ref) and outputs(ref)
    assert not any(storage.TMP_MARK in k for k in got)
    run = json.loads(got["out/.curate/run.json"])
    assert run["config"]["inputs"][0].startswith(f"gs://{bucket}/in/")
    assert any(k.startswith("out/.curate/ledger/") for k in got)
    assert "out/.curate/remote-lock.json" not in got  # released
    # another machine (an empty mirror) resumes from the bucket: everything is done, nothing rewritten
    shards = [k for k in got if k.startswith("out/shards/")]
    generations = {k: gsenv.info(bucket, k)["generation"] for k in shards}
    r = curate(["shards", "reshard", f"gs://{bucket}/in", "--out", out, *RESHARD],
               CURATE_CACHE=str(tmp_path / "other-machine"))
    assert r.returncode == 0, r.stderr
    assert {k: gsenv.info(bucket, k)["generation"] for k in shards} == generations


def test_a_second_run_on_a_locked_output_is_refused(gsenv, reference):
    """While this process holds the output's lock, a curate run on the same gs:// output stops at once."""
    import socket

    src, _ = reference
    bucket = gsenv.new_bucket()
    fs, prefix = storage.filesystem(f"gs://{bucket}/out")
    lock = storage.RemoteLock(fs, prefix, f"gs://{bucket}/out")
    lock.acquire()
    try:
        r = curate(["shards", "reshard", str(src), "--out", f"gs://{bucket}/out", *RESHARD])
        assert r.returncode == 2, r.stderr
        assert f"another curate run (pid {os.getpid()} on {socket.gethostname()}" in r.stderr
        assert f"delete gs://{bucket}/out/.curate/remote-lock.json" in r.stderr
        assert list(gsenv.keys(bucket)) == ["out/.curate/remote-lock.json"]
        assert json.loads(gsenv.keys(bucket)["out/.curate/remote-lock.json"])["pid"] == os.getpid()
    finally:
        lock.release()


def test_a_missing_bucket_is_one_clear_line(gsenv, reference):
    src, _ = reference
    r = curate(["shards", "reshard", str(src), "--out", "gs://no-such-bucket/out", *RESHARD])
    assert r.returncode == 2
    assert "bucket 'no-such-bucket' does not exist" in r.stderr and "gs://no-such-bucket/out" in r.stderr
    assert "STORAGE_EMULATOR_HOST" in r.stderr and "AWS_ENDPOINT_URL" not in r.stderr  # the gs:// hint
    assert "Traceback" not in r.stderr and "remote/gs" not in r.stderr
