"""The LLM client against a real local chat-completions server (tests/llm_server.py) and the real GGUF."""

from __future__ import annotations

import time

import pytest
from llm_server import FakeChatServer, good_answer

from curate.errors import CurateError
from curate.llm import VALID_FORMS, LLMError, LLMUnreachable, load_llm, parse_spec
from curate.paths import find_gguf


def ask(pair: str) -> list[dict]:
    return [{"role": "user", "content": f"Please give me three adjectives that can describe the visual "
                                        f"feature of a photo of a/an {pair} well."}]


def client(server: FakeChatServer, tmp_path, **kw):
    kw = {"backoff": 0.05, "timeout": 5, **kw}
    return load_llm(server.spec(), cache_path=tmp_path / "cache.sqlite", **kw)


def test_good_answer_is_cached_across_clients(tmp_path):
    with FakeChatServer() as srv:
        with client(srv, tmp_path) as llm:
            a = llm.chat(ask("red circle"))
            assert a == good_answer(ask("red circle")[0]["content"])
            assert llm.chat(ask("red circle")) == a
        assert srv.count() == 1
        with client(srv, tmp_path) as llm2:  # a new process would see the same sqlite file
            assert llm2.chat(ask("red circle")) == a
            assert llm2.requests_sent == 0
        assert srv.count() == 1
        body = srv.log[0][2]
        assert body["temperature"] == 0.0 and body["seed"] == 0 and body["model"] == "fake-model"


def test_cache_key_includes_sampling_params(tmp_path):
    with FakeChatServer() as srv, client(srv, tmp_path) as llm:
        llm.chat(ask("red circle"))
        llm.chat(ask("red circle"), seed=1)
        llm.chat(ask("red circle"), temperature=0.7)
        assert srv.count() == 3
        assert [b["seed"] for _, _, b in srv.log] == [0, 1, 0]


def test_chat_many_keeps_order_and_sends_duplicates_once(tmp_path):
    pairs = [f"red shape{i}" for i in range(24)] + ["red shape0", "red shape1"]
    seen = []
    with FakeChatServer() as srv, client(srv, tmp_path, concurrency=8) as llm:
        out = llm.chat_many([ask(p) for p in pairs], on_result=lambda i, r: seen.append(i))
        assert out == [good_answer(ask(p)[0]["content"]) for p in pairs]
        assert srv.count() == 24
        assert sorted(seen) == list(range(len(pairs)))


def test_429_waits_for_retry_after(tmp_path):
    with FakeChatServer(script=["429"], retry_after="1") as srv, client(srv, tmp_path) as llm:
        t0 = time.monotonic()
        assert llm.chat(ask("red circle")) == good_answer(ask("red circle")[0]["content"])
        assert time.monotonic() - t0 >= 0.95
        (t_429, b1, _), (t_ok, b2, _) = srv.log
        assert (b1, b2) == ("429", "good") and t_ok - t_429 >= 0.95


def test_500_is_retried_then_gives_up(tmp_path):
    with FakeChatServer(script=["500", "500"]) as srv, client(srv, tmp_path, retries=4) as llm:
        assert llm.chat(ask("red circle"))
        assert srv.count("500") == 2 and srv.count("good") == 1
    with FakeChatServer(default="500") as srv, client(srv, tmp_path / "b", retries=2) as llm:
        with pytest.raises(LLMError, match="HTTP 500.*3 tries"):
            llm.chat(ask("red circle"))
        assert srv.count() == 3


def test_400_is_not_retried(tmp_path):
    with FakeChatServer(script=["400"]) as srv, client(srv, tmp_path) as llm:
        with pytest.raises(LLMError, match="HTTP 400"):
            llm.chat(ask("red circle"))
        assert srv.count() == 1


def test_hang_past_timeout_is_retried(tmp_path):
    with FakeChatServer(script=["hang"], hang_s=10) as srv, client(srv, tmp_path, timeout=0.5) as llm:
        t0 = time.monotonic()
        assert llm.chat(ask("red circle")) == good_answer(ask("red circle")[0]["content"])
        assert time.monotonic() - t0 < 5
        assert [b for _, b, _ in srv.log] == ["hang", "good"]


def test_dropped_connection_is_retried(tmp_path):
    with FakeChatServer(script=["close", "close"]) as srv, client(srv, tmp_path) as llm:
        assert llm.chat(ask("red circle"))
        assert srv.count("close") == 2 and srv.count("good") == 1


