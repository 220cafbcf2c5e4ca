"""Benchmark: sustained requests/s of curate's LLM client against a local chat-completions server.

The server is tests/llm_server.py (a real ThreadingHTTPServer speaking the chat-completions
API) in its own process, so client and server do not share a GIL. Same prompts, same
concurrency, one run:

- ``curate``: ``load_llm("openai:...").chat_many(...)`` with a fresh sqlite cache (every
  answer committed as it arrives, retries armed), then the same batch again (all cache hits);
- ``peer``: an ``httpx.Client`` (the transport the OpenAI SDK uses) driven by a thread pool of
  the same size, no cache, no retries: the bare cost of the HTTP round trips.

Prints the ratio and writes bench/results/bench_llm.{json,md}.

    .venv/bin/python bench/bench_llm.py [--requests 2000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import save  # noqa: E402

SERVER = (
    "import sys, time; sys.path.insert(0, {tests!r}); from llm_server import FakeChatServer; "
    "s = FakeChatServer().start(); print(s.port, flush=True); time.sleep(3600)"
)


def start_server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=str(REPO / "tests"))],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())  # type: ignore[union-attr]
    return proc, f"http://127.0.0.1:{port}/v1"


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Please give me three adjectives that can describe the visual feature "
                                         f"of a photo of a/an red shape{i} well."}] for i in range(n)]


def run_curate(base: str, batch: list[list[dict]], concurrency: int, cache: Path) -> tuple[float, float, int]:
    from curate.llm import load_llm

    with load_llm(f"openai:bench@{base}", cache_path=cache, concurrency=concurrency) as llm:
        t0 = time.perf_counter()
        out = llm.chat_many(batch)
        cold = time.perf_counter() - t0
        errors = sum(isinstance(o, Exception) for o in out)
        t0 = time.perf_counter()
        llm.chat_many(batch)
        warm = time.perf_counter() - t0
    return cold, warm, errors


def run_peer(base: str, batch: list[list[dict]], concurrency: int) -> tuple[float, int]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=base, timeout=60, limits=limits) as client:
        def one(messages: list[dict]) -> str:
            r = client.post("/chat/completions", json={"model": "bench", "messages": messages, "temperature": 0.0,
                                                       "max_tokens": 64, "seed": 0})
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(one, m) for m in batch]
            errors = sum(f.exception() is not None for f in futures)
        return time.perf_counter() - t0, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    proc, base = start_server()
    try:
        run_peer(base, prompts(50), args.concurrency)  # warm the server process
        with tempfile.TemporaryDirectory() as tmp:
            # distinct prompts per run so neither side sees a warm cache it did not fill itself
            cold, warm, err_ours = run_curate(base, prompts(args.requests), args.concurrency,
                                              Path(tmp) / "answers.sqlite")
        peer, err_peer = run_peer(base, prompts(args.requests), args.concurrency)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    n = args.requests
    res = {"requests": n, "concurrency": args.concurrency,
           "curate_rps": round(n / cold, 1), "curate_cached_rps": round(n / warm, 1),
           "peer_httpx_rps": round(n / peer, 1), "ratio_curate_over_peer": round(peer / cold, 3),
           "errors": {"curate": err_ours, "peer": err_peer}}
    md = "\n".join([
        f"# LLM client throughput ({n} requests, concurrency {args.concurrency}, local chat server)",
        "",
        "| client | requests/s |",
        "| --- | ---: |",
        f"| curate `chat_many` (fresh sqlite cache, retries armed) | {res['curate_rps']} |",
        f"| peer: httpx.Client + thread pool (no cache) | {res['peer_httpx_rps']} |",
        f"| curate `chat_many`, all answers cached | {res['curate_cached_rps']} |",
        "",
        f"ratio curate / peer: **{res['ratio_curate_over_peer']}x**; errors: curate {err_ours}, peer {err_peer}",
    ])
    save("bench_llm", res, md)


if __name__ == "__main__":
    main()
