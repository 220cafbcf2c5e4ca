"""The on-disk answer cache: one sqlite row per (backend, model, prompt, sampling params).

Why sqlite: many threads write answers as they arrive, a kill -9 must lose at most the
requests in flight, and a rerun must find every earlier answer without re-reading a big
file. Answers are committed as they arrive (WAL mode; commits grouped at most 0.1 s apart so
many threads do not queue on them), so an interrupted run resumes where it stopped and a
repeated run costs no requests at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import CurateError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    answer TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def request_key(backend: str, model: str, messages: list[dict], params: dict[str, Any]) -> str:
    """A stable hash of everything that decides an answer (not the endpoint URL: same model, same answer)."""
    blob = json.dumps({"backend": backend, "model": model, "messages": messages, "params": params},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerCache:
    """Thread-safe sqlite cache of LLM answers; every ``put`` is committed at once."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except (OSError, sqlite3.Error) as e:
            raise CurateError(f"cannot open the LLM answer cache ({e})", where=str(self.path),
                              fix="pass another cache path, or delete the file if it is corrupt") from e
        self._lock = threading.Lock()
        self.commit_every = 0.1  # seconds; a kill -9 loses at most this much of the answers
        self._last_commit = 0.0

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for i in range(0, len(uniq), 500):
                chunk = uniq[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for k, a in self._db.execute(f"SELECT key, answer FROM answers WHERE key IN ({marks})", chunk):
                    found[k] = a
        return found

    def put(self, key: str, backend: str, model: str, request: dict[str, Any], answer: str) -> None:
        """Store an answer; commits are grouped (at most ``commit_every`` s apart) so 32 threads do not queue on them."""
        blob = json.dumps(request, sort_keys=True, ensure_ascii=False)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                             (key, backend, model, blob, answer, time.time()))
            now = time.monotonic()
            if now - self._last_commit >= self.commit_every:
                self._db.commit()
                self._last_commit = now

    def flush(self) -> None:
        """Commit what ``put`` has not committed yet."""
        with self._lock:
            self._db.commit()
            self._last_commit = time.monotonic()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.commit()
            self._db.close()
