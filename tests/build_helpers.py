"""The build config the end-to-end tests share.

A random model judges nothing, so the filters are relaxed to keep every candidate up to the
per-pair cap: the tests check the filters' plumbing (funnel, resume, outputs), not their verdicts.
"""

from __future__ import annotations

import json
from typing import Any

RELAXED_FILTERS: dict[str, Any] = {"object_topk": 1000, "attribute_check": False, "comp_threshold": -1.0,
                                   "dedup_threshold": 1.01, "min_resolution": 32}
SMALL: dict[str, Any] = {"max_pairs": 8, "common_pairs": 4, "generator_images": 3, "images_per_pair": 3,
                         "min_images_per_pair": 1, "retrieve_k": 6, "export": ["czsl", "imagefolder"]}


def relaxed_toml(**keys: Any) -> str:
    """``build.toml`` text: relaxed filters, a small build, then ``keys`` (a None value leaves the key out,
    so the build's default applies)."""
    merged = {**RELAXED_FILTERS, **SMALL, **keys}
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in merged.items() if v is not None)
