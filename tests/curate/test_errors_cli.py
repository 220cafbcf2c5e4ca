"""Bad input through the real CLI (`curate shards reshard`): one `error:` line, exit 2, no
traceback unless --debug; corrupt input shards are counted and reported while the run goes on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import polars as pl
import pytest
from build_helpers import curate_in

from curate.shards import ShardWriter

CURATE = str(Path(sys.executable).with_name("curate"))
ENV = {**os.environ, "CURATE_NO_PROGRESS": "1", "COLUMNS": "200"}


def curate(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([CURATE, *map(str, args)], capture_output=True, text=True, env=ENV, **kw)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def inputs(tmp_path) -> Path:
    with ShardWriter(tmp_path / "in", prefix="src", maxcount=4) as w:
        w.write_all({"__key__": f"k{i:03d}", "txt": f"caption {i}", "json": {"i": i}} for i in range(10))
    return tmp_path / "in"


def test_reshard_writes_shards_manifest_and_stats(inputs, tmp_path):
    (tmp_path / "ids.txt").write_text("k001\nk002\nk009\nnot-there\n")
    r = curate("shards", "reshard", inputs, "--out", tmp_path / "o", "--maxcount", "1", "--ids",
               tmp_path / "ids.txt", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "tasks done" in r.stderr  # the summary table
    assert "executor local with" not in r.stderr  # debug lines need --verbose
    m = pl.read_parquet(tmp_path / "o" / "manifest.parquet")
    assert m["key"].to_list() == ["k001", "k002", "k009"]
    assert m["shard"].to_list() == ["shard-000000-000000.tar", "shard-000000-000001.tar", "shard-000002-000000.tar"]
    assert m["source_shard"].to_list() == [str(inputs / "src-000000.tar")] * 2 + [str(inputs / "src-000002.tar")]
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats == {"inputs": 3, "samples_read": 10, "samples_written": 3, "shards_written": 3,
                     "corrupt_inputs": [], "ids_not_found": 1, "skipped": {}, "renamed_keys": 0, "failed_tasks": {},
                     "duplicate_keys_across_inputs": []}
    assert sorted(p.name for p in (tmp_path / "o" / "shards").glob("*.tar")) == sorted(set(m["shard"]))


def test_output_parent_is_a_file(inputs, tmp_path):
    (tmp_path / "plain-file").write_text("x")
    out = tmp_path / "plain-file" / "out"
    assert_one_line_error(curate("shards", "reshard", inputs, "--out", out), "not writable", str(out))


def test_output_not_writable_for_unprivileged_user(tmp_path):
    """As root chmod blocks nothing, so run the CLI as `nobody` on a root-owned 0755 folder."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to switch to user nobody")
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    base = Path(tempfile.mkdtemp(prefix="curate-nobody-"))
    try:
        base.chmod(0o755)
        with ShardWriter(base / "in", maxcount=5) as w:
            w.write_all({"__key__": f"k{i}", "txt": "x"} for i in range(3))
        for p in (base / "in", *w.written):
            p.chmod(0o755 if p.is_dir() else 0o644)
        (base / "ro").mkdir(mode=0o755)
        probe = subprocess.run([*as_nobody, CURATE, "--version"], capture_output=True, text=True, env=ENV)
        if probe.returncode != 0:
            pytest.skip(f"user nobody cannot run curate here: {probe.stderr.strip()[:100]}")
        for out in (base / "ro", base / "ro" / "sub"):
            r = subprocess.run([*as_nobody, CURATE, "shards", "reshard", str(base / "in"), "--out", str(out)],
                               capture_output=True, text=True, env={**ENV, "HOME": str(base)})
            assert_one_line_error(r, "not writable", "Permission denied", str(out))
        assert list((base / "ro").iterdir()) == []  # nothing written
    finally:
        shutil.rmtree(base)


