"""The demo world's vocabulary: objects, attributes in families, and which pairs are rare.

What counts as a *mention* (the rule the caption ground truth is computed with, and the rule
a rarity scan must follow to reproduce it exactly):

- matching is case-insensitive and on **whole words**: a name matches where it is neither
  preceded nor followed by an ASCII letter or digit (regex ``(?<![a-z0-9])NAME(?![a-z0-9])``
  on the lower-cased caption, i.e. ``\\bNAME\\b`` for the ASCII captions written here);
- an object is mentioned by its ``name`` or its ``plural`` (``heart``/``hearts``; ``fish``
  is its own plural); multi-word names (``crescent moon``, ``paper plane``) match only as the
  whole phrase with one space, so ``moon`` or ``paper`` alone mention nothing;
- an attribute is mentioned only by its exact name: ``stripes`` is not ``striped``, ``dots``
  is not ``dotted``, ``reddish`` is not ``red``;
- words that merely contain a name do not count: ``starfish`` (neither star nor fish),
  ``hearty``, ``keyboard``, ``lemonade``, ``bluebell``, ``treehouse``, ``cupcake``.

A pair *co-occurs* in a caption when the caption mentions both its attribute and its object,
anywhere, in any order. The rare pairs never co-occur in any caption of the corpus.

Like real objects (lemons are yellow), every object has one *typical* value per family
(``TYPICAL``): the world shows it far more often than any other (most training images of
an object carry its typical colour, and its typical pairs get most of the training images),
so a model trained on the world can learn the shortcut "yellow means lemon" that real
CLIPs learn. Typical pairs are never rare; rare pairs are atypical by construction.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import numpy as np

from curate.errors import CurateError


@dataclass(frozen=True)
class ObjectKind:
    name: str
    plural: str


@dataclass(frozen=True)
class Attribute:
    name: str
    family: str


OBJECTS: tuple[ObjectKind, ...] = (
    ObjectKind("heart", "hearts"),
    ObjectKind("star", "stars"),
    ObjectKind("lemon", "lemons"),
    ObjectKind("fish", "fish"),
    ObjectKind("house", "houses"),
    ObjectKind("tree", "trees"),
    ObjectKind("key", "keys"),
    ObjectKind("umbrella", "umbrellas"),
    ObjectKind("crescent moon", "crescent moons"),
    ObjectKind("cup", "cups"),
    ObjectKind("bell", "bells"),
    ObjectKind("paper plane", "paper planes"),
    ObjectKind("arrow", "arrows"),
)

# The RGB centre of every colour attribute (the renderer jitters around it).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 25),
    "green": (40, 165, 60),
    "blue": (35, 80, 220),
    "purple": (135, 50, 185),
    "pink": (250, 125, 190),
}
PATTERNS = ("striped", "dotted", "checkered", "wavy", "zigzag")
STATES = ("small", "large", "broken", "outlined", "glowing")

FAMILIES: dict[str, tuple[str, ...]] = {
    "colour": tuple(PALETTE),
    "pattern": PATTERNS,
    "state": STATES,
}
ATTRIBUTES: tuple[Attribute, ...] = tuple(Attribute(a, fam) for fam, names in FAMILIES.items() for a in names)

# Values a family shows when it is not the target and nothing special was sampled.
DEFAULT_VISIBLE = {"pattern": "plain", "state": "normal"}

OBJECT_NAMES = tuple(o.name for o in OBJECTS)
ATTRIBUTE_NAMES = tuple(a.name for a in ATTRIBUTES)
PLURALS = {o.name: o.plural for o in OBJECTS}
FAMILY_OF = {a.name: a.family for a in ATTRIBUTES}

# Every object's typical colour, pattern and state (fixed, like "lemons are yellow"): colours
# as distinct as 7 colours allow for 13 objects (at most two objects share one, with
# dissimilar shapes), patterns and states spread evenly.
TYPICAL: dict[str, dict[str, str]] = {
    "heart": {"colour": "red", "pattern": "dotted", "state": "glowing"},
    "star": {"colour": "yellow", "pattern": "checkered", "state": "glowing"},
    "lemon": {"colour": "yellow", "pattern": "dotted", "state": "small"},
    "fish": {"colour": "orange", "pattern": "wavy", "state": "small"},
    "house": {"colour": "red", "pattern": "checkered", "state": "large"},
    "tree": {"colour": "green", "pattern": "zigzag", "state": "large"},
    "key": {"colour": "orange", "pattern": "striped", "state": "broken"},
    "umbrella": {"colour": "blue", "pattern": "striped", "state": "large"},
    "crescent moon": {"colour": "purple", "pattern": "wavy", "state": "glowing"},
    "cup": {"colour": "blue", "pattern": "dotted", "state": "broken"},
    "bell": {"colour": "purple", "pattern": "zigzag", "state": "outlined"},
    "paper plane": {"colour": "green", "pattern": "striped", "state": "outlined"},
    "arrow": {"colour": "pink", "pattern": "zigzag", "state": "small"},
}

# How many attributes (objects) every object (attribute) keeps as common pairs at least.
MIN_COMMON_PER_ATTR = 4
MIN_COMMON_PER_OBJ = 4
RARE_COLOUR_WEIGHT = 2.0


def slug(name: str) -> str:
    """A name as it appears in sample keys (``crescent moon`` -> ``crescent-moon``)."""
    return name.replace(" ", "-")


def check_attr(attr: str) -> str:
    if attr not in FAMILY_OF:
        close = difflib.get_close_matches(attr, ATTRIBUTE_NAMES, n=1)
        raise CurateError(f"unknown demo attribute {attr!r}",
                          fix=(f"did you mean {close[0]!r}? " if close else "") + f"known: {', '.join(ATTRIBUTE_NAMES)}")
    return attr


def check_obj(obj: str) -> str:
    if obj not in PLURALS:
        close = difflib.get_close_matches(obj, OBJECT_NAMES, n=1)
        raise CurateError(f"unknown demo object {obj!r}",
                          fix=(f"did you mean {close[0]!r}? " if close else "") + f"known: {', '.join(OBJECT_NAMES)}")
    return obj


def all_pairs() -> list[tuple[str, str]]:
    return [(a, o) for a in ATTRIBUTE_NAMES for o in OBJECT_NAMES]


def typical_pairs() -> list[tuple[str, str]]:
    """Every object's typical (colour, pattern, state) pairs, in vocabulary order."""
    return [(a, o) for a in ATTRIBUTE_NAMES for o in OBJECT_NAMES if TYPICAL[o][FAMILY_OF[a]] == a]


