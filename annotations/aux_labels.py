"""Reading TRIDENT's ``aux_label.jsonl`` tolerantly: composition -> three adjectives.

The writer is another tool, so every shape seen in the wild is accepted, one JSON object
per line: ``{"striped lemon": ["yellow", "round", "bright"]}``, ``{"pair": "striped lemon",
"aux": [...]}`` (also keys composition/name/label and attributes/adjectives/labels/aux_label),
``[attr, obj]`` pairs, ``attr_obj`` keys, comma-separated strings. Lines that fit none of these
are counted and skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PAIR_KEYS = ("pair", "composition", "name", "label", "comp", "text")
WORD_KEYS = ("aux", "aux_label", "aux_labels", "attributes", "adjectives", "labels", "words", "aux_attrs")


def pair_key(value: Any) -> str | None:
    """Normalise a composition: ``"Striped_Lemon"``, ``["striped", "lemon"]`` -> ``"striped lemon"``."""
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        value = f"{value[0]} {value[1]}"
    if not isinstance(value, str) or not value.strip():
        return None
    return re.sub(r"[\s_]+", " ", value.strip().lower())


def _words(value: Any) -> list[str] | None:
    if isinstance(value, str):
        value = [w for w in re.split(r"[,;]", value)]
    if not isinstance(value, list | tuple):
        return None
    words = [w.strip().lower() for w in value if isinstance(w, str) and w.strip()]
    return words or None


def _parse_line(obj: Any) -> tuple[str, list[str]] | None:
    if not isinstance(obj, dict):
        return None
    pk = next((k for k in PAIR_KEYS if k in obj), None)
    wk = next((k for k in WORD_KEYS if k in obj), None)
    if pk and wk:
        pair, words = pair_key(obj[pk]), _words(obj[wk])
        return (pair, words) if pair and words else None
    if len(obj) == 1:
        (k, v), = obj.items()
        pair, words = pair_key(k), _words(v)
        return (pair, words) if pair and words else None
    return None


@dataclass
class AuxLabels:
    by_pair: dict[str, list[str]] = field(default_factory=dict)
    bad_lines: list[int] = field(default_factory=list)


def read_aux_labels(path: Path) -> AuxLabels:
    """Parse ``aux_label.jsonl``; a missing file gives an empty mapping."""
    out = AuxLabels()
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            parsed = _parse_line(json.loads(line))
        except json.JSONDecodeError:
            parsed = None
        if parsed is None:
            out.bad_lines.append(n)
            continue
        out.by_pair[parsed[0]] = parsed[1]
    if out.bad_lines:
        log.warning("%s: %d line(s) not understood and skipped (e.g. line %d)", path, len(out.bad_lines),
                    out.bad_lines[0])
    return out
