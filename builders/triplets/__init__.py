"""Composed-image-retrieval triplets mined from a dataset, exported as CIRR/CIRCO/FashionIQ/shards.

Python API::

    from builders.triplets import TripletsConfig, build_triplets, read_triplets
    info = build_triplets(TripletsConfig(dataset="demo-out/imagenet-ao", out="demo-out/imagenet-ao/triplets"))
    df = read_triplets("demo-out/imagenet-ao/triplets")   # id, reference, target, edit_text, mode, split, ...

Modules: ``source`` (dataset/shards, missing images, image features), ``captions`` (one-word
caption pairs by a polars self-join), ``mining`` (targets, ground truths, hard negatives),
``edits`` (templates, LLM rewrite + validation), ``exports`` (format writers), ``pipeline``.
"""

from .config import TripletsConfig
from .pipeline import build_triplets, read_triplets, triplets_info

__all__ = ["TripletsConfig", "build_triplets", "read_triplets", "triplets_info"]
