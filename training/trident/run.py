"""A TRIDENT run folder's description: ``RUN/run.json``.

It records everything needed to rebuild the model without the training data: the config
(preset and shape fields), the backbone spec, the projector path, the word embeddings, the
vocabulary (attributes, objects, training pairs, words, auxiliaries) and the feature widths. A
run is only resumed or evaluated with what it was trained with: any difference is an error
that names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.fsutil import write_json

from .config import SHAPE_FIELDS, TridentConfig
from .data import Pair

RUN_FILE = "run.json"


def default_backbone(root: Path) -> str | None:
    """The model a curate dataset was built with (its ``dataset.json``), for it or its export."""
    for folder in (root, root.parent.parent if root.parent.name == "exports" else None):
        if folder is not None and (folder / "dataset.json").is_file():
            model = json.loads((folder / "dataset.json").read_text()).get("config", {}).get("model")
            if model:
                return str(model)
    return None


@dataclass
class RunSpec:
    config: TridentConfig
    backbone: str
    projector: str | None
    word_embeddings: str
    attrs: list[str]
    objs: list[str]
    train_pairs: list[Pair]
    words: list[str]
    aux: dict[str, list[str]] = field(default_factory=dict)   # "attr obj" -> aux words of a train pair
    dims: dict[str, int] = field(default_factory=dict)         # tokens, local_dim, global_dim, word_dim
    cache_dir: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "backbone": self.backbone, "projector": self.projector,
                "word_embeddings": self.word_embeddings, "attrs": self.attrs, "objs": self.objs,
                "train_pairs": [list(p) for p in self.train_pairs], "words": self.words, "aux": self.aux,
                "dims": self.dims, "cache_dir": self.cache_dir, "data": self.data}

    @classmethod
    def read(cls, run: Path) -> RunSpec:
        path = run / RUN_FILE
        if not path.is_file():
            raise CurateError("not a TRIDENT run folder (no run.json)", where=str(run),
                              fix="pass the --out folder of `curate train trident`")
        try:
            d = json.loads(path.read_text())
            return cls(config=TridentConfig.from_dict(d["config"]), backbone=d["backbone"], projector=d.get("projector"),
                       word_embeddings=d["word_embeddings"], attrs=d["attrs"], objs=d["objs"],
                       train_pairs=[tuple(p) for p in d["train_pairs"]], words=d["words"], aux=d.get("aux", {}),
                       dims=d.get("dims", {}), cache_dir=d.get("cache_dir"), data=d.get("data", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CurateError(f"run.json is unreadable ({e})", where=str(path), fix="retrain into a new --out") from e

    def write(self, run: Path) -> None:
        write_json(run / RUN_FILE, self.to_dict())

    def differences(self, other: RunSpec) -> list[str]:
        """Human-readable differences that make one run's checkpoints useless to the other."""
        out = []
        for f in ("preset", *SHAPE_FIELDS, "bn_groups", "partners", "decode"):
            a, b = getattr(self.config, f), getattr(other.config, f)
            if a != b:
                out.append(f"{f} {a!r} vs {b!r}")
        for f in ("backbone", "projector", "word_embeddings"):
            if getattr(self, f) != getattr(other, f):
                out.append(f"{f} {getattr(self, f)!r} vs {getattr(other, f)!r}")
        for f in ("attrs", "objs", "train_pairs", "words"):
            if list(getattr(self, f)) != list(getattr(other, f)):
                out.append(f"{f} ({len(getattr(self, f))} vs {len(getattr(other, f))})")
        return out
