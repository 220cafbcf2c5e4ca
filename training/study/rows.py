"""What a study evaluates: one :class:`ModelRow` per model (or probe), from ``--model``/``--probe``
options or a models file (CSV/TSV with a header, or JSON: a list of objects)."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import CurateError

ZEROSHOT = "zeroshot"
PROBE = "probe"          # a linear probe on the frozen image tower, every training image
SCRATCH = "scratch"      # a small CNN trained from scratch on the training images' object labels (spec: "scratch")
FINETUNE = "finetune"    # the model's image tower fine-tuned on the training images' object labels
SHOTS = re.compile(r"^probe-k(\d+)$")  # a linear probe on k images per object class
COLUMNS = ("spec", "label", "group", "method", "corpus", "nmi", "epochs")
TRAINED_NETS = (SCRATCH, FINETUNE)  # the methods that train a network for a number of epochs
PROBE_SEEDS = (0, 1, 2)


@dataclass
class ModelRow:
    spec: str
    label: str
    group: str = "clip"
    method: str = ZEROSHOT
    corpus: str | None = None   # the labelled images the model was trained on: its NMI is computed
    nmi: float | None = None    # or given
    epochs: int | None = None   # scratch/finetune: training epochs (None: the method's default)
    seeds: tuple[int, ...] = field(default=(0,))

    @property
    def shots(self) -> int | None:
        m = SHOTS.match(self.method)
        return int(m.group(1)) if m else None

    @property
    def is_probe(self) -> bool:
        return self.method == PROBE or self.shots is not None

    @property
    def trained(self) -> bool:
        """Trained here on the training images (probes, the scratch network): one result per seed."""
        return self.is_probe or self.method in (SCRATCH, FINETUNE)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seeds": list(self.seeds)}


def make_row(spec: str, label: str | None = None, group: str | None = None, method: str | None = None,
             corpus: str | None = None, nmi: str | float | None = None, epochs: str | int | None = None,
             where: str = "--model") -> ModelRow:
    spec = (spec or "").strip()
    if not spec:
        raise CurateError("a model row has no spec", where=where, fix=f"columns: {', '.join(COLUMNS)}")
    method = (method or ZEROSHOT).strip()
    if method not in (ZEROSHOT, PROBE, SCRATCH, FINETUNE) and not SHOTS.match(method):
        raise CurateError(f"unknown method {method!r}", where=where,
                          fix="zeroshot, probe, probe-kN (N shots), finetune or scratch (spec: scratch)")
    probe = method != ZEROSHOT
    value = None
    if nmi not in (None, ""):
        try:
            value = float(nmi)
        except ValueError as e:
            raise CurateError(f"nmi {nmi!r} is not a number", where=where) from e
    n_epochs = _epochs(epochs, method, where)
    default_label = spec if not probe or method == SCRATCH else f"{method} {spec}"
    return ModelRow(spec=spec, label=(label or "").strip() or default_label,
                    group=(group or "").strip() or ("supervised" if method in (PROBE, SCRATCH) else "fine-tuned" if method == FINETUNE
                                                 else "few-shot" if probe else "clip"),
                    method=method, corpus=(corpus or "").strip() or None, nmi=value,
                    epochs=n_epochs, seeds=PROBE_SEEDS if probe else (0,))


def _epochs(epochs: str | int | None, method: str, where: str) -> int | None:
    """The ``epochs`` column: a positive whole number, only on rows that train a network."""
    if epochs in (None, ""):
        return None
    if method not in TRAINED_NETS:
        raise CurateError(f"epochs applies to {' and '.join(TRAINED_NETS)} rows, not to {method}", where=where,
                          fix="leave the epochs column empty on this row")
    try:
        n = int(str(epochs).strip())
    except ValueError as e:
        raise CurateError(f"epochs {epochs!r} is not a whole number", where=where) from e
    if n < 1:
        raise CurateError(f"epochs must be at least 1 (got {n})", where=where)
    return n


def read_models_file(path: Path) -> list[ModelRow]:
    """``spec,label,group,method,corpus,nmi,epochs`` rows (only ``spec`` is required); JSON: a list of such
    objects."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise CurateError(f"not valid JSON ({e.msg}, line {e.lineno})", where=str(path)) from e
        if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
            raise CurateError("a JSON models file is a list of objects", where=str(path), fix=f"keys: {', '.join(COLUMNS)}")
        return [make_row(**{k: x.get(k) for k in COLUMNS}, where=f"{path} item {i + 1}") for i, x in enumerate(items)]
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    dialect = "excel-tab" if lines and "\t" in lines[0] else "excel"
    reader = csv.DictReader(lines, dialect=dialect)
    unknown = [c for c in reader.fieldnames or [] if c.strip() not in COLUMNS]
    if not reader.fieldnames or "spec" not in [c.strip() for c in reader.fieldnames] or unknown:
        raise CurateError("the models file needs a header row naming its columns"
                          + (f" (unknown: {', '.join(unknown)})" if unknown else ""), where=str(path),
                          fix=f"columns: {', '.join(COLUMNS)} (only spec is required)")
    return [make_row(**{k.strip(): v for k, v in r.items() if k}, where=f"{path} line {i + 2}")
            for i, r in enumerate(reader)]


def check_rows(rows: list[ModelRow]) -> None:
    """Refuse an empty study and duplicate labels (a label names one row of every table and plot)."""
    if not rows:
        raise CurateError("no models to evaluate", fix="pass --model SPEC (repeatable), --probe SPEC or --models FILE")
    seen: dict[str, ModelRow] = {}
    for r in rows:
        if r.label in seen:
            raise CurateError(f"duplicate label {r.label!r} ({seen[r.label].spec} and {r.spec})",
                              fix="give every row its own label (the models file's label column)")
        seen[r.label] = r
