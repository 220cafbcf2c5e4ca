"""TRIDENT's ``aux_label.jsonl`` as the review shows it: composition -> its auxiliary adjectives.

The file is read by ``curate.aux_labels`` (its one reader, one policy: a malformed line or a
pair given twice is refused with its line number, never skipped); here its pair names are
folded to the review's keys (``"Striped_Lemon"`` -> ``"striped lemon"``), so two names that
fold to the same key are the same pair given twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.aux_labels import read_aux_labels as read_file


def pair_key(value: Any) -> str | None:
    """Normalise a composition: ``"Striped_Lemon"``, ``["striped", "lemon"]`` -> ``"striped lemon"``."""
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        value = f"{value[0]} {value[1]}"
    if not isinstance(value, str) or not value.strip():
        return None
    return re.sub(r"[\s_]+", " ", value.strip().lower())


@dataclass
class AuxLabels:
    by_pair: dict[str, list[str]] = field(default_factory=dict)


def read_aux_labels(path: Path) -> AuxLabels:
    """Parse ``aux_label.jsonl`` (keys folded by :func:`pair_key`, words lower-cased); a missing
    file gives an empty mapping, a malformed one a ``CurateError`` naming its line."""
    if not path.exists():
        return AuxLabels()
    table = read_file(path, key=pair_key)
    return AuxLabels({k: [w.lower() for w in words] for k, words in table.items()})
