"""A real chat-completions HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks ``POST /v1/chat/completions`` like vLLM or llama.cpp's server, on a free port, in a
thread of the test process. Each request takes the next behaviour from ``script`` (then
``default``): ``good`` (three adjectives for the pair in the prompt), ``prose`` (the same,
wrapped in chatter), ``garbage``, ``copy`` (parrots a few-shot example), ``429`` (with ``Retry-After``), ``400``, ``500``, ``hang`` (answers
only after ``hang_s``), ``close`` (drops the connection without answering) and ``die``
(drops it and stops listening, so later connects are refused).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADJECTIVES = ["shiny", "smooth", "round", "bright", "glossy", "soft", "dark", "pale", "vivid", "textured",
              "sleek", "rough", "colorful", "faded", "polished", "matte"]
PAIR_RE = re.compile(r"a photo of a/an (.+?) well\.")


def good_answer(prompt: str) -> str:
    """Three distinct adjectives chosen by a hash of the pair, never the pair's own attribute."""
    m = PAIR_RE.findall(prompt)
    pair = m[-1] if m else prompt
    attr = pair.split()[0] if pair.split() else ""
    h = int(hashlib.sha256(pair.encode()).hexdigest(), 16)
    pool = [a for a in ADJECTIVES if a != attr]
    out: list[str] = []
    while len(out) < 3:
        w = pool[h % len(pool)]
        h //= len(pool)
        if w not in out:
            out.append(w)
        else:
            h += 7
    return ", ".join(out)


class FakeChatServer:
    def __init__(self, default: str = "good", script: list[str] | None = None, retry_after: str = "1",
                 hang_s: float = 5.0, port: int = 0):
        self.default = default
        self.script: deque[str] = deque(script or [])
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.log: list[tuple[float, str, dict]] = []  # (time, behaviour, request body)
        self.headers: list[dict[str, str]] = []  # request headers, in arrival order
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.stopped = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def spec(self, model: str = "fake-model") -> str:
        return f"openai:{model}@{self.base_url}"

    def next_behaviour(self, body: dict) -> str:
        with self._lock:
            b = self.script.popleft() if self.script else self.default
            self.log.append((time.monotonic(), b, body))
            return b

    def count(self, behaviour: str | None = None) -> int:
        with self._lock:
            return sum(1 for _, b, _ in self.log if behaviour is None or b == behaviour)

    def start(self) -> FakeChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._thread = None
        self.stopped = True
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _make_handler(fake: FakeChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            if fake.stopped:
                self.close_connection = True
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            fake.headers.append(dict(self.headers))
            b = fake.next_behaviour(body)
            prompt = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
            if b in ("close", "die"):
                self.close_connection = True
                if b == "die":  # stop listening before this connection closes: later connects are refused
                    fake.stopped = True
                    fake.httpd.socket.close()
                    threading.Thread(target=fake.stop, daemon=True).start()
                return
            if b == "429":
                self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": fake.retry_after})
                return
            if b == "400":
                self._send(400, {"error": {"message": "bad request"}})
                return
            if b == "500":
                self._send(500, {"error": {"message": "internal error"}})
                return
            if b == "hang":
                fake._release.wait(fake.hang_s)
            text = {"garbage": "I am not sure what you mean by that, sorry!",
                    "copy": "yellow, curved, smooth",  # a worked example's answer, parroted
                    "prose": "Sure! Here are three adjectives:\n" + "".join(
                        f"{i}. {w.title()}\n" for i, w in enumerate(good_answer(prompt).split(", "), 1))
                    + "Hope this helps."}
            content = text.get(b, good_answer(prompt))
            self._send(200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": content}}]})

    return Handler
