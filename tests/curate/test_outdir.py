"""The output-folder guard: writable, one run at a time, same config or --overwrite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from curate.errors import CurateError
from curate.outdir import OutputDir, config_fingerprint

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from curate.outdir import OutputDir
    d = OutputDir(sys.argv[1], "holder", {"a": 1})
    d.open()
    print("locked", flush=True)
    time.sleep(120)
""")


def hold_lock(path):
    """Another process that holds the folder's lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_new_folder_is_created_and_records_the_run(tmp_path):
    out = tmp_path / "a" / "b"
    with OutputDir(out, "cmd", {"x": 1, "y": "z"}) as d:
        assert out.is_dir()
        run = json.loads((out / ".curate" / "run.json").read_text())
        assert run == {"command": "cmd", "fingerprint": config_fingerprint({"y": "z", "x": 1}),
                       "config": {"x": 1, "y": "z"}}
        assert (out / ".curate" / "lock").read_text() == str(os.getpid())
        assert d.fingerprint == run["fingerprint"]


def test_same_config_resumes_and_keeps_files(tmp_path):
    with OutputDir(tmp_path / "o", "cmd", {"x": 1}):
        (tmp_path / "o" / "part.txt").write_text("done")
    with OutputDir(tmp_path / "o", "cmd", {"x": 1}):
        assert (tmp_path / "o" / "part.txt").read_text() == "done"


def test_different_config_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "o"
    with OutputDir(out, "cmd", {"x": 1, "keep": True}):
        (out / "part.txt").write_text("done")
    with pytest.raises(CurateError, match=r"different config \(differs in: x\)") as e:
        OutputDir(out, "cmd", {"x": 2, "keep": True}).open()
    assert "--overwrite" in e.value.fix and e.value.where == str(out)
    assert (out / "part.txt").exists()
    with pytest.raises(CurateError, match="another run"):
        OutputDir(out, "other-cmd", {"x": 1, "keep": True}).open()
    # the refused runs released the lock: a same-config run can still resume
    with OutputDir(out, "cmd", {"x": 1, "keep": True}):
        pass
    with OutputDir(out, "cmd", {"x": 2, "keep": True}, overwrite=True):
        assert sorted(p.name for p in out.iterdir()) == [".curate"]
    assert json.loads((out / ".curate" / "run.json").read_text())["config"]["x"] == 2


def test_a_run_that_wrote_nothing_pins_nothing(tmp_path):
    """A run that failed before its first output (a typo found late, a model that did not load) leaves only
    the lock and run.json: the corrected command goes ahead without --overwrite, and its config is recorded."""
    out = tmp_path / "o"
    with OutputDir(out, "build", {"export": ["czls"]}):
        (out / "shards").mkdir()                                    # empty folders are not outputs
        (out / ".curate" / "ledger" / "pairs").mkdir(parents=True)
        (out / "pairs.parquet.tmp-x1").write_bytes(b"half")        # nor is a killed run's temp file
    with OutputDir(out, "build", {"export": ["czsl"]}):
        assert not (out / "pairs.parquet.tmp-x1").exists()
    assert json.loads((out / ".curate" / "run.json").read_text())["config"] == {"export": ["czsl"]}
    with OutputDir(out, "embed", {"model": "mini:x"}):               # another command, same rule
        (out / ".curate" / "ledger" / "pairs" / "all.json").write_text("{}")  # a done marker: pinned now
    with pytest.raises(CurateError, match=r"another run \(embed\)"):
        OutputDir(out, "embed", {"model": "mini:y"}).open()
    assert json.loads((out / ".curate" / "run.json").read_text())["config"] == {"model": "mini:x"}


def test_foreign_folder_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(CurateError, match="not made by curate"):
        OutputDir(out, "cmd", {}).open()
    assert (out / "thesis.tex").read_text() == "precious"
    with OutputDir(out, "cmd", {}, overwrite=True):
        assert not (out / "thesis.tex").exists()


def test_parent_is_a_file_means_not_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CurateError, match="not writable") as e:
        OutputDir(tmp_path / "file" / "out", "cmd", {}).open()
    assert e.value.where == str(tmp_path / "file" / "out")


def test_second_run_on_locked_folder_fails_with_holder_pid(tmp_path):
    out = tmp_path / "o"
    holder = hold_lock(out)
    try:
        with pytest.raises(CurateError, match=f"another curate run \\(pid {holder.pid}\\)"):
            OutputDir(out, "holder", {"a": 1}).open()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 releases the lock: the next run goes ahead
    with OutputDir(out, "holder", {"a": 1}):
        pass


def test_forked_children_do_not_hold_the_folder_lock(tmp_path):
    """A worker forked during a run (a pool worker, a DataLoader decode worker) that outlives its
    killed parent must not keep the folder locked: the lock goes with the parent."""
    import multiprocessing as mp
    import time

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs fork")
    script = textwrap.dedent(f"""
        import os, sys, time
        from curate.outdir import OutputDir
        with OutputDir({str(tmp_path / 'out')!r}, "test", {{}}):
            if os.fork() == 0:       # the child lingers, as an orphaned decode worker does
                time.sleep(30)
                os._exit(0)
            print("locked", flush=True)
            time.sleep(30)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(CurateError, match="another curate run"):  # the parent holds it
            with OutputDir(tmp_path / "out", "test", {}):
                pass
        p.send_signal(signal.SIGKILL)
        p.wait()
        time.sleep(0.2)
        with OutputDir(tmp_path / "out", "test", {}):  # the child still runs; the folder is free
            pass
    finally:
        os.killpg(p.pid, signal.SIGKILL)
