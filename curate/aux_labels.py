"""TRIDENT's auxiliary attributes, ``aux_label.jsonl``: the one reader and the one writer.

Format (what TRIDENT's ``dataset.py`` reads in ``get_aux_by_pair`` and its
``4_extract_aux_attr_from_sentence.py`` writes): one JSON object per line with one key, a
composition ``"attr obj"`` (attribute, one space, object), mapping to its list of auxiliary
adjectives (TRIDENT reads only a line's first key)::

    {"striped lemon": ["yellow", "round", "bright"]}

TRIDENT looks for it at ``ROOT/aux_label/aux_label.jsonl`` under a CZSL root
(:func:`trident_path`); ``curate attributes`` also writes ``DATASET/aux_label.jsonl``
(:func:`dataset_path`), which the review shows next to each image.

One policy, for every reader (the trainer and the review alike): the file is data a model
is trained with and a reviewer judges, so nothing in it is guessed and nothing is silently
dropped. A line that is not such an object (not JSON, not an object, no pair or more than
one, a pair name that is empty, words that are not a list of strings) and a pair given twice
(on two lines, with the same or different words) are refused: :func:`read_aux_labels`
raises a one-line ``CurateError`` naming ``FILE:LINE``, what is wrong there and how to fix
it, and returns nothing half-read. Blank lines are allowed; words are stripped, empty ones
dropped (a pair may have no words: it then trains with plain cross-entropy). The writer
never writes what the reader would refuse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .errors import CurateError

AUX_FILE = "aux_label.jsonl"
AUX_DIR = "aux_label"
FORMAT = '{"attr obj": ["adj", "adj", "adj"]} per line'
REWRITE = "`curate attributes` rewrites it"


def trident_path(root: str | os.PathLike) -> Path:
    """``ROOT/aux_label/aux_label.jsonl``: where TRIDENT looks under a CZSL root."""
    return Path(root) / AUX_DIR / AUX_FILE


def dataset_path(folder: str | os.PathLike) -> Path:
    """``FOLDER/aux_label.jsonl``: a dataset's (or an output folder's) own file."""
    return Path(folder) / AUX_FILE


def _no_duplicate_keys(where: str) -> Callable[[list[tuple[str, object]]], dict[str, object]]:
    def hook(items: list[tuple[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in items:
            if k in out:
                raise CurateError(f"pair {k!r} given twice on one line", where=where, fix="keep one entry per pair")
            out[k] = v
        return out
    return hook


def parse_aux_labels(text: str, where: str,
                     key: Callable[[str], str | None] | None = None) -> dict[str, list[str]]:
    """The pairs of ``text`` (the file's content; ``where`` names it in errors), in file order.

    ``key`` maps a pair name to the key the caller looks it up by (the review folds case and
    ``_``); two names with the same key are the same pair given twice, and a name it maps to
    nothing is refused like an empty one.
    """
    out: dict[str, list[str]] = {}
    line_of: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{where}:{n}"
        try:
            row = json.loads(line, object_pairs_hook=_no_duplicate_keys(at))
        except json.JSONDecodeError as e:
            raise CurateError(f"line {n} is not JSON ({e.msg} at column {e.colno})", where=at,
                              fix=f"one object per line, {FORMAT}; {REWRITE}") from e
        if not isinstance(row, dict):
            raise CurateError(f"line {n} is a JSON {type(row).__name__}, not an object", where=at,
                              fix=f"one object per line, {FORMAT}")
        if len(row) != 1:
            raise CurateError(f"line {n} holds {len(row)} pairs, not one (TRIDENT reads only a line's first)"
                              if row else f"line {n} names no pair", where=at, fix=f"one pair per line, {FORMAT}")
        for name, words in row.items():
            k = key(name) if key is not None else name.strip()
            if not k:
                raise CurateError(f"line {n}: {name!r} is not a pair name", where=at,
                                  fix='name the pair "attr obj"')
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise CurateError(f"line {n}: the words of {name!r} are not a list of strings", where=at,
                                  fix=f"one object per line, {FORMAT}")
            if k in out:
                raise CurateError(f"pair {name!r} given twice (lines {line_of[k]} and {n})", where=at,
                                  fix="keep one line per pair")
            out[k] = [w.strip() for w in words if w.strip()]
            line_of[k] = n
    return out


def read_aux_labels(path: str | os.PathLike,
                    key: Callable[[str], str | None] | None = None) -> dict[str, list[str]]:
    """Every pair of ``path`` and its words (see the module's policy: anything malformed is refused)."""
    path = Path(path)
    if not path.is_file():
        raise CurateError("auxiliary attributes file not found", where=str(path),
                          fix="run `curate attributes` on the dataset, or pass the file's path")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CurateError(f"cannot read auxiliary attributes ({e})", where=str(path), fix=REWRITE) from e
    return parse_aux_labels(text, str(path), key)


def format_aux_labels(rows: Iterable[tuple[str, Sequence[str]]]) -> str:
    """The file's text for ``(pair, words)`` rows, in the given order (``json.dumps`` defaults, as
    TRIDENT's own script writes). A pair given twice or an empty pair name is a bug: ``ValueError``."""
    seen: set[str] = set()
    lines = []
    for pair, words in rows:
        if not pair.strip() or pair in seen:
            raise ValueError(f"aux_label.jsonl rows need unique, non-empty pairs; got {pair!r} again or empty")
        seen.add(pair)
        lines.append(json.dumps({pair: [str(w) for w in words]}) + "\n")
    return "".join(lines)


def write_aux_labels(path: str | os.PathLike, rows: Iterable[tuple[str, Sequence[str]]]) -> Path:
    """Write ``rows`` to ``path`` atomically (:func:`format_aux_labels`); returns ``path``."""
    from .fsutil import write_text

    path = Path(path)
    write_text(path, format_aux_labels(rows))
    return path
