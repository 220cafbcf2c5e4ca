"""Zero-shot classification helpers: the 80 OpenAI ImageNet prompt templates and class embeddings.

The templates are kept here as data (importing open_clip just for them costs seconds).
A class embedding is CLIP's recipe: the mean of the L2-normalised embeddings of every
template filled with the class name, renormalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .store import l2_normalise

OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)

SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def class_text_embeddings(encoder, classnames: Sequence[str], templates: Sequence[str] = OPENAI_IMAGENET_TEMPLATES,
                          batch_size: int = 256) -> np.ndarray:
    """``[C, D]`` float32: per class, the renormalised mean of its template embeddings."""
    classnames = list(classnames)
    if not classnames:
        return np.zeros((0, getattr(encoder, "dim", 0) or 0), np.float32)
    texts = [t.format(c) for c in classnames for t in templates]
    emb = np.asarray(encoder.encode_texts(texts, batch_size=batch_size), dtype=np.float32)
    emb = emb.reshape(len(classnames), len(templates), -1).mean(1)
    return l2_normalise(emb)


def topk_accuracy(image_emb: np.ndarray, class_emb: np.ndarray, labels: Sequence[int],
                  ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of images whose true class is among the ``k`` highest-scoring classes."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return {k: 0.0 for k in ks}
    order = np.argsort(-(image_emb @ class_emb.T), axis=1)
    return {k: float((order[:, :k] == labels[:, None]).any(1).mean()) for k in ks}
