"""What every LLM backend provides, and the errors the client turns into retries or failures."""

from __future__ import annotations

from typing import Protocol

from ..errors import CurateError


class LLMError(CurateError):
    """A request that failed for good (after its retries, or at once when retrying cannot help)."""


class LLMUnreachable(LLMError):
    """The endpoint cannot be reached at all; the client stops sending and keeps what it has."""


class RetryableError(Exception):
    """A failure worth retrying (429, 5xx, timeout, dropped connection).

    ``retry_after`` carries the server's ``Retry-After`` in seconds when it sent one;
    ``unreachable`` marks connection failures, which become ``LLMUnreachable`` when retries run out.
    """

    def __init__(self, reason: str, retry_after: float | None = None, unreachable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.unreachable = unreachable


class Backend(Protocol):
    """One way to get a chat completion. ``kind`` and ``model`` key the answer cache."""

    kind: str
    model: str
    max_parallel: int

    def complete(self, messages: list[dict], temperature: float, max_tokens: int, seed: int) -> str:
        """Return the assistant's text; raise ``RetryableError`` or ``LLMError``."""
        ...

    def close(self) -> None: ...
