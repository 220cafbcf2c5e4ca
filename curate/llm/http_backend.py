"""``openai:MODEL@BASE_URL``: any OpenAI-compatible chat-completions server over HTTP.

vLLM, llama.cpp's server, Ollama and hosted APIs all speak ``POST BASE_URL/chat/completions``.
Plain ``http.client`` with one keep-alive connection per worker thread: no extra dependency,
and a dropped connection is simply reopened. This module only classifies failures
(retryable or not); waiting and retrying is the client's job.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import threading
import time
from urllib.parse import urlsplit

from ..errors import CurateError
from .base import LLMError, RetryableError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend:
    kind = "openai"

    def __init__(self, model: str, base_url: str, api_key: str | None = None, timeout: float = 60,
                 max_parallel: int = 8):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CurateError(f"not an http(s) URL: {base_url!r}", where="--llm",
                              fix="use openai:MODEL@http://HOST:PORT/v1")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path.rstrip("/")
        self.path = path if path.endswith("/chat/completions") else f"{path}/chat/completions"
        self.api_key = api_key
        self.timeout = timeout
        self.max_parallel = max_parallel
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def complete(self, messages: list[dict], temperature: float, max_tokens: int, seed: int) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": temperature,
                           "max_tokens": max_tokens, "seed": seed}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        status, retry_after, data = self._post(body, headers)
        if status in RETRY_STATUS:
            raise RetryableError(f"HTTP {status}: {_snippet(data)}", retry_after=retry_after)
        if status >= 400:
            fix = "check --api-key-env and the key it names" if status in (401, 403) else \
                "check the model name and base URL" if status == 404 else None
            raise LLMError(f"HTTP {status} from {self.base_url}: {_snippet(data)}", where="--llm", fix=fix)
        try:
            return json.loads(data)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RetryableError(f"malformed response body: {_snippet(data)}") from e

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, float | None, bytes]:
        conn = self._conn()
        fresh = conn.sock is None
        if fresh:
            try:
                conn.connect()
            except OSError as e:  # refused, no route, DNS failure, connect timeout
                self._drop()
                raise RetryableError(f"cannot connect to {self.base_url} ({e})", unreachable=True) from e
        try:
            conn.request("POST", self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError as e:
            self._drop()
            raise RetryableError(f"no answer within {self.timeout:g} s") from e
        except (http.client.HTTPException, ConnectionError, OSError) as e:
            self._drop()
            # reset or refused on a connection we have just opened: the server is going away (a dying
            # server's last accepted connections are reset), as unreachable as a refused connect
            gone = fresh and isinstance(e, (ConnectionResetError, ConnectionRefusedError))
            raise RetryableError(f"connection failed ({type(e).__name__}: {e})", unreachable=gone) from e
        if resp.will_close:
            self._drop()
        return resp.status, parse_retry_after(resp.getheader("Retry-After")), data

    def close(self) -> None:
        self._drop()


def _snippet(data: bytes, n: int = 160) -> str:
    return data[:n].decode("utf-8", "replace").replace("\n", " ")
