"""TRIDENT's hyper-parameters and the presets of the official configs (xud-yan/Trident ``config/*.yml``).

Every preset trains with Adam (lr 2e-4, word embeddings 1.5e-6, weight decay 5e-5), batch
128, 50 epochs, learning rate x0.1 after epochs 30 and 40, seed 124, temperature 0.05,
loss weights 0.1 (orthogonality) and 0.25 (disentanglement), dropouts 0.3 (FAA) and 0.05
(word composition). They differ in the numbers of global condition masks G and local
poolings L, the smoothing alpha and the evaluation top-k:

============  ======  ======  =====  =====  =======================================
preset         G       L      alpha  top-k  widths
============  ======  ======  =====  =====  =======================================
mit-states     6       12     0.09   1      projector 4096, dim 1024 (the paper's)
cgqa           2       4      0.03   1      projector 4096, dim 1024
vaw            4       8      0.03   3      projector 4096, dim 1024
demo           2       4      0.09   1      projector 128, dim 128, 16 tokens (CPU, minutes)
============  ======  ======  =====  =====  =======================================

The demo preset also average-pools the backbone's token grid to 16 tokens (``local_tokens``;
the demo mini-CLIP's last feature map is 8x8): it trains in about a minute on 2 CPU cores.
``dim`` is both the FAA output (``img_emb_dim``) and the joint embedding (``emb_dim``), 1024
in every official config: the disentangler concatenates local and global tokens, so the two
must match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from curate.errors import CurateError
from curate.images import check_decode

# fields that define the network's shapes: a checkpoint only fits a model with the same ones
SHAPE_FIELDS = ("model", "global_masks", "local_poolings", "dim", "proj_dim", "local_tokens")
BN_GROUPS = ("official", "joint")
PARTNER_RULES = ("official", "drop")
# what a run.json written before these options trained with (read back as such, not as the defaults)
BEFORE_OPTIONS = {"bn_groups": "joint", "partners": "drop", "decode": "exact"}


@dataclass
class TridentConfig:
    preset: str = "demo"
    model: str = "trident"            # trident | linear (the linear composition baseline)
    global_masks: int = 2             # G
    local_poolings: int = 4           # L
    alpha: float = 0.09               # attribute smoothing (0: plain cross-entropy)
    topk: int = 1
    dim: int = 128                    # FAA output = joint embedding width
    proj_dim: int = 128               # learned projection of local tokens (a --projector sets its own)
    local_tokens: int = 0             # >0: average-pool the square token grid to this many tokens (speed)
    faa_dropout: float = 0.3
    compose_dropout: float = 0.05
    temperature: float = 0.05
    w_ortho: float = 0.1
    w_dis: float = 0.25
    lr: float = 2e-4
    lr_words: float = 1.5e-6
    weight_decay: float = 5e-5
    batch_size: int = 128
    epochs: int = 50
    milestones: list[int] = field(default_factory=lambda: [30, 40])
    decay: float = 0.1
    seed: int = 124
    bn_groups: str = "official"       # official: FAA BatchNorm per image group (anchors, same-attribute,
    #                                   same-object partners; 3 running-stat updates); joint: one batch of the
    #                                   de-duplicated images (older runs)
    partners: str = "official"        # official: an anchor without a partner gets the last training image,
    #                                   kept in the pair and orthogonality losses; drop: left out of them
    decode: str = "fast"              # the backbone's JPEG decode (curate.images): fast (DCT scaling to its
    #                                   input size) | exact (full size; what runs before the option used)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TridentConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{**BEFORE_OPTIONS, **{k: v for k, v in d.items() if k in names}})


_PAPER = {"dim": 1024, "proj_dim": 4096}
PRESETS: dict[str, TridentConfig] = {
    "mit-states": TridentConfig(preset="mit-states", global_masks=6, local_poolings=12, alpha=0.09, **_PAPER),
    "cgqa": TridentConfig(preset="cgqa", global_masks=2, local_poolings=4, alpha=0.03, **_PAPER),
    "vaw": TridentConfig(preset="vaw", global_masks=4, local_poolings=8, alpha=0.03, topk=3, **_PAPER),
    "demo": TridentConfig(preset="demo", local_tokens=16),
}


def preset(name: str, **overrides: Any) -> TridentConfig:
    """The named preset with ``overrides`` (None values ignored)."""
    if name not in PRESETS:
        raise CurateError(f"unknown preset {name!r}", fix=f"use one of: {', '.join(PRESETS)}")
    cfg = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    if cfg.model not in ("trident", "linear"):
        raise CurateError(f"unknown model {cfg.model!r}", fix="use trident or linear")
    if not 0.0 <= cfg.alpha < 1.0:
        raise CurateError(f"alpha must be in [0, 1), got {cfg.alpha}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise CurateError("epochs and batch size must be at least 1")
    if cfg.bn_groups not in BN_GROUPS:
        raise CurateError(f"unknown --bn-groups {cfg.bn_groups!r}", fix=f"use one of: {', '.join(BN_GROUPS)}")
    if cfg.partners not in PARTNER_RULES:
        raise CurateError(f"unknown --partners {cfg.partners!r}", fix=f"use one of: {', '.join(PARTNER_RULES)}")
    check_decode(cfg.decode)
    return cfg
