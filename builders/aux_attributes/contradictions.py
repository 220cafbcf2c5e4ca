"""The contradiction check: an auxiliary adjective must not name another value of the pair's own attribute.

TRIDENT smooths each pair's label towards its auxiliary adjectives, so "red, shiny, round"
for a *blue heart* teaches the model that a blue heart looks red. Form checks cannot see
that; this module can. A word contradicts a pair when, on some *axis* of mutually exclusive
values, the values the word can name and the values the pair's attribute names do not
overlap ("red" vs "blue" on the hue axis, "tiny" vs "large" on size, "plain" vs "striped" on
pattern). The modifiers in the object's name count too: "metal" contradicts a *paper* plane
(its head noun does not: an orange need not be orange, a glass need not be glass).

Axes come from two places:

- the bundled ``exclusive_values.txt``: colour hues, patterns, sizes, materials, shapes and
  antonym states, each value with its synonyms (``crimson`` is red, ``golden`` is yellow or
  orange, so "golden" never contradicts "orange");
- the source's own attribute families, when its values exclude one another: a demo world
  (its renderer shows exactly one colour, one pattern and one state per image, so a *small*
  heart is never *broken*), or a ``--families FILE`` the user vouches for. Synonyms from the
  bundled axes map onto those values ("shattered" names the world's "broken").

Families of a general vocabulary (VAW's "state" holds wet, broken and open at once) are
*not* exclusive, which is why they are never taken on trust: only the bundled antonyms
apply there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from curate.errors import CurateError

LEXICON = "exclusive_values.txt"
CONTRADICTS = "contradicts the pair"  # in every reason :meth:`ContradictionRules.clash` gives
AXIS_LABEL = {"hue": "colour"}
_SPLIT = re.compile(r"[\s_\-]+")


@dataclass(frozen=True)
class Axis:
    """One set of mutually exclusive values; ``names`` maps a word to the values it can name."""

    name: str
    names: dict[str, frozenset[str]]

    @property
    def label(self) -> str:
        return AXIS_LABEL.get(self.name, self.name)


def parse_axes(text: str, where: str) -> list[Axis]:
    """``[axis]`` headers, then ``value: word word ...`` lines (see ``exclusive_values.txt``)."""
    axes: list[Axis] = []
    name: str | None = None
    names: dict[str, set[str]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            if name is not None:
                axes.append(Axis(name, {w: frozenset(v) for w, v in names.items()}))
            name, names = line[1:-1].strip(), {}
            continue
        value, sep, words = line.partition(":")
        if name is None or not sep or not value.strip() or not words.split():
            raise CurateError(f"expected '[axis]' or 'value: words', got {raw.strip()!r}", where=f"{where}:{n}")
        for w in words.lower().split():
            names.setdefault(w, set()).add(value.strip().lower())
    if name is not None:
        axes.append(Axis(name, {w: frozenset(v) for w, v in names.items()}))
    return axes


def words_of(name: str) -> list[str]:
    """The lowercase words of an attribute or object name (``paper_plane``, ``light-blue``)."""
    return [w for w in _SPLIT.split(name.lower()) if w]


class ContradictionRules:
    """Which answer words contradict which pairs; built once, asked per word."""

    def __init__(self, axes: list[Axis], sources: list[str] | None = None):
        self.axes = axes
        self.sources = sources or []

    @classmethod
    def bundled(cls) -> ContradictionRules:
        text = resources.files(__package__).joinpath(LEXICON).read_text(encoding="utf-8")
        return cls(parse_axes(text, LEXICON), ["bundled"])

    def with_families(self, families: dict[str, list[str]], source: str) -> ContradictionRules:
        """These rules plus one axis per family whose values exclude one another (``source`` names them).

        A word names a family value when it *is* the value or when a bundled axis says it
        names a value of that name ("tiny" names "small", "crimson" names "red").
        """
        extra = []
        for family, values in sorted(families.items()):
            vals = {v.lower() for v in values if v and v.strip()}
            if len(vals) < 2:
                continue
            names: dict[str, set[str]] = {v: {v} for v in vals}
            for axis in self.axes:
                for word, named in axis.names.items():
                    hit = named & vals
                    if hit:
                        names.setdefault(word, set()).update(hit)
            extra.append(Axis(f"{family}", {w: frozenset(v) for w, v in names.items()}))
        return ContradictionRules(self.axes + extra, self.sources + [source])

    def named(self, word: str) -> dict[str, frozenset[str]]:
        """Axis name -> the values ``word`` can name there (empty when no axis knows it)."""
        w = word.lower()
        return {a.name: a.names[w] for a in self.axes if w in a.names}

    def clash(self, word: str, attr: str, obj: str) -> str | None:
        """Why ``word`` contradicts the pair (attribute first, then the object's own words), or None."""
        w = word.lower()
        # an object's modifiers only ("paper" of "paper plane"): a head noun names no value
        # (an orange is not orange by name, a glass need not be glass)
        for role, anchors in (("attr", words_of(attr)), ("obj", words_of(obj)[:-1])):
            for anchor in anchors:
                if anchor == w:
                    continue
                for axis in self.axes:
                    mine, theirs = axis.names.get(w), axis.names.get(anchor)
                    if mine and theirs and not mine & theirs:
                        what = f"another {axis.label} than '{anchor}'" if role == "attr" else \
                            f"a {axis.label} the object '{obj}' cannot have"
                        return f"'{word}' {CONTRADICTS}: {what}"
        return None

    def describe(self) -> dict:
        return {"sources": self.sources, "axes": len(self.axes), "words": sum(len(a.names) for a in self.axes)}


def read_families(path: Path) -> dict[str, list[str]]:
    """``family: value[, value ...]`` lines (``#`` comments); every family's values exclude one another."""
    if not path.is_file():
        raise CurateError("families file not found", where=str(path))
    out: dict[str, list[str]] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        family, sep, values = line.partition(":")
        vals = [v.strip().lower() for v in values.split(",") if v.strip()]
        if not sep or not family.strip() or not vals:
            raise CurateError(f"expected 'family: value', got {raw.strip()!r}", where=f"{path}:{n}",
                              fix="one 'family: value' (or 'family: v1, v2') per line, e.g. 'colour: red'")
        out.setdefault(family.strip().lower(), []).extend(vals)
    if not out:
        raise CurateError("no families in this file", where=str(path), fix="one 'family: value' per line")
    return out


def source_world(source: Path | None, kind: str) -> Path | None:
    """The demo world behind a source: the source itself, or the world a dataset was built from
    (its ``dataset.json`` names the world's ``world.json`` as vocabulary); None otherwise."""
    from curate.fsutil import read_json
    from curate.world import world_dir

    if source is None:
        return None
    if kind == "world":
        return source
    if kind != "dataset" or not (source / "dataset.json").is_file():
        return None
    try:
        vocab = str(read_json(source / "dataset.json").get("config", {}).get("attributes") or "")
    except (CurateError, OSError, ValueError, AttributeError):
        return None
    return world_dir(vocab) if vocab else None


def source_families(source: Path | None, kind: str) -> tuple[dict[str, list[str]], str] | None:
    """Exclusive families a source vouches for: those of the demo world behind it; None for anything else."""
    from curate.world import World

    world = source_world(source, kind)
    if world is None:
        return None
    try:
        fams = World.load(world).families
    except (CurateError, OSError, ValueError, KeyError, TypeError):
        return None
    return {str(k): [str(v) for v in vs] for k, vs in fams.items()}, f"world:{world}"
