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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_build_killed_anywhere(small_build, tmp_path):
    ref = small_build  # the uninterrupted build, shared with the Ray cluster test (conftest.py)
    kills, attempts = kill_attempts(ref.args, tmp_path / "killed" / "out", ref.seconds, seed=1)
    run(ref.args, tmp_path / "killed" / "out")
    n = check_same(ref.out, tmp_path / "killed" / "out")
    assert kills >= 3, (kills, attempts)
    print(f"build: {kills} kills in {attempts} attempts, {n} files identical, 0 lost")


def test_embed_killed_anywhere(small_build_embeddings, tmp_path):
    ref = small_build_embeddings  # embed of the build's pool, uninterrupted (conftest.py)
    kills, attempts = kill_attempts(ref.args, tmp_path / "emb-killed" / "out", ref.seconds, seed=2)
    run(ref.args, tmp_path / "emb-killed" / "out")
    check_same(ref.out, tmp_path / "emb-killed" / "out")
    assert kills >= 1, (kills, attempts)


def test_a_second_run_on_the_same_folder_is_refused(small_build, tmp_path):
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
        r = subprocess.run([CURATE, *args, "--out", str(out)], capture_output=True, text=True, env=ENV)
        assert r.returncode == 2 and "another curate run" in r.stderr, r.stderr[-2000:]
        assert f"pid {first.pid}" in r.stderr
    finally:
        first.kill()
        first.wait()
