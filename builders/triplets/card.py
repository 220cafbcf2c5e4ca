"""The triplets folder's ``README.md``: a Hub YAML header over ``shards/`` plus what each export is.

With it, ``datasets.load_dataset(TRIPLETS_FOLDER)`` opens the triplet shards (``ref.jpg``,
``tgt.jpg`` as images, ``json`` typed) with no arguments, and checks each split's size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from curate.fsutil import write_text
from curate.hub import card_header, fields_markdown, loading_snippet, scan_shards
from curate.shards import list_shards

from .config import SPLITS
from .splits import describe

log = logging.getLogger(__name__)

FIELD_DOCS = {
    "id": "triplet id (also `__key__`): `SPLIT-MODE-NNNNNNN`",
    "pair_id": "integer id (CIRR's pairid)",
    "reference": "key of the reference image in the source dataset",
    "target": "key of the target image",
    "edit_text": "the modification text",
    "edit_text_2": "a second wording (FashionIQ has two captions per pair)",
    "edit_source": "`template`, `llm` or `template-fallback` (an LLM answer refused)",
    "mode": "`attribute` (same object, new attribute), `object` (same attribute, new object) or `caption`",
    "split": "train / val / test",
    "ref_attr": "reference attribute (\"\" when the source has none)",
    "ref_obj": "reference object (\"\" when the source has none)",
    "tgt_attr": "target attribute",
    "tgt_obj": "target object",
    "old_word": "the word the edit replaces",
    "new_word": "the word it puts in",
    "negatives": "hard negatives (keys): close to the query, never a valid target",
    "gt": "every valid target (keys), the target first",
}


def write_triplets_card(out: Path, info: dict[str, Any]) -> Path | None:
    """``OUT/README.md``; None when there are no shards."""
    try:
        shards = list_shards(out / "shards")
    except Exception:  # noqa: BLE001 - no shards (every split empty): no card
        return None
    schema = scan_shards(shards)
    if schema.problems:
        log.warning("triplet shards: %s", "; ".join(schema.problems[:5]))
    by_split = info.get("counts", {}).get("by_split", {})
    per_split = {s: sum(1 for p in shards if p.name.startswith(f"{s}-")) for s in SPLITS}
    splits = {s: (f"shards/{s}-*.tar", int(by_split[s])) for s in SPLITS if by_split.get(s)}
    header = card_header(splits, schema, pretty_name="composed image retrieval triplets",
                         task_categories=["image-to-image", "image-feature-extraction"],
                         tags=["composed-image-retrieval", "cirr", "circo", "fashioniq", "webdataset", "curate"])
    fewest = min((per_split[s] for s in splits), default=1)
    first = next(iter(splits), "test")
    exports = "\n".join(f"- `{f}`: {where}" for f, where in info.get("export_roots", {}).items())
    fiq = info.get("fashioniq_categories")
    fiq_md = ("\n\nFashionIQ categories (object -> name): "
              + ", ".join(f"{o} -> {n}" for o, n in fiq["map"].items())
              + _fiq_dropped(fiq.get("dropped", {}))) if fiq else ""
    c = info.get("counts", {})
    split_md = f"\n\n{describe(info['split'])}" if info.get("split") else ""
    body = f"""# composed image retrieval triplets

(reference image, modification text, target image) mined by `curate triplets` from
`{info.get('source_dataset', '?')}`: {c.get('triplets', 0):,} triplets, by mode {c.get('by_mode', {})},
by split {c.get('by_split', {})}.{split_md}

## Load it

{loading_snippet("path/to/triplets", f"shards/{first}-*.tar", fewest)}

Columns: `ref.jpg`, `tgt.jpg` (images), `json` (the fields below), `__key__`, `__url__`.
`curate train cir --triplets THIS_FOLDER` trains on it; `training.data.triplet_samples` reads it
with review verdicts honoured.

## Fields of `ID.json`

Every field is in every sample with one type (lists may be empty).

{fields_markdown(schema, FIELD_DOCS)}

## Exports (each in its benchmark's official layout)

{exports}{fiq_md}
"""
    path = out / "README.md"
    write_text(path, header + "\n" + body)
    return path


def _fiq_dropped(dropped: dict[str, dict[str, int]]) -> str:
    """FashionIQ keeps a triplet only within one category: what its export left out, by reason."""
    cross = sum(d.get("cross_category", 0) for d in dropped.values())
    unknown = sum(d.get("unknown_category", 0) for d in dropped.values())
    if not cross and not unknown:
        return ""
    return (f". Left out of the FashionIQ export: {cross:,} triplets whose reference and target are of "
            f"different categories, {unknown:,} with an object of no known category")
