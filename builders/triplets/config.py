"""Options of ``curate triplets`` as one dataclass (the output folder's config fingerprint)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from curate.errors import CurateError
from curate.manifest import unit_hash

MODES = ("attribute", "object", "caption")
FORMATS = ("shards", "cirr", "circo", "fashioniq")  # the default exports
OPTIONAL_FORMATS = ("genecis",)  # written only when asked (--format ...,genecis)
SPLITS = ("train", "val", "test")
CIRCO_MAX_GTS = 23  # CIRCODataset pads gt_img_ids to 23: more would break its collate


@dataclass
class TripletsConfig:
    dataset: str
    out: str
    modes: list[str] = field(default_factory=lambda: ["attribute", "object"])
    edit_text: str = "template"
    llm: str = "local"
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    splits: str = "train=0.8,val=0.1,test=0.1"
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
        return self


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
