"""Launching the FiftyOne App on 127.0.0.1 and stopping it cleanly.

The App server runs as a child process (``python -m fiftyone.server.main``), the same server
``fo.launch_app`` starts, but owned by us: we wait until it answers, print the URL, and on
Ctrl-C (or SIGTERM) stop it by its PID and wait for it, so no server or mongod is left behind.
It inherits the environment, hence the same database (embedded port or ``--database-uri``).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote

from curate.errors import CurateError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def check_port_free(port: int, host: str = HOST) -> None:
    """Fail early, before any work, when ``port`` cannot be bound.

    SO_REUSEADDR as the App server sets it: connections of a just-stopped App lingering in
    TIME_WAIT do not count, a socket listening on the port does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            why = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be used ({e.strerror})"
            raise CurateError(f"port {port} on {host} {why}",
                              fix=f"pass another port, e.g. --port {free_port()}, or stop what holds {port}") from e


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def dataset_url(port: int, name: str, host: str = HOST) -> str:
    return f"http://{host}:{port}/datasets/{quote(name)}"


@dataclass
class AppServer:
    """A running App server child process."""

    proc: subprocess.Popen
    port: int
    host: str = HOST

    def url(self, name: str) -> str:
        return dataset_url(self.port, name, self.host)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server (it stops its DB service too), then SIGKILL if it hangs."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_app(port: int, host: str = HOST, timeout: float = 90.0) -> AppServer:
    """Start the App server and return once it answers HTTP (plus a short settle for its DB thread)."""
    check_port_free(port, host)
    cmd = [sys.executable, "-m", "fiftyone.server.main", "--port", str(port), "--address", host]
    env = dict(os.environ)
    env.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    server = AppServer(proc, port, host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
            raise CurateError(f"the FiftyOne App exited at start ({err[-1] if err else f'exit {proc.returncode}'})",
                              fix="run `curate doctor`; try another --port")
        if _answers(f"http://{host}:{port}/fiftyone"):
            time.sleep(2.0)  # the server's first database connection races its own start-up
            return server
        time.sleep(0.3)
    server.stop()
    raise CurateError(f"the FiftyOne App did not answer on port {port} within {timeout:.0f} s",
                      fix="run `curate doctor` to check the database; try another --port")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_until_interrupted(server: AppServer, name: str) -> None:
    """Print the URL (stdout: it is the command's data) and block until Ctrl-C or the server exits."""
    print(server.url(name), flush=True)
    log.info("FiftyOne App running; press Ctrl-C to stop")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        while server.proc.poll() is None:
            time.sleep(0.5)
        log.warning("the App server exited (code %s)", server.proc.returncode)
    except KeyboardInterrupt:
        log.info("stopping the App ...")
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
