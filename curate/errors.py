"""The one user-facing error type.

Every failure a user can fix (bad input, bad config, busy output folder) is raised as a
``CurateError``: the CLI prints its one-line message and exits 2, without a traceback
unless ``--debug`` is given. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CurateError(Exception):
    """A failure the user can fix: *what* went wrong, *where*, and *how to fix* it."""

    exit_code = 2

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [self.what]
        if self.where:
            parts[0] = f"{self.where}: {self.what}"
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return " — ".join(parts)
