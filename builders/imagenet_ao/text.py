"""Prompt templates for retrieval and the pair filters (class embeddings: curate.embed.zeroshot)."""

from __future__ import annotations

RETRIEVAL_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "an image of a {}.",
)
