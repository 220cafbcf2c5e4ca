"""Benchmark: sustained requests/s of curate's LLM client against a local chat-completions server.

The server is tests/llm_server.py (a real ThreadingHTTPServer speaking the chat-completions
API) in its own process, so client and server do not share a GIL. Same prompts, same
concurrency, one run:

- ``curate``: ``load_llm("openai:...").chat_many(...)`` with a fresh sqlite cache (every
  answer committed as it arrives, retries armed), then the same batch again (all cache hits);
- ``peer``: an ``httpx.Client`` (the transport the OpenAI SDK uses) driven by a thread pool of
  the same size, no cache, no retries: the bare cost of the HTTP round trips.

Each side runs in an interpreter of its own (peak RSS its own), order alternated, median of
``--repeats``; prompts differ between runs so no side sees a cache it did not fill. A side
with errors the other does not have is reported as a mismatch instead of a ratio. Prints the
ratio and writes bench/results/bench_llm.{json,md}.

    .venv/bin/python bench/bench_llm.py [--requests 2000] [--concurrency 32] [--repeats 3]
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

from bench.common import (  # noqa: E402
    alternate,
    fmt_ratio,
    load_average,
    median,
    peak_rss_mb,
    ratio_or_mismatch,
    save,
    summary_row,
    uptime,
)

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


def child(side: str, base: str, n: int, concurrency: int, offset: int) -> None:
    """One side in this fresh interpreter: prints {seconds, cached_seconds, errors, peak_rss_mb}."""
    import json

    batch = [[{"role": "user", "content": m[0]["content"] + f" (run {offset})"}] for m in prompts(n)]
    if side == "curate":
        with tempfile.TemporaryDirectory() as tmp:
            cold, warm, errors = run_curate(base, batch, concurrency, Path(tmp) / "answers.sqlite")
    else:
        (cold, errors), warm = run_peer(base, batch, concurrency), None
    print(json.dumps({"seconds": cold, "cached_seconds": warm, "errors": errors, "peak_rss_mb": peak_rss_mb()}))


def isolated(side: str, base: str, n: int, concurrency: int, offset: int) -> dict:
    import json

    r = subprocess.run([sys.executable, __file__, "--child", side, base, str(n), str(concurrency), str(offset)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        side, base, n, conc, offset = args.child
        child(side, base, int(n), int(conc), int(offset))
        return
    print(uptime(), flush=True)
    proc, base = start_server()
    counter = iter(range(1_000_000))
    try:
        run_peer(base, prompts(50), args.concurrency)  # warm the server process
        runs = alternate({side: (lambda s=side: isolated(s, base, args.requests, args.concurrency, next(counter)))
                          for side in ("curate", "peer")}, args.repeats)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    n = args.requests
    secs = {k: median([r["seconds"] for r in v]) for k, v in runs.items()}
    rss = {k: median([r["peak_rss_mb"] for r in v]) for k, v in runs.items()}
    errors = {k: sum(r["errors"] for r in v) for k, v in runs.items()}
    warm = median([r["cached_seconds"] for r in runs["curate"]])
    mismatch = None if errors["curate"] == errors["peer"] else f"errors differ ({errors['curate']} vs {errors['peer']})"
    ratio = ratio_or_mismatch(n / secs["curate"], n / secs["peer"], mismatch)
    load = load_average()
    res = {"requests": n, "concurrency": args.concurrency, "repeats": args.repeats,
           "curate_rps": round(n / secs["curate"], 1), "curate_cached_rps": round(n / warm, 1),
           "peer_httpx_rps": round(n / secs["peer"], 1), "ratio_curate_over_peer": ratio,
           "errors": errors, "peak_rss_mb": rss, "load": load, "runs": runs,
           "summary": [summary_row("LLM client vs httpx + threads", f"{n / secs['curate']:,.0f} req/s",
                                   f"{n / secs['peer']:,.0f} req/s", ratio, ">= 1.0x (cache, retries included)",
                                   peak_rss_mb={k: round(v) for k, v in rss.items()})]}
    md = "\n".join([
        f"# LLM client throughput ({n} requests, concurrency {args.concurrency}, local chat server)",
        "",
        "| client | requests/s | peak RSS MB |",
        "| --- | ---: | ---: |",
        f"| curate `chat_many` (fresh sqlite cache, retries armed) | {res['curate_rps']:,} | {rss['curate']:.0f} |",
        f"| peer: httpx.Client + thread pool (no cache) | {res['peer_httpx_rps']:,} | {rss['peer']:.0f} |",
        f"| curate `chat_many`, all answers cached | {res['curate_cached_rps']:,} | - |",
        "",
        f"ratio curate / peer: **{fmt_ratio(ratio)}**; errors: curate {errors['curate']}, peer {errors['peer']}. "
        f"Median of {args.repeats}, order alternated, each side in its own interpreter; load "
        f"{', '.join(map(str, load))}.",
    ])
    save("bench_llm", res, md)


if __name__ == "__main__":
    main()