def test_unreachable_endpoint_is_a_clear_error(tmp_path):
    srv = FakeChatServer().start()
    srv.stop()
    with client(srv, tmp_path, retries=1) as llm:
        with pytest.raises(LLMUnreachable) as e:
            llm.chat(ask("red circle"))
    assert f"cannot connect to {srv.base_url}" in e.value.message and "rerun" in e.value.message


def test_a_server_resetting_every_new_connection_is_unreachable(tmp_path):
    """A dying server can accept a connection and reset it: on a connection just opened that is as
    unreachable as a refused connect (found as a 1-in-30 flake of the mid-batch test below)."""
    import socket
    import struct
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def reset_all() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=reset_all, daemon=True).start()
    try:
        with load_llm(f"openai:fake-model@http://127.0.0.1:{port}/v1", cache_path=tmp_path / "c.sqlite",
                      backoff=0.01, timeout=5, retries=1) as llm:
            with pytest.raises(LLMUnreachable, match="ConnectionResetError"):
                llm.chat(ask("red circle"))
    finally:
        listener.close()


def test_unreachable_mid_batch_keeps_answers_and_rerun_resumes(tmp_path):
    pairs = [f"red shape{i}" for i in range(8)]
    with FakeChatServer(script=["good"] * 3 + ["die"]) as srv:
        with client(srv, tmp_path, concurrency=1, retries=1) as llm:
            out = llm.chat_many([ask(p) for p in pairs])
            assert all(isinstance(a, str) for a in out[:3])
            assert all(isinstance(a, LLMUnreachable) for a in out[3:]), [repr(a) for a in out[3:]]
            assert len(llm.cache) == 3
            assert srv.count() == 4  # stopped sending after the endpoint went away
    with FakeChatServer() as srv2, client(srv2, tmp_path, concurrency=4) as llm:
        out = llm.chat_many([ask(p) for p in pairs])
        assert out == [good_answer(ask(p)[0]["content"]) for p in pairs]
        assert srv2.count() == 5


def test_unknown_spec_lists_valid_forms():
    for bad in ["gpt4", "openai:gpt-4o", "openai:@http://x", "hf:foo"]:
        with pytest.raises(CurateError) as e:
            parse_spec(bad)
        for form in VALID_FORMS:
            assert form.split()[0] in e.value.message


def test_missing_gguf_and_missing_key(tmp_path):
    with pytest.raises(CurateError, match="GGUF model file not found"):
        load_llm(f"local:{tmp_path / 'nope.gguf'}", cache_path=tmp_path / "c.sqlite")
    with pytest.raises(CurateError, match="CURATE_TEST_NO_SUCH_KEY is not set"):
        load_llm("openai:m@http://127.0.0.1:9/v1", cache_path=tmp_path / "c.sqlite",
                 api_key_env="CURATE_TEST_NO_SUCH_KEY")


def test_api_key_is_sent_as_bearer(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_TEST_KEY", "sk-test-123")
    with FakeChatServer() as srv, client(srv, tmp_path, api_key_env="CURATE_TEST_KEY") as llm:
        llm.chat(ask("red circle"))
        assert srv.headers[0].get("Authorization") == "Bearer sk-test-123"


@pytest.mark.slow
@pytest.mark.skipif(find_gguf() is None, reason="SmolLM2 GGUF not installed (make install)")
def test_local_gguf_is_deterministic_and_cached(tmp_path):
    with load_llm("local", cache_path=tmp_path / "c.sqlite") as llm:
        msgs = ask("striped lemon")
        a = llm.chat(msgs, max_tokens=16)
        assert isinstance(a, str) and a.strip()
        assert llm.requests_sent == 1
        out = llm.chat_many([msgs, ask("red circle")], max_tokens=16)
        assert out[0] == a and isinstance(out[1], str)
        assert llm.requests_sent == 2
    with load_llm("local", cache_path=tmp_path / "other.sqlite") as llm:
        assert llm.chat(msgs, max_tokens=16) == a  # greedy decoding repeats itself


def test_local_thread_count_follows_idle_cores(monkeypatch):
    from curate.llm.local_backend import default_threads

    monkeypatch.setenv("CURATE_LLM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("CURATE_LLM_THREADS")
    import os

    assert 1 <= default_threads() <= min(4, os.cpu_count() or 1)