def test_different_config_is_refused_then_overwrite_replaces(inputs, tmp_path):
    out = tmp_path / "o"
    assert curate("shards", "reshard", inputs, "--out", out, "--maxcount", "2").returncode == 0
    before = sorted(p.name for p in (out / "shards").iterdir())
    assert_one_line_error(curate("shards", "reshard", inputs, "--out", out, "--maxcount", "3"),
                          "different config", "maxcount", "--overwrite")
    assert sorted(p.name for p in (out / "shards").iterdir()) == before  # nothing lost
    r = curate("shards", "reshard", inputs, "--out", out, "--maxcount", "3", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == [
        "shard-000000-000000.tar", "shard-000000-000001.tar", "shard-000001-000000.tar",
        "shard-000001-000001.tar", "shard-000002-000000.tar"]


def test_folder_in_use_by_another_run(inputs, tmp_path):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from curate.outdir import OutputDir
        OutputDir(sys.argv[1], "shards reshard", {}).open()
        print("locked", flush=True)
        time.sleep(120)
    """), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = curate("shards", "reshard", inputs, "--out", out)
        assert_one_line_error(r, f"another curate run (pid {holder.pid})", str(out))
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "shards").exists()


def test_corrupt_and_truncated_inputs_are_counted_and_run_continues(inputs, tmp_path):
    good = (inputs / "src-000001.tar").read_bytes()
    (inputs / "src-000001.tar").write_bytes(good[: len(good) // 2])  # truncated mid-shard
    (inputs / "src-000003.tar").write_bytes(b"not a tar at all" * 64)
    r = curate("shards", "reshard", inputs, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    bad = {Path(c["shard"]).name: c for c in stats["corrupt_inputs"]}
    assert sorted(bad) == ["src-000001.tar", "src-000003.tar"]
    assert all(c["reason"] for c in bad.values())
    assert bad["src-000003.tar"]["samples_read"] == 0
    kept_from_truncated = bad["src-000001.tar"]["samples_read"]
    assert 0 < kept_from_truncated < 4
    assert stats["samples_written"] == 4 + kept_from_truncated + 2
    assert pl.read_parquet(tmp_path / "o" / "manifest.parquet").height == stats["samples_written"]
    table = r.stderr[r.stderr.index("tasks done"):]
    for name, c in bad.items():  # listed with the reason under the summary table
        assert f"corrupt input {inputs / name}: {c['reason']}" in table
    assert "2 corrupt or truncated input shard(s)" in r.stderr


def test_debug_shows_the_traceback(inputs, tmp_path):
    (tmp_path / "f").write_text("x")
    r = curate("--debug", "shards", "reshard", inputs, "--out", tmp_path / "f" / "o")
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr and "CurateError" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_missing_inputs_and_id_list(tmp_path, inputs):
    assert_one_line_error(curate("shards", "reshard", tmp_path / "nowhere", "--out", tmp_path / "o"),
                          f"{tmp_path / 'nowhere'}: does not exist")  # a missing path is named as missing
    assert_one_line_error(curate("shards", "reshard", f"{inputs}/none-*.tar", "--out", tmp_path / "o"),
                          "no .tar shards found")
    assert_one_line_error(curate("shards", "reshard", inputs, "--out", tmp_path / "o", "--ids", tmp_path / "no.txt"),
                          "ID list not found")
    assert_one_line_error(curate("shards", "reshard", inputs, "--out", inputs), "holds input shards")


def test_help_teaches_with_an_example():
    r = curate("shards", "reshard", "--help")
    assert r.returncode == 0
    for flag in ("--out", "--maxcount", "--maxsize", "--ids", "--workers", "--executor", "--address",
                 "--overwrite", "--config", "Example"):
        assert flag in r.stdout


def test_quiet_and_verbose(inputs, tmp_path):
    quiet = curate("--quiet", "shards", "reshard", inputs, "--out", tmp_path / "q")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""
    loud = curate("--verbose", "shards", "reshard", inputs, "--out", tmp_path / "q")
    assert loud.returncode == 0
    assert "3 task(s) already done" in loud.stderr and "tasks done" in loud.stderr
    assert "executor local with" in loud.stderr  # debug lines only with --verbose


def test_failed_task_is_reported_and_retried(inputs, tmp_path, monkeypatch, capsys):
    import io
    import tarfile

    from curate.cli import main
    from curate.shards import ShardWriter

    bad = inputs / "src-000009.tar"
    with tarfile.open(bad, "w") as tar:  # a key with a folder in it is renamed safely, not a failure
        info = tarfile.TarInfo("sub/k1.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    out = tmp_path / "o"
    write = ShardWriter.write

    def full_disk(self, sample):  # the disk fills up while task 3 writes
        if self.prefix == "shard-000003":
            raise OSError(28, "No space left on device")
        return write(self, sample)

    monkeypatch.setattr(ShardWriter, "write", full_disk)
    with pytest.raises(SystemExit) as stop:  # in-process (one worker), so the fault injection applies
        main(["shards", "reshard", str(inputs), "--out", str(out), "--workers", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "1 of 4 task(s) failed" in last and "No space left on device" in last
    assert "stats.json lists them" in last and "Traceback" not in err
    # the summary is written anyway: what finished, and what failed
    assert pl.read_parquet(out / "manifest.parquet").height == 10
    assert list(json.loads((out / "stats.json").read_text())["failed_tasks"]) == ["000003"]
    monkeypatch.setattr(ShardWriter, "write", write)  # space freed: only that task runs again
    r = curate("shards", "reshard", inputs, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "3 task(s) already done, 1 to run" in r.stderr
    assert pl.read_parquet(out / "manifest.parquet").height == 11


def test_info_and_verify_report_truncated_shards(inputs, capsys):
    from typer.testing import CliRunner

    from curate.shards_cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(inputs)])
    assert ok.exit_code == 0, ok.output
    import tarfile

    shard = inputs / "src-000002.tar"
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    shard.write_bytes(shard.read_bytes()[:end])  # every member intact, end-of-archive blocks gone
    bad = runner.invoke(app, ["verify", str(inputs)], env={"COLUMNS": "250"})
    out = bad.output + capsys.readouterr().err
    assert bad.exit_code == 1
    assert "src-000002.tar" in out and "src-000000.tar" not in out
    info = runner.invoke(app, ["info", str(inputs)], env={"COLUMNS": "250"})
    out = info.output + capsys.readouterr().err
    # info reads the same shards and exits like verify (1: a corrupt or truncated shard)
    assert info.exit_code == 1 and "no end-of-archive block" in out and "9 samples" in out  # 4 + 4 + the 1 before the cut


# -- a typo costs nothing; an error names the real cause --------------------------------------------------
def _fake_build_inputs(tmp_path: Path) -> list:
    """Options of a build whose paths exist (nothing here is read: every case below is refused first)."""
    (tmp_path / "captions.jsonl").write_text('{"caption": "a red circle"}\n')
    (tmp_path / "pool").mkdir()
    (tmp_path / "mini").mkdir()
    (tmp_path / "clip.pt").write_bytes(b"")
    return ["build", "imagenet-ao", "--captions", tmp_path / "captions.jsonl", "--pool", tmp_path / "pool",
            "--model", f"mini:{tmp_path / 'mini'}"]


@pytest.mark.parametrize("extra, needle", [
    (["--export", "czls"], "unknown export format 'czls'"),
    (["--images-per-pair", "0"], "--images-per-pair must be at least 1, got 0"),
    (["--min-images-per-pair", "5", "--images-per-pair", "4"], "every pair would be dropped"),
    (["--model", "mini:{tmp}/mini-clip/KEY"], "{tmp}/mini-clip/KEY: model path does not exist"),
    (["--model", "open_clip:ViT-B-32//{tmp}/nope.pt"], "{tmp}/nope.pt: model path does not exist"),
    (["--model", "clip-vit"], "unknown model spec 'clip-vit'"),
    (["--model", "open_clip:ViT-B-32/laion9b"], "open_clip ViT-B-32 has no pretrained tag 'laion9b'"),
    (["--model", "open_clip:ViT-B-33//{tmp}/clip.pt"], "unknown open_clip architecture 'ViT-B-33'"),
    (["--captions", "{tmp}/captons"], "{tmp}/captons: --captions does not exist"),
    (["--pool", "{tmp}/pol"], "{tmp}/pol: --pool does not exist"),
    (["--pool", "{tmp}/pool/*.tar"], "no .tar shards found"),
    (["--objects", "{tmp}/objects.txt"], "{tmp}/objects.txt: --objects does not exist"),
    (["--reference", "{tmp}/heldot"], "{tmp}/heldot: --reference does not exist"),
    (["--generator", "diffusers:{tmp}/sdxl"], "{tmp}/sdxl: the diffusers pipeline folder of --generator does not exist"),
    (["--generator", "dalle"], "unknown generator 'dalle'"),
    (["--device", "gpu"], "unknown --device 'gpu'"),
])
def test_build_typo_is_refused_before_the_output_folder_opens(tmp_path, capfd, extra, needle):
    """Every option, path and model spec is checked before anything runs: one line, and the output
    folder is not even made, so nothing pins the corrected command's config."""
    extra = [str(a).replace("{tmp}", str(tmp_path)) for a in extra]
    out = tmp_path / "ao"
    r = curate_in(capfd, *_fake_build_inputs(tmp_path), *extra, "--out", out)
    assert_one_line_error(r, needle.replace("{tmp}", str(tmp_path)))
    assert not out.exists()


def test_demo_build_typo_fails_before_the_demo_world_is_made(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("CURATE_DEMO_DIR", str(tmp_path / "demo"))
    r = curate_in(capfd, "build", "imagenet-ao", "--export", "czls")
    assert_one_line_error(r, "unknown export format 'czls'", "czsl, imagefolder")
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_corrected_build_runs_without_overwrite(tmp_path, capfd, small_world, tiny_mini_spec):
    from build_helpers import relaxed_toml

    # what is tested is the folder the refused run leaves behind, not the build's size: two pairs from the
    # demo generator (no 400-image pool to pack and embed) make the corrected run a short, complete build
    (tmp_path / "build.toml").write_text(relaxed_toml(export=None, max_pairs=2, common_pairs=2))
    wj = small_world.path / "world.json"
    args = ["build", "imagenet-ao", "--objects", wj, "--attributes", wj, "--captions", small_world.path / "captions",
            "--generator", "demo", "--model", tiny_mini_spec,
            "--config", tmp_path / "build.toml", "--workers", "1", "--out", tmp_path / "ao"]
    assert_one_line_error(curate_in(capfd, *args, "--export", "czls"), "unknown export format 'czls'")
    r = curate(*args, "--export", "czsl")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ao" / "exports" / "czsl").is_dir()


def test_embed_missing_model_path_is_one_error_and_pins_nothing(inputs, tmp_path, capfd, tiny_mini_spec):
    """The help's placeholder path: one error from the parent (not one per worker), nothing written; the
    corrected command then runs without --overwrite."""
    out = tmp_path / "emb"
    r = curate_in(capfd, "embed", inputs, "--model", f"mini:{tmp_path}/mini-clip/KEY", "--out", out, "--workers", "3")
    line = assert_one_line_error(r, f"{tmp_path}/mini-clip/KEY: model path does not exist",
                                 "curate model train-mini")
    assert line.count("fix:") == 1
    assert not out.exists()
    (tmp_path / "hf").mkdir()  # a folder, but not a model's: also refused by the parent
    r = curate_in(capfd, "embed", inputs, "--model", f"hf:{tmp_path}/hf", "--out", out, "--workers", "3")
    assert assert_one_line_error(r, f"{tmp_path}/hf: not a transformers model folder").count("fix:") == 1
    assert not out.exists()
    # open_clip weights that are not in the local cache: refused by the parent too, not once per worker
    r = curate_in(capfd, "embed", inputs, "--model", "open_clip:ViT-B-32/no-such-tag", "--out", out, "--workers", "3")
    assert r.returncode == 2 and r.stderr.count("fix:") == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not out.exists()
    r = curate("embed", inputs, "--model", tiny_mini_spec, "--out", out, "--workers", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr


def test_missing_paths_are_named_before_anything_is_written(tmp_path, capfd):
    """`PATH: does not exist`, not a symptom ('no .tar shards found', 'no --model given', 'no triplets.parquet');
    no output folder is made."""
    (tmp_path / "ds").mkdir()
    missing = tmp_path / "nope"
    for args, needle in [
        (("triplets", missing, "--out", tmp_path / "o"), f"{missing}: does not exist"),
        (("triplets", tmp_path / "ds", "--model", f"mini:{missing}", "--out", tmp_path / "o"),
         f"{missing}: model path does not exist"),
        (("train", "trident", "--data", missing, "--out", tmp_path / "o"), f"{missing}: --data does not exist"),
        (("train", "trident", "--data", tmp_path / "ds", "--backbone", f"hf:{missing}", "--out", tmp_path / "o"),
         f"{missing}: model path does not exist"),
        (("train", "cir", "--triplets", missing, "--out", tmp_path / "o"), f"{missing}: --triplets does not exist"),
        (("eval", "cir", missing, "--data", tmp_path / "ds"), f"{missing}: RUN does not exist"),
        (("index", missing, "--out", tmp_path / "o"), f"{missing}: does not exist"),
        (("search", missing, "--text", "a red circle"), f"{missing}: does not exist"),
    ]:
        assert_one_line_error(curate_in(capfd, *args), needle)
        assert not (tmp_path / "o").exists(), args

    assert_one_line_error(curate_in(capfd, "eval", "zeroshot", tmp_path / "imagenet-a0"), f"{tmp_path}/imagenet-a0: does not exist")
    assert_one_line_error(curate_in(capfd, "eval", "zeroshot", tmp_path / "ds", "--reference", tmp_path / "world" / "heldot"),
                          f"{tmp_path}/world/heldot: --reference does not exist")
    assert_one_line_error(curate_in(capfd, "eval", "czsl", "--zero-shot", "--data", tmp_path / "imagenet-a0"),
                          f"{tmp_path}/imagenet-a0: --data does not exist")
    assert_one_line_error(curate_in(capfd, "eval", "czsl", tmp_path / "runs" / "nope", "--data", tmp_path / "ds"),
                          f"{tmp_path}/runs/nope: RUN does not exist")


def test_eval_czsl_zero_shot_is_a_flag_that_leaves_data_alone(tmp_path, capfd):
    """`--zero-shot --data DIR` scores the model the dataset was built with (here a missing one, so the
    error shows --data was read and the model came from DIR/dataset.json); --model names another."""
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset.json").write_text(json.dumps({"config": {"model": f"mini:{tmp_path}/gone"}}))
    assert_one_line_error(curate_in(capfd, "eval", "czsl", "--zero-shot", "--data", ds), f"{tmp_path}/gone: model path does not exist")
    assert_one_line_error(curate_in(capfd, "eval", "czsl", "--zero-shot", "--model", f"mini:{tmp_path}/other", "--data", ds),
                          f"{tmp_path}/other: model path does not exist")
    assert_one_line_error(curate_in(capfd, "eval", "czsl", "--zero-shot", f"mini:{tmp_path}/old-form", "--data", ds),
                          f"{tmp_path}/old-form: model path does not exist")  # `--zero-shot SPEC` still reads
    (ds / "dataset.json").write_text("{}")
    assert_one_line_error(curate_in(capfd, "eval", "czsl", "--zero-shot", "--data", ds), "no --model given")


def _pool_owners(pid: int) -> set[int]:
    """The processes under ``pid`` (itself included) that run a pool of spawned workers (not counting
    multiprocessing's resource tracker)."""
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    owners = set()
    for k in kids:
        try:
            if "spawn_main" in " ".join(k.cmdline()):
                owners.add(k.ppid())
        except psutil.Error:
            pass
    return owners


def _stopped_with_sigint_handled(pids: set[int]) -> bool:
    """Once all of ``pids`` are stopped: does each handle SIGINT (not ignore it, as the pool's parent does
    for the moment it starts a worker, which inherits that)? From /proc/PID/status (SigIgn, a hex mask)."""
    import signal
    import time

    deadline = time.time() + 10
    status = {}
    while time.time() < deadline:
        try:
            status = {pid: Path(f"/proc/{pid}/status").read_text() for pid in pids}
        except OSError:
            return False
        if all("State:\tT" in s for s in status.values()):
            break
        time.sleep(0.005)
    else:
        return False
    bit = 1 << (signal.SIGINT - 1)
    return all(not int(s.split("SigIgn:")[1].split()[0], 16) & bit for s in status.values())


@pytest.mark.system
def test_ctrl_c_mid_build_says_the_same_command_resumes(tmp_path, small_world, tiny_mini_spec):
    """SIGINT to the process group (Ctrl-C in a terminal) while pool workers run: exit 130 within seconds,
    one line saying how to resume, no traceback from the parent or the workers. The group is stopped
    (SIGSTOP) once pool workers are seen and their parent handles SIGINT, so the SIGINT lands while they
    run however fast the build is."""
    import signal
    import time

    from build_helpers import relaxed_toml

    (tmp_path / "build.toml").write_text(relaxed_toml())
    wj = small_world.path / "world.json"
    out = tmp_path / "ao"
    p = subprocess.Popen(
        [CURATE, "build", "imagenet-ao", "--objects", str(wj), "--attributes", str(wj), "--captions",
         str(small_world.path / "captions"), "--pool", str(small_world.path / "pool" / "images"), "--generator",
         "demo", "--model", tiny_mini_spec, "--config", str(tmp_path / "build.toml"), "--workers", "2",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    try:
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            owners = _pool_owners(p.pid)
            if owners:
                os.killpg(p.pid, signal.SIGSTOP)  # frozen: it cannot finish between this check and the SIGINT
                owners = _pool_owners(p.pid)
                if owners and _stopped_with_sigint_handled({p.pid, *owners}):
                    break
                os.killpg(p.pid, signal.SIGCONT)
            time.sleep(0.02)
        assert p.poll() is None and _pool_owners(p.pid), p.stderr.read()
        os.killpg(p.pid, signal.SIGINT)  # pending until the group runs again
        t0 = time.time()
        os.killpg(p.pid, signal.SIGCONT)
        _, err = p.communicate(timeout=60)
        stopped = time.time() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == "Interrupted; rerun the same command to resume (finished stages are kept)", err
    assert "Traceback" not in err and "Aborted" not in err and "worker process died" not in err
    assert stopped < 30, stopped


def test_piped_tables_and_markdown_are_not_wrapped(tmp_path):
    """stderr to a pipe (no terminal, no COLUMNS): a rich table and a Markdown table go out at their own
    width, one line per row."""
    script = textwrap.dedent("""
        from rich.table import Table
        from curate.log import console, print_table
        t = Table(title="wide")
        for i in range(8):
            t.add_column(f"column number {i}")
        t.add_row(*[f"value {i} value {i} value {i}" for i in range(8)])
        print_table(t)
        console.print("| " + " | ".join(f"column {i} with a long header" for i in range(8)) + " |")
    """)
    env = {k: v for k, v in ENV.items() if k not in ("COLUMNS", "LINES")}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    row = next(ln for ln in lines if "value 0" in ln)
    assert all(f"value {i} value {i} value {i}" in row for i in range(8)), r.stderr
    md = next(ln for ln in lines if ln.startswith("| column 0"))
    assert md.endswith("column 7 with a long header |"), r.stderr


SLOW_START = textwrap.dedent("""
    import signal, sys, time
    if __name__ == "__mp_main__":       # a spawned worker importing the main module: its start-up
        # one write per line: two workers start at once, and print() writes its parts separately
        sys.stdout.write(f"worker starting, SIGINT ignored: {signal.getsignal(signal.SIGINT) == signal.SIG_IGN}\\n")
        sys.stdout.flush()
        time.sleep(5)
    from curate.executor import LocalExecutor

    def task(t):
        return t

    if __name__ == "__main__":
        print(sorted(r.value for r in LocalExecutor(2).map(task, [1, 2, 3, 4])), flush=True)
""")


def test_ctrl_c_while_workers_start_reaches_only_the_parent(tmp_path):
    """Ctrl-C while the pool's workers are still starting (before any initializer could run): the workers
    ignore it from their first instruction, the parent alone stops (one traceback, its own)."""
    import signal
    import time

    script = tmp_path / "slow_start.py"
    script.write_text(SLOW_START)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        started = p.stdout.readline().strip()
        assert started == "worker starting, SIGINT ignored: True", started  # before any initializer could run
        time.sleep(0.5)
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0 and err.count("Traceback") == 1 and err.rstrip().endswith("KeyboardInterrupt"), err
