"""Content fingerprints of what a stage reads, so a done marker knows when its inputs changed.

``fingerprint(*parts)`` hashes any mix of values and paths into a 16-hex-digit string:

- a ``pathlib.Path`` to a file: its bytes (sha256). Files over ``LARGE`` bytes (pool shards of a
  web-scale build) are fingerprinted by size, modification time and their first and last MiB,
  so a rerun does not re-read terabytes; an edited file changes size, mtime or both;
- a ``Path`` to a folder: every file under it (relative name + fingerprint), sorted; curate's
  own metadata (``.curate/``) and half-written temp files are left out;
- a missing path: the word ``missing`` (a path that appears later changes the fingerprint);
- ``None``, strings, numbers, lists, tuples and dicts: their JSON (a ``str`` is a value, never a
  path: wrap paths in ``Path`` to hash their content).

File hashes are memoised per process by (path, size, mtime_ns, inode), so a manifest read by
five stages is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .fsutil import TMP_MARK

LARGE = 64 << 20
_EDGE = 1 << 20
_META = ".curate"
_memo: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (or, over ``LARGE``, of its size, mtime and first/last MiB)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _memo:
        return _memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= LARGE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f"large:{st.st_size}:{st.st_mtime_ns}:".encode())
            h.update(f.read(_EDGE))
            f.seek(st.st_size - _EDGE)
            h.update(f.read(_EDGE))
    _memo[key] = digest = h.hexdigest()
    return digest


def _path_part(path: Path) -> Any:
    if path.is_file():
        return ["file", file_digest(path)]
    if path.is_dir():
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != _META)
            for n in sorted(names):
                if TMP_MARK in n:
                    continue
                p = Path(root) / n
                if p.is_file():
                    files.append([p.relative_to(path).as_posix(), file_digest(p)])
        return ["dir", files]
    return ["missing"]


def _part(x: Any) -> Any:
    if isinstance(x, Path):
        return _path_part(x)
    if isinstance(x, dict):
        return {str(k): _part(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_part(v) for v in x]
    return x


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of values and of the content of paths (see the module docstring)."""
    blob = json.dumps([_part(p) for p in parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def spec_paths(spec: str | None) -> list[Path]:
    """The local files a model or LLM spec names, as paths (so :func:`fingerprint` hashes their content).

    ``mini:PATH``, ``local:PATH.gguf``, ``open_clip:ARCH//abs/ckpt.pt``, ``open_clip:ARCH/rel/ckpt.pt``,
    ``hf:LOCAL_DIR``: the existing file or folder; a hub name or URL names none (its name is the input).
    """
    if not spec:
        return []
    rest = spec.partition(":")[2]
    candidates = [rest, rest.partition("/")[2]]
    found = []
    for c in candidates:
        p = Path(c).expanduser() if c else None
        if p is not None and p.exists() and p not in found:
            found.append(p)
    return found


def model_fingerprint(spec: str | None) -> str:
    """A model or LLM spec and the content of the files it names: what a cache of its outputs is keyed by
    (new weights under the same ``mini:PATH`` or checkpoint path are another model)."""
    return fingerprint(spec, spec_paths(spec))
