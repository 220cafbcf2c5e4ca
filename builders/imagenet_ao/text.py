"""Text-side helpers: prompt templates and class text embeddings for filters and retrieval."""

from __future__ import annotations

import numpy as np

RETRIEVAL_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "an image of a {}.",
)


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def pair_text(attr: str, obj: str) -> str:
    return f"{attr} {obj}"


def mean_text_embeddings(encoder, classnames: list[str], templates, batch_size: int = 256) -> np.ndarray:
    """Per class: mean of the normalised template embeddings, renormalised (CLIP's recipe)."""
    texts = [t.format(c) for c in classnames for t in templates]
    emb = encoder.encode_texts(texts, batch_size=batch_size).reshape(len(classnames), len(templates), -1)
    m = emb.mean(1)
    return (m / np.linalg.norm(m, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
