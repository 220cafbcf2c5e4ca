import subprocess
import sys
import time
from pathlib import Path

CURATE = str(Path(sys.executable).with_name("curate"))


def run(*args, **kw):
    return subprocess.run([CURATE, *args], capture_output=True, text=True, **kw)


def test_help_lists_every_group_fast():
    from curate.cli import COMMANDS

    t0 = time.perf_counter()
    r = run("--help")
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    for name, (_, helptext) in COMMANDS.items():
        assert name in r.stdout
        assert " ".join(helptext.split()[:3]) in " ".join(r.stdout.split())
    assert elapsed < 1.0, f"curate --help took {elapsed:.2f}s"


def test_version():
    from curate import __version__

    r = run("--version")
    assert r.returncode == 0
    assert __version__ in r.stdout


def test_unknown_command_is_usage_error():
    r = run("no-such-command")
    assert r.returncode == 2
    assert "No such command" in r.stderr
