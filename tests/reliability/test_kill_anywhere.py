"""SIGKILL at random (seeded) moments of `curate build` and `curate embed`, then rerun: the outputs are
byte-identical to an uninterrupted run's (kill_helpers.py says how). The triplets and training commands
are in test_kill_anywhere_training.py (a file of its own, so the two test workers share the work)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest
from kill_helpers import CURATE, ENV, check_same, kill_attempts, run

pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(900)]


def test_build_killed_anywhere(small_build, tmp_path):
    ref = small_build  # the uninterrupted build, shared with the Ray cluster test (conftest.py)
    # 4 attempts, all killed in the work (after the imports), the first 3 for sure even where the reference
    # was timed under twice today's load (kill_helpers.kill_attempts)
    kills, attempts = kill_attempts(ref.args, tmp_path / "killed" / "out", ref.seconds, seed=1, sure=3)
    run(ref.args, tmp_path / "killed" / "out")
    n = check_same(ref.out, tmp_path / "killed" / "out")
    assert kills >= 3, (kills, attempts)
    print(f"build: {kills} kills in {attempts} attempts, {n} files identical, 0 lost")


def test_embed_killed_anywhere(small_build_embeddings, tmp_path):
    ref = small_build_embeddings  # embed of the build's pool, uninterrupted (conftest.py)
    # 3 attempts after the imports, the first 2 killed for sure (kill_helpers.kill_attempts)
    kills, attempts = kill_attempts(ref.args, tmp_path / "emb-killed" / "out", ref.seconds, seed=2, sure=2)
    run(ref.args, tmp_path / "emb-killed" / "out")
    check_same(ref.out, tmp_path / "emb-killed" / "out")
    assert kills >= 1, (kills, attempts)


def test_a_second_run_on_the_same_folder_is_refused(small_build, tmp_path, capfd):
    from curate.cli import main

    args = small_build.args
    out = tmp_path / "locked"
    shutil.rmtree(out, ignore_errors=True)
    first = subprocess.Popen([CURATE, *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV)
    try:
        # the first run holds the folder once its pid is in the lock file (the options are checked before
        # that, so .curate/ existing is not enough); it is then stopped, so it holds the lock until the end
        lock = out / ".curate" / "lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        # the second run in this process (the refusal is the lock's, not a process's): its exit status and
        # its stderr as the command line would show them
        capfd.readouterr()
        with pytest.raises(SystemExit) as second:
            main([*args, "--out", str(out)])
        err = capfd.readouterr().err
        assert second.value.code == 2 and "another curate run" in err, err[-2000:]
        assert f"pid {first.pid}" in err
    finally:
        first.kill()
        first.wait()
