"""One LLM client for the toolkit (auxiliary attributes, triplet edit texts).

    from curate.llm import load_llm
    llm = load_llm("local")                                  # bundled SmolLM2 GGUF, in-process
    llm = load_llm("openai:qwen2.5@http://127.0.0.1:8000/v1", concurrency=32, api_key_env="MY_KEY")
    text = llm.chat([{"role": "user", "content": "..."}], temperature=0.0, max_tokens=64, seed=0)
    answers = llm.chat_many([messages, ...])                 # list[str | Exception], order kept

Answers are cached in sqlite (``cache_path``, default ``$CURATE_CACHE/llm/answers.sqlite``)
keyed by backend, model, messages and sampling params.
"""

from __future__ import annotations

from .base import LLMError, LLMUnreachable, RetryableError
from .cache import AnswerCache, request_key
from .client import DEFAULT_SPEC, VALID_FORMS, LLMClient, LLMSpec, default_cache_path, load_llm, parse_spec

__all__ = [
    "DEFAULT_SPEC", "VALID_FORMS", "AnswerCache", "LLMClient", "LLMError", "LLMSpec", "LLMUnreachable",
    "RetryableError", "default_cache_path", "load_llm", "parse_spec", "request_key",
]
