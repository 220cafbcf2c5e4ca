"""Vocabulary: objects (with synonym sets and plurals) and attributes (with families).

Bundled lists: ``imagenet`` (the 1000 ImageNet-1k classes: CLIP's curated display name first,
then the WordNet lemmas) and ``vaw`` (139 visual adjectives in the spirit of VAW, grouped into
colour, material, texture, shape, state and size families). User files:

- plain text, one entry per line; synonyms separated by ``|`` (``tv|television|telly``);
  an optional family prefix for attributes ``color: red``;
- CSV with a header: a name column (``name``, ``names``, ``object``, ``attribute``), optional
  ``synonyms`` (``|``-separated) and ``family`` columns;
- a demo ``world.json`` (objects with plurals, attributes with families).

Entries are normalised (case, whitespace); duplicates are dropped with a warning; an empty
list, or bytes that are not UTF-8, is a ``CurateError`` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from curate.errors import CurateError

log = logging.getLogger(__name__)
DATA = Path(__file__).parent / "data"

IRREGULAR = {
    "mouse": "mice", "goose": "geese", "man": "men", "woman": "women", "child": "children", "tooth": "teeth",
    "foot": "feet", "person": "people", "leaf": "leaves", "knife": "knives", "wolf": "wolves", "shelf": "shelves",
    "loaf": "loaves", "ox": "oxen", "cactus": "cacti", "fungus": "fungi", "sheep": "sheep", "fish": "fish",
    "deer": "deer", "bison": "bison", "moose": "moose", "salmon": "salmon", "trout": "trout", "series": "series",
    "species": "species", "aircraft": "aircraft", "louse": "lice", "calf": "calves", "half": "halves",
}
_UNCOUNTABLE_END = ("ss",)


def pluralize(name: str) -> str:
    """English plural of the last word (``crescent moon`` -> ``crescent moons``)."""
    words = name.split(" ")
    w = words[-1]
    lw = w.lower()
    if lw in IRREGULAR:
        p = IRREGULAR[lw]
    elif re.search(r"(s|x|z|ch|sh)$", lw):
        p = w + "es"
    elif re.search(r"[^aeiou]y$", lw):
        p = w[:-1] + "ies"
    elif re.search(r"[^aeiou]o$", lw) and lw not in ("photo", "piano", "radio", "video", "kimono", "disco"):
        p = w + "es"
    else:
        p = w + "s"
    return " ".join(words[:-1] + [p])


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


@dataclass
class Entry:
    """One vocabulary entry: display ``name`` (first synonym), all ``forms`` matched in captions."""

    name: str
    synonyms: list[str] = field(default_factory=list)
    family: str = ""
    plurals: list[str] = field(default_factory=list)

    @property
    def forms(self) -> list[str]:
        seen: list[str] = []
        for f in [self.name, *self.synonyms, *self.plurals]:
            if f and f not in seen:
                seen.append(f)
        return seen


@dataclass
class Vocabulary:
    objects: list[Entry]
    attributes: list[Entry]

    @property
    def object_names(self) -> list[str]:
        return [e.name for e in self.objects]

    @property
    def attribute_names(self) -> list[str]:
        return [e.name for e in self.attributes]

    def families(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a in self.attributes:
            out.setdefault(a.family or "attribute", []).append(a.name)
        return out

    def family_of(self, attr: str) -> str:
        for a in self.attributes:
            if a.name == attr:
                return a.family or "attribute"
        raise KeyError(attr)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CurateError(f"line {line} is not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})",
                          where=str(path), fix="save the file as UTF-8") from e


def _dedupe(entries: list[Entry], what: str, where: str) -> list[Entry]:
    seen: dict[str, Entry] = {}
    dups: list[str] = []
    for e in entries:
        if e.name in seen:
            dups.append(e.name)
            continue
        seen[e.name] = e
    if dups:
        log.warning("%s: dropped %d duplicate %s entr%s: %s", where, len(dups), what,
                    "y" if len(dups) == 1 else "ies", ", ".join(sorted(set(dups))[:10]))
    if not seen:
        raise CurateError(f"no {what} entries found (empty list)", where=where,
                          fix=f"give at least one {what}, one per line")
    return list(seen.values())


def _parse_lines(text: str, where: str, kind: str) -> list[Entry]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
        if not line.strip():
            continue
        family = ""
        if kind == "attribute" and ":" in line:
            family, line = line.split(":", 1)
            family = normalise(family)
        names = [normalise(n) for n in line.split("|") if normalise(n)]
        if names:
            out.append(Entry(names[0], names[1:], family))
    return out


def _parse_csv(text: str, where: str, kind: str) -> list[Entry]:
    try:
        return _csv_entries(text, where, kind)
    except csv.Error as e:  # e.g. a quote left open
        raise CurateError(f"not a readable CSV file: {e}", where=where,
                          fix=f"save it as CSV with a header row holding a 'name' (or '{kind}') column") from None


def _csv_entries(text: str, where: str, kind: str) -> list[Entry]:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # the csv module's own newline handling (a lone \r too)
    cols = [c.strip().lower() for c in (reader.fieldnames or [])]
    name_col = next((c for c in ("name", "names", kind, f"{kind}s", "class", "label") if c in cols), None)
    if name_col is None:
        raise CurateError(f"CSV has no name column; found {cols}", where=where,
                          fix=f"add a header with a 'name' (or '{kind}') column")
    out = []
    for row in reader:
        row = {k.strip().lower(): (v or "") for k, v in row.items() if k}
        names = [normalise(n) for n in row[name_col].split("|") if normalise(n)]
        names += [normalise(n) for n in row.get("synonyms", "").split("|") if normalise(n)]
        if names:
            out.append(Entry(names[0], names[1:], normalise(row.get("family", ""))))
    return out


def _from_world(path: Path, kind: str) -> list[Entry]:
    """Objects (with plurals) or attributes (with families) of a demo world, read by its own loader."""
    from curate.world import World

    world = World.load(path)
    if kind == "object":
        return [Entry(normalise(o), [], "", [normalise(world.plurals[o])] if world.plurals.get(o) else [])
                for o in world.objects]
    family = world.family_of
    return [Entry(normalise(a), [], normalise(family.get(a, ""))) for a in world.attributes]


def _load(spec: str | Path, kind: str) -> list[Entry]:
    bundled = {"object": {"imagenet": "imagenet_classes.csv"}, "attribute": {"vaw": "vaw_attributes.csv"}}[kind]
    if str(spec) in bundled:
        path = DATA / bundled[str(spec)]
        where = f"bundled '{spec}' list"
    else:
        path = Path(spec)
        where = str(path)
        if not path.exists():
            raise CurateError(f"{kind} vocabulary file not found", where=where,
                              fix=f"give a file, or one of the bundled lists: {', '.join(bundled)}")
    if path.suffix == ".json":
        entries = _from_world(path, kind)
    else:
        text = _read_text(path)
        first = text.lstrip().splitlines()[0].lower() if text.strip() else ""
        if path.suffix.lower() == ".csv" or ("," in first and any(h in first for h in ("name", kind, "family"))):
            entries = _parse_csv(text, where, kind)
        else:
            entries = _parse_lines(text, where, kind)
    if kind == "object":
        for e in entries:
            if not e.plurals:
                e.plurals = [pluralize(n) for n in [e.name, *e.synonyms]]
    return _dedupe(entries, kind, where)


def load_vocabulary(objects: str | Path = "imagenet", attributes: str | Path = "vaw") -> Vocabulary:
    return Vocabulary(objects=_load(objects, "object"), attributes=_load(attributes, "attribute"))
