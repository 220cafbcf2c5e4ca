"""A local HTTP server over a folder, with injectable faults, for ingestion tests and benchmarks.

``serve_folder(pool_dir, faults={"images/p1.jpg": 500, "images/p2.jpg": "dead"})`` yields a
base URL on 127.0.0.1 (a free port) and serves files from a thread; img2dataset (or any
downloader) then meets the failures real crawls meet. Fault values, per path relative to the
folder (a leading ``/`` is ignored):

- an ``int`` HTTP status (``500``, ``404``, ``403`` ...): answered with that status;
- ``"dead"``: the connection is closed without any answer (a dead host);
- ``"slow"`` or a ``float`` of seconds (``"slow"`` = 2 s): the answer comes after a delay;
- ``"truncate"``: a 200 whose body stops at half its announced length.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from curate.errors import CurateError
from curate.world import POOL_TABLE

log = logging.getLogger(__name__)
Fault = int | float | str
SLOW_SECONDS = 2.0
FAULTS = ("dead", "slow", "truncate", "reset", "redirect-loop", "html")


def _norm(path: str) -> str:
    return unquote(urlsplit(path).path).lstrip("/")


class FaultyHandler(SimpleHTTPRequestHandler):
    """Serves files from ``directory``; paths listed in ``faults`` misbehave as asked."""

    faults: dict[str, Fault] = {}
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature from the base class
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        fault = self.faults.get(_norm(self.path))
        if fault is None:
            return super().do_GET()
        if fault == "dead":
            self.close_connection = True
            self.connection.close()
            return None
        if fault == "slow" or isinstance(fault, float):
            time.sleep(SLOW_SECONDS if fault == "slow" else float(fault))
            return super().do_GET()
        if fault == "truncate":
            return self._truncated()
        if fault == "reset":
            return self._reset()
        if fault == "redirect-loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if fault == "html":
            body = b"<!doctype html><html><body>404 page served with status 200</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        if isinstance(fault, int):
            self.send_error(fault)
            return None
        raise ValueError(f"unknown fault {fault!r}")

    def _truncated(self) -> None:
        path = self.translate_path(self.path)
        try:
            data = Path(path).read_bytes()
        except OSError:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.close()


    def _reset(self) -> None:
        """Headers and part of the body, then a TCP reset (SO_LINGER 0) instead of a clean close."""
        import socket
        import struct

        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\xff\xd8\xff" + b"\0" * 1000)
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


def check_faults(faults: dict[str, Fault] | None) -> dict[str, Fault]:
    out: dict[str, Fault] = {}
    for k, v in (faults or {}).items():
        ok = (isinstance(v, int) and not isinstance(v, bool) and 400 <= v <= 599) or isinstance(v, float) \
            or v in FAULTS
        if not ok:
            raise CurateError(f"unknown fault {v!r} for path {k!r}",
                              fix=f"use an HTTP status 400-599, one of {', '.join(FAULTS)} or a delay in seconds (float)")
        out[_norm(k)] = v
    return out


@contextmanager
def serve_folder(path: str | os.PathLike, faults: dict[str, Fault] | None = None, port: int = 0) -> Iterator[str]:
    """Serve ``path`` on ``http://127.0.0.1:PORT`` (a free port unless given) while the block runs."""
    root = Path(path)
    if not root.is_dir():
        raise CurateError("folder to serve not found", where=str(root))
    handler = type("Handler", (FaultyHandler,), {"faults": check_faults(faults)})
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(root)))
    except OSError as e:
        raise CurateError(f"cannot listen on 127.0.0.1:{port} ({e.strerror or e})", fix="choose another --port") from e
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="demo-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def write_url_list(pool_dir: str | os.PathLike, base_url: str, out_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``urls.parquet`` (url, caption, key, attr, obj) and ``urls.txt`` (one URL a line) for ``base_url``.

    URLs are ``BASE_URL/PATH`` for every row of ``pool.parquet``, so the files are what
    img2dataset's ``--input_format parquet --url_col url --caption_col caption`` (or ``txt``) reads.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.fsutil import write_parquet, write_text

    pool_dir = Path(pool_dir)
    src = pool_dir / POOL_TABLE
    if not src.exists():
        raise CurateError("no pool.parquet", where=str(pool_dir), fix="pass the pool/ folder of a demo world")
    table = pq.read_table(src, columns=["key", "path", "caption", "attr", "obj"])
    base = base_url.rstrip("/")
    urls = [f"{base}/{p}" for p in table.column("path").to_pylist()]
    out = pa.table({"url": urls, "caption": table.column("caption"), "key": table.column("key"),
                    "attr": table.column("attr"), "obj": table.column("obj")})
    out_dir = Path(out_dir) if out_dir is not None else pool_dir
    pq_path, txt_path = out_dir / "urls.parquet", out_dir / "urls.txt"
    write_parquet(out, pq_path, statistics=True)
    write_text(txt_path, "".join(u + "\n" for u in urls))
    return pq_path, txt_path
