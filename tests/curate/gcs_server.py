"""A local GCS server for the gs:// tests: gcp-storage-emulator (pure Python) on 127.0.0.1, in memory.

It listens on a free port (bound to 127.0.0.1 only) and speaks the GCS JSON API over HTTP; curate
reaches it through gcsfs with nothing but the environment (:meth:`GCSServer.env`):
``STORAGE_EMULATOR_HOST`` (gcsfs sends every request there instead of storage.googleapis.com) and
``FSSPEC_GS_TOKEN=anon`` (fsspec's config from the environment: gcsfs's ``token="anon"``, no
credentials; without it gcsfs tries gcloud's default credentials, then the metadata server, before
falling back to anonymous). The emulator checks no credentials. Never the internet.

One addition to the emulator: uploads honour the ``ifGenerationMatch`` precondition, as GCS does
(``0``: only if the object does not exist; ``N``: only if its live generation is N; else 412).
gcsfs sends ``ifGenerationMatch=0`` for ``pipe_file(..., mode="create")``, which curate's output
lock (``curate.storage.RemoteLock``) relies on; the emulator as released ignores preconditions and
would let a second create overwrite the first, which real GCS never does.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from http import HTTPStatus


@dataclass
class GCSServer:
    endpoint: str
    server: object

    def env(self, **extra: str) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "FSSPEC_GS_TOKEN": "anon", "FSSPEC_GS_PROJECT": "test",
                **extra}

    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
              **query: str) -> bytes:
        url = f"{self.endpoint}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        req = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": content_type} if body is not None else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def new_bucket(self, prefix: str = "b") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self._call("POST", "/storage/v1/b", json.dumps({"name": name}).encode(), project="test")
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self._call("POST", f"/upload/storage/v1/b/{bucket}/o", data, "application/octet-stream",
                   uploadType="media", name=key)

    def info(self, bucket: str, key: str) -> dict:
        return json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(key, safe='')}"))

    def keys(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix`` with its bytes."""
        out, token = {}, None
        while True:
            q = {"prefix": prefix, **({"pageToken": token} if token else {})}
            page = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o", **q))
            for o in page.get("items", []):
                out[o["name"]] = self._call(
                    "GET", f"/download/storage/v1/b/{bucket}/o/{urllib.parse.quote(o['name'], safe='')}", alt="media")
            token = page.get("nextPageToken")
            if not token:
                return dict(sorted(out.items()))

    def stop(self) -> None:
        self.server.stop()


def _with_preconditions(handler):
    """An upload handler that first checks ``ifGenerationMatch`` as GCS does (412 when it fails)."""
    from gcp_storage_emulator.exceptions import NotFound

    def checked(request, response, storage, *args, **kwargs):
        want = request.query.get("ifGenerationMatch")
        if want and "upload_id" not in request.query:  # checked when the upload starts
            name = (request.query.get("name") or [None])[0]
            if name is None and isinstance(request.data, dict):
                name = (request.data.get("meta") or request.data).get("name")
            try:
                live = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
            except NotFound:
                live = "0"
            if live != want[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you "
                                                                 "specified did not hold.",
                                         "errors": [{"reason": "conditionNotMet"}]}})
                return None
        return handler(request, response, storage, *args, **kwargs)

    checked.__wrapped__ = handler
    return checked


def _add_preconditions() -> None:
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    for _, methods in server.HANDLERS:
        for method, handler in list(methods.items()):
            if handler is objects.insert:
                methods[method] = _with_preconditions(handler)


def start_server() -> GCSServer:
    """Start the emulator on 127.0.0.1 (a free port chosen by the OS), storage in memory."""
    import logging

    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)  # a line per request (and warnings) otherwise
    _add_preconditions()
    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    host, port = server._api._httpd.server_address[:2]
    assert host == "127.0.0.1", host
    endpoint = f"http://{host}:{port}"
    try:
        urllib.request.urlopen(f"{endpoint}/", timeout=30).read()  # the health check
    except (urllib.error.URLError, OSError):
        server.stop()
        raise
    return GCSServer(endpoint, server)
