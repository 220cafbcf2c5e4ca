"""What a label correction implies: the fields derived from ``attr``/``obj``, recomputed from the
dataset folder's own data, or the sample flagged with the reason.

When a reviewer corrects ``attr`` or ``obj`` (say ``purple tree`` -> ``purple bell``), ``curate
review pull`` recomputes, for that row of ``manifest.parquet``:

* ``pair``: ``"ATTR OBJ"``;
* ``rare``: the pair's row of the folder's ``pairs.parquet`` (every attribute x object pair of the
  vocabulary with its ``rare`` flag); ``family``: the attribute's family there;
* ``split``: the rule is read from the manifest, not from the builder's code. Rare (unseen) pairs
  are held as whole pairs: a sample that becomes a rare pair moves to the split that pair's other
  images are in; a rare pair the dataset holds no other image of stays in the sample's split when
  rare-pair images are found there (it opens the pair there). A sample that becomes a seen pair
  keeps its split when seen-pair images are found there (seen pairs' images are split per image);
* auxiliary attributes: ``aux_label.jsonl`` is keyed by pair, so the sample gets the new pair's
  words (the next ``curate review`` shows them) when the file has them.

What the data cannot decide is not guessed: the row's ``review_flag`` gets the reasons (joined by
``"; "``), a value that cannot be known (``rare`` or ``family`` of a pair outside ``pairs.parquet``)
becomes null, and the sample keeps its split. Only columns the manifest already has are derived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.aux_labels import AUX_FILE
from curate.errors import CurateError
from curate.fsutil import read_json

from .aux_labels import pair_key, read_aux_labels

PAIRS_FILE = "pairs.parquet"
DERIVED = ("pair", "rare", "family", "split")


def _vocabulary(folder: Path) -> tuple[set[str] | None, set[str] | None]:
    """Attribute and object names from ``dataset.json``'s ``vocabulary`` (None when it records none)."""
    path = folder / "dataset.json"
    if not path.exists():
        return None, None
    try:
        vocab = read_json(path).get("vocabulary") or {}
    except (ValueError, OSError, AttributeError) as e:
        raise CurateError(f"cannot read dataset.json ({e})", where=str(path),
                          fix="restore the file from the build (`curate build ...` rewrites it)") from e
    attrs, objs = vocab.get("attributes"), vocab.get("objects")
    return (set(map(str, attrs)) if isinstance(attrs, list) else None,
            set(map(str, objs)) if isinstance(objs, list) else None)


def _pairs(folder: Path) -> pl.DataFrame | None:
    path = folder / PAIRS_FILE
    if not path.exists():
        return None
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any parquet failure is a damaged file
        raise CurateError(f"cannot read {PAIRS_FILE} ({e})", where=str(path),
                          fix="restore it from the build (`curate build ...` rewrites it)") from e
    if not {"attr", "obj"} <= set(df.columns):
        raise CurateError(f"{PAIRS_FILE} lacks attr/obj columns; found {df.columns}", where=str(path))
    return df


@dataclass
class Rules:
    """Everything a correction is checked against, read once per pull."""

    columns: set[str]
    attributes: set[str] | None = None            # vocabulary (dataset.json); None: not recorded
    objects: set[str] | None = None
    rare: dict[tuple[str, str], bool] | None = None  # (attr, obj) -> rare (pairs.parquet); None: no file
    family: dict[str, str] | None = None          # attr -> family (pairs.parquet)
    aux_pairs: set[str] | None = None             # pairs with auxiliary attributes; None: no aux_label.jsonl
    rare_split: dict[str, set[str]] = field(default_factory=dict)  # rare pair -> splits its images are in
    splits: dict[bool, set[str]] = field(default_factory=dict)     # rare? -> splits such images are in

    @classmethod
    def read(cls, folder: Path | None, df: pl.DataFrame, corrected: set[str]) -> Rules:
        """The folder's vocabulary, pairs and aux labels (none without a folder); the split rule from the
        manifest rows no reviewer corrected (``corrected``: keys)."""
        rules = cls(columns=set(df.columns))
        if folder is not None and corrected:
            rules.attributes, rules.objects = _vocabulary(folder)
            pairs = _pairs(folder)
            if pairs is not None and "rare" in pairs.columns:
                rules.rare = {(a, o): bool(r) for a, o, r in pairs.select("attr", "obj", "rare").iter_rows()
                              if r is not None}
            if pairs is not None and "family" in pairs.columns:
                rules.family = {a: f for a, f in pairs.select("attr", "family").unique("attr").iter_rows() if f}
            if (folder / AUX_FILE).exists():
                rules.aux_pairs = set(read_aux_labels(folder / AUX_FILE).by_pair)
        if corrected and {"rare", "split", "pair"} <= rules.columns:
            built = df.filter(~pl.col("key").is_in(list(corrected)) & pl.col("rare").is_not_null())
            for pair, rare, split in built.select("pair", "rare", "split").iter_rows():
                rules.splits.setdefault(bool(rare), set()).add(split)
                if rare:
                    rules.rare_split.setdefault(pair, set()).add(split)
        return rules

    def derive(self, row: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The derived fields of a corrected ``row`` (new ``attr``/``obj``), and why any could not be."""
        attr, obj = row["attr"], row["obj"]
        pair = f"{attr} {obj}"
        out: dict[str, Any] = {}
        why: list[str] = []
        if "pair" in self.columns:
            out["pair"] = pair
        if self.attributes is not None and attr not in self.attributes:
            why.append(f"attribute {attr!r} is not in the vocabulary (dataset.json)")
        if self.objects is not None and obj not in self.objects:
            why.append(f"object {obj!r} is not in the vocabulary (dataset.json)")
        rare = None
        if "rare" in self.columns:
            rare = self.rare.get((attr, obj)) if self.rare is not None else None
            if rare is None:
                why.append(f"rare unknown: {pair!r} is not in {PAIRS_FILE}" if self.rare is not None
                           else f"rare unknown: the folder has no {PAIRS_FILE}")
            out["rare"] = rare
        if "family" in self.columns:
            fam = self.family.get(attr) if self.family is not None else None
            if fam is None:
                why.append(f"family unknown: attribute {attr!r} is not in {PAIRS_FILE}" if self.family is not None
                           else f"family unknown: the folder has no {PAIRS_FILE} with families")
            out["family"] = fam
        if "split" in self.columns and rare is not None and self.splits:
            out.update(self._split(pair, rare, row.get("split"), why))
        if self.aux_pairs is not None and pair_key(pair) not in self.aux_pairs:
            why.append(f"no auxiliary attributes for {pair!r} in {AUX_FILE} (run `curate attributes` for it)")
        return out, why

    def _split(self, pair: str, rare: bool, split: str | None, why: list[str]) -> dict[str, Any]:
        """Where the corrected sample belongs by the rule the manifest follows (see the module doc)."""
        allowed = sorted(self.splits.get(rare, set()))
        kind = "rare" if rare else "seen"
        if rare and self.rare_split.get(pair):
            held = self.rare_split[pair]
            if len(held) == 1:
                return {"split": next(iter(held))}  # with the rest of its pair
            why.append(f"rare pair {pair!r} is in several splits {sorted(held)}: this sample's split is undecided")
            return {}
        if split in allowed:
            if rare:
                self.rare_split[pair] = {split}  # this sample opens the pair in its split: others corrected to it follow
            return {}
        why.append(f"{split!r} holds no {kind}-pair images ({kind} pairs are in {allowed or 'no split'}): "
                   f"move or reject the sample")
        return {}
