"""Options of ``curate triplets`` as one dataclass (the output folder's config fingerprint)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from curate.errors import CurateError
from curate.images import DEFAULT_DECODE, check_decode
from curate.manifest import unit_hash

MODES = ("attribute", "object", "caption")
FORMATS = ("shards", "cirr", "circo", "fashioniq")  # the default exports
OPTIONAL_FORMATS = ("genecis",)  # written only when asked (--format ...,genecis)
SPLITS = ("train", "val", "test")
SPLIT_BY = ("composition", "edit", "image")  # --split-by (builders/triplets/splits.py)
CIRCO_MAX_GTS = 23  # CIRCODataset pads gt_img_ids to 23: more would break its collate
FASHIONIQ_NAMES = ("dress", "shirt", "toptee")  # the only categories CLIP4Cir's FashionIQDataset accepts
MIN_SHARDS = 8  # triplet shards per split (fewer only for fewer triplets): a shard per DataLoader worker


@dataclass
class TripletsConfig:
    dataset: str
    out: str
    modes: list[str] = field(default_factory=lambda: ["attribute", "object"])
    edit_text: str = "template"
    llm: str = "local"
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    splits: str = "train=0.8,val=0.1,test=0.1"
    split_by: str = "composition"
    max_per_pair: int = 10
    max_triplets: int | None = None
    negatives: int = 5
    seed: int = 0
    include_rejected: bool = False
    model: str | None = None
    device: str = "auto"
    circo_max_gts: int = CIRCO_MAX_GTS
    max_tokens: int = 32
    max_group: int = 64
    fashioniq_categories: str = "auto"
    min_shards: int = MIN_SHARDS
    decode: str = DEFAULT_DECODE  # how --model's images are decoded (curate.images): fast or exact

    def validate(self) -> TripletsConfig:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise CurateError(f"unknown --mode {bad or self.modes}", fix=f"use one or more of {', '.join(MODES)}")
        badf = [f for f in self.formats if f not in FORMATS + OPTIONAL_FORMATS]
        if badf:
            raise CurateError(f"unknown --format {badf}",
                              fix=f"use a comma list of {', '.join(FORMATS + OPTIONAL_FORMATS)}")
        if self.edit_text not in ("template", "llm"):
            raise CurateError(f"unknown --edit-text {self.edit_text!r}", fix="use template or llm")
        if self.max_per_pair < 1 or self.negatives < 0:
            raise CurateError("--max-per-pair must be >= 1 and --negatives >= 0")
        if not 1 <= self.circo_max_gts <= CIRCO_MAX_GTS:
            raise CurateError(f"--circo-max-gts must be in 1..{CIRCO_MAX_GTS} (the CIRCO loader pads to 23)")
        parse_splits(self.splits)
        if self.split_by not in SPLIT_BY:
            raise CurateError(f"unknown --split-by {self.split_by!r}",
                              fix="use composition (held-out compositions), edit (held-out edits) or image")
        parse_fashioniq_categories(self.fashioniq_categories)
        if self.min_shards < 1:
            raise CurateError("--min-shards must be >= 1")
        check_decode(self.decode)
        return self


def parse_fashioniq_categories(spec: str) -> dict[str, str] | None:
    """``--fashioniq-categories``: how our reference objects become FashionIQ's category names.

    - ``auto``: every object goes to one of dress / shirt / toptee, the three kept balanced by
      triplet count (returns ``{}``: decided at export);
    - ``objects``: the object names themselves (returns None): our readers take them, CLIP4Cir's
      ``FashionIQDataset`` refuses them;
    - ``OBJ=NAME,OBJ=NAME[,*=NAME]``: explicit, NAME one of dress, shirt, toptee; ``*`` takes every
      object not listed, else those are balanced as in ``auto``.
    """
    spec = spec.strip()
    if spec == "objects":
        return None
    if spec == "auto":
        return {}
    out: dict[str, str] = {}
    for part in spec.split(","):
        obj, eq, name = (x.strip() for x in part.partition("="))
        if not eq or not obj or name not in FASHIONIQ_NAMES:
            raise CurateError(f"bad --fashioniq-categories entry {part.strip()!r}",
                              fix=f"write auto, objects, or OBJ=NAME pairs with NAME in {', '.join(FASHIONIQ_NAMES)}, "
                                  "e.g. 'heart=dress,star=shirt,*=toptee'")
        out[obj] = name
    return out


def parse_splits(spec: str) -> dict[str, float] | None:
    """``train=0.8,val=0.1,test=0.1`` -> ratios (must sum to 1); ``manifest`` -> None (use its split column)."""
    if spec.strip() == "manifest":
        return None
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or name not in SPLITS:
            raise CurateError(f"bad --splits entry {part.strip()!r}",
                              fix="write e.g. train=0.8,val=0.1,test=0.1 (names: train, val, test), or 'manifest'")
        try:
            out[name] = float(value)
        except ValueError as e:
            raise CurateError(f"bad ratio in --splits entry {part.strip()!r}", fix="ratios are numbers like 0.1") from e
        if out[name] < 0:
            raise CurateError(f"negative ratio in --splits ({part.strip()})")
    total = sum(out.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise CurateError(f"--splits ratios sum to {total:g}, not 1 ({spec})",
                          fix="make the ratios add up to 1, e.g. train=0.8,val=0.1,test=0.1")
    return out


def assign_split(key: str, ratios: dict[str, float], seed: int) -> str:
    """Image-level split: every image belongs to one split, so no test image can leak into train."""
    u = unit_hash(seed, key)
    acc = 0.0
    for name in SPLITS:
        acc += ratios.get(name, 0.0)
        if u < acc:
            return name
    return max(ratios, key=lambda n: ratios[n])