def choose_rare_pairs(seed: int, fraction: float = 0.2) -> list[tuple[str, str]]:
    """Pick ``fraction`` of all pairs as rare, by seed, keeping every attribute and object common somewhere.

    Pairs are visited in a seeded random order and made rare unless that would leave their
    attribute with fewer than ``MIN_COMMON_PER_ATTR`` common objects (or the object with fewer
    than ``MIN_COMMON_PER_OBJ`` common attributes). A typical pair is never rare, and colour
    pairs come first ``RARE_COLOUR_WEIGHT`` times as often (a weighted random order): an
    object in an atypical colour is the composition a colour-shortcut model gets wrong.
    """
    pairs = all_pairs()
    target = round(fraction * len(pairs))
    rng = np.random.default_rng([seed, 0x5A1E])
    typical = set(typical_pairs())
    weight = np.array([RARE_COLOUR_WEIGHT if FAMILY_OF[a] == "colour" else 1.0 for a, _ in pairs])
    # Efraimidis-Spirakis: sorting u ** (1 / w) descending is a weighted random permutation
    order = [int(i) for i in np.argsort(-(rng.random(len(pairs)) ** (1.0 / weight)), kind="stable")
             if pairs[int(i)] not in typical]
    common_per_attr = {a: len(OBJECT_NAMES) for a in ATTRIBUTE_NAMES}
    common_per_obj = {o: len(ATTRIBUTE_NAMES) for o in OBJECT_NAMES}
    rare: list[tuple[str, str]] = []
    for i in order:
        if len(rare) >= target:
            break
        a, o = pairs[int(i)]
        if common_per_attr[a] <= MIN_COMMON_PER_ATTR or common_per_obj[o] <= MIN_COMMON_PER_OBJ:
            continue
        rare.append((a, o))
        common_per_attr[a] -= 1
        common_per_obj[o] -= 1
    return sorted(rare)


# --- mentions ------------------------------------------------------------------------------

def _alternation(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))


_OBJ_FORMS = {form: o.name for o in OBJECTS for form in (o.name, o.plural)}
_MENTION_RE = re.compile(
    r"(?<![a-z0-9])(" + _alternation(list(_OBJ_FORMS) + list(ATTRIBUTE_NAMES)) + r")(?![a-z0-9])"
)


def mentions(caption: str) -> tuple[set[str], set[str]]:
    """(attributes, objects) a caption mentions, by the whole-word rule in the module docstring."""
    attrs: set[str] = set()
    objs: set[str] = set()
    for m in _MENTION_RE.finditer(caption.lower()):
        w = m.group(1)
        if w in _OBJ_FORMS:
            objs.add(_OBJ_FORMS[w])
        else:
            attrs.add(w)
    return attrs, objs
