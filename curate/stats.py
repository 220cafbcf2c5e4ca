"""Pure statistics every room shares: the attribute/object co-occurrence NMI of a corpus.

``builders.imagenet_ao.rarity`` reports it for a caption corpus; ``training.study`` for the
labelled images a model was trained on (both through :func:`nmi`, so the numbers compare).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def nmi(pairs: np.ndarray) -> float:
    """Normalised mutual information of attribute/object co-occurrence, 2 I(A;O) / (H(A) + H(O)).

    The joint distribution is the normalised co-occurrence matrix (one event per caption that
    names an attribute and an object), as in the ImageNet-AO analysis of LAION captions.
    """
    total = pairs.sum()
    if total <= 0:
        return 0.0
    p = pairs / total
    pa, po = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, po)[nz])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    ho = -float((po[po > 0] * np.log(po[po > 0])).sum())
    return 0.0 if ha + ho == 0 else max(0.0, 2 * mi / (ha + ho))


def cooccurrence(pairs: Iterable[tuple[str, str]]) -> np.ndarray:
    """The attribute x object count matrix of (attribute, object) events (rows and columns sorted by name)."""
    pairs = list(pairs)
    attrs = sorted({a for a, _ in pairs})
    objs = sorted({o for _, o in pairs})
    ai, oi = {a: i for i, a in enumerate(attrs)}, {o: i for i, o in enumerate(objs)}
    m = np.zeros((len(attrs), len(objs)), np.int64)
    for a, o in pairs:
        m[ai[a], oi[o]] += 1
    return m
