"""`curate triplets --edit-text llm` against a real OpenAI-compatible HTTP server on 127.0.0.1.

The server writes an edit instruction for the pair in the prompt; by design some answers are
unusable (they restate the reference or name the old word only), and those must fall back to
a template and be counted, never kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest
from test_triplets import config, make_cir_dataset

from builders.triplets import build_triplets, read_triplets
from builders.triplets.edits import llm_messages, mentions

PROMPT = re.compile(r"Reference image: (.+?)\. Target image: (.+?)\. Instruction:")


def answer(prompt: str) -> tuple[str, str]:
    """(behaviour, text): 'good' names the new words, 'restate' repeats the reference, 'old' the old word."""
    ref, tgt = PROMPT.findall(prompt)[-1]
    new = [w for w in tgt.split() if w not in ref.split()]
    old = [w for w in ref.split() if w not in tgt.split()]
    kind = ["good", "good", "restate", "old"][int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 4]
    if kind == "good":
        return kind, f"Make it {' '.join(new)} instead."
    if kind == "restate":
        return kind, ref
    return kind, f"keep it {' '.join(old)}"


class EditServer:
    def __init__(self) -> None:
        self.calls: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                kind, text = answer(body["messages"][-1]["content"])
                server.calls.append(kind)
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def spec(self) -> str:
        return f"openai:fake-edit@http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> EditServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    ds = make_cir_dataset(root / "ds")
    with EditServer() as srv:
        info = build_triplets(config(ds, root / "o", edit_text="llm", llm=srv.spec, formats=["fashioniq"],
                                     max_per_pair=2))
        calls = list(srv.calls)
    return root / "o", info, calls


def test_llm_texts_are_validated_and_failures_fall_back(llm_run):
    out, info, calls = llm_run
    df = read_triplets(out)
    st = info["edit_texts"]
    prompts = [llm_messages(r)[-1]["content"] for r in df.iter_rows(named=True)]
    assert len(calls) == len(set(prompts))  # one request per distinct prompt, the rest from the cache
    kinds = [answer(p)[0] for p in prompts]
    assert st["llm_ok"] == kinds.count("good") > 0
    assert st["llm_fallback"] == kinds.count("restate") + kinds.count("old") > 0
    assert sum(st["reasons"].values()) == st["llm_fallback"]
    assert [s == "llm" for s in df["edit_source"]] == [k == "good" for k in kinds]
    by_src = dict(df.group_by("edit_source").len().iter_rows())
    assert by_src == {"llm": st["llm_ok"], "template-fallback": st["llm_fallback"]}
    for r in df.iter_rows(named=True):
        assert mentions(r["edit_text"], r["new_word"]), r
        if r["edit_source"] == "llm":
            assert r["edit_text"].startswith("Make it")
    fiq = [item for f in sorted((out / "fashioniq/captions").glob("cap.*.train.json"))  # dress, shirt, toptee
           for item in json.loads(f.read_text())]
    llm_caps = set(df.filter(pl.col("edit_source") == "llm")["edit_text"])
    assert any(item["captions"][0] in llm_caps for item in fiq)


def test_llm_answers_are_cached(llm_run, tmp_path):
    out, _, calls = llm_run
    from curate.llm import load_llm

    row = read_triplets(out).row(0, named=True)
    client = load_llm("openai:fake-edit@http://127.0.0.1:9/v1", cache_path=out / ".curate" / "llm-cache.sqlite",
                      retries=0, timeout=2)
    # the server is gone (port 9 refuses): only the cache can answer
    assert client.chat(llm_messages(row), temperature=0.0, max_tokens=32, seed=0)
