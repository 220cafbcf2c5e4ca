"""A LAION-like caption corpus over the demo vocabulary, with a known co-occurrence structure.

Each part is a parquet file (``url``, ``caption``, ``width``, ``height``) of at most
``PART_ROWS`` rows, generated and written on its own, so a million captions never sit in
memory at once. Captions are of several kinds, drawn by seed:

- one common pair (popular pairs far more often: Zipf weights, objects' typical pairs the
  most popular, as "yellow lemon" is on the web), in varied templates, with
  plurals, casing, punctuation and distractor words;
- two objects sharing one attribute, or two attributes on one object (only when every
  attribute x object combination in the caption is a common pair);
- one object only, one attribute only, no vocabulary at all;
- *near misses*: words that contain a name but do not mention it (``starfish``, ``hearty``,
  ``stripes``, ``moonlight``, a lone ``moon`` or ``paper``), see :mod:`.vocab` for the rule.

Ground truth is not taken from the generator's intent: every caption is scanned with
:func:`.vocab.mentions`, and a caption that would make a rare pair co-occur is drawn again
(the templates never produce one; the check makes it a guarantee). Part 0 starts with
every common pair three times, so no common pair has a zero count.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from .vocab import ATTRIBUTE_NAMES, OBJECT_NAMES, PLURALS, mentions

PART_ROWS = 100_000
MIN_PAIR_MENTIONS = 3

DISTRACTORS = (
    "vintage", "stock", "photo", "hd", "wallpaper", "free", "download", "design", "vector", "clipart",
    "illustration", "background", "cute", "cartoon", "sticker", "logo", "minimal", "modern", "retro",
    "art", "print", "poster", "drawing", "sketch", "digital", "handmade", "craft", "kids", "party",
    "summer", "winter", "holiday", "gift", "card", "set", "collection", "flat", "simple", "3d", "png",
    "image", "picture", "template", "banner", "symbol", "sign", "emoji", "toy", "model", "decor",
)
PHRASES = (
    "sunset over the mountains", "a man riding a bicycle", "wedding dress with lace", "city skyline at night",
    "bowl of ramen noodles", "portrait of a young woman", "old car parked on the street", "snow on the roof",
    "dog playing in the park", "kitchen interior design", "beach with palm trees", "laptop on a desk",
    "hand drawn flowers", "football match highlights", "coffee beans close up", "abstract watercolor texture",
)
NEAR_MISSES = (
    "hearty", "heartbeat", "sweetheart", "starfish", "stardust", "starry", "lemonade", "fishing", "goldfish",
    "housework", "household", "treehouse", "keyboard", "keychain", "monkey", "umbrellabird", "moon", "moonlight",
    "crescent", "paper", "plane", "airplane", "cupcake", "cupboard", "teacup", "bellhop", "barbell", "belly",
    "arrowhead", "sparrow", "redwood", "reddish", "bluebell", "bluebird", "greenhouse", "yellowish", "orangey",
    "purplish", "pinkish", "stripes", "stripe", "dots", "dot", "checks", "checkerboard", "waves", "wave",
    "zigzags", "smaller", "smallest", "larger", "largely", "broke", "breaking", "outline", "outlines", "glow",
    "glows", "glowstick",
)

PAIR_TEMPLATES = (
    "{art} {a} {o}", "a photo of {art} {a} {o}", "{a} {o} {d1}", "{d1} {a} {o} {d2}", "{a} {os} on a wooden table",
    "close up of {art} {a} {o}, {d1}", "{os} - {a} {d1}", "{d1} illustration of {a} {os}", "{a} {o} icon {d1}",
    "three {a} {os} and a {d1}", "{o} ({a}) {d1} {d2}", "{art} {a} {o}!", "{d1} {d2}: {a} {os}.",
    "my {a} {o} {d1}", "{os}, {a}, {d1}",
)
TWO_OBJ_TEMPLATES = (
    "{art} {a} {o} and {art2} {o2}", "{a} {os} with {o2s} {d1}", "{o} next to {art2} {a} {o2}",
    "{d1} {a} {os} and {o2s}",
)
TWO_ATTR_TEMPLATES = (
    "{art} {a} and {a2} {o}", "{a}, {a2} {os} {d1}", "{a} {o} {d1} with {a2} details", "{a2} {d1} of {a} {os}",
)
OBJ_TEMPLATES = ("{art} {o} {d1}", "{os} {d1} {d2}", "{d1} {o}", "{o} on a table", "{d1} {os}!")
ATTR_TEMPLATES = ("{a} {d1} {d2}", "{d1} in {a}", "{a} {d1}", "{d1} {d2} ({a})")
NEAR_TEMPLATES = ("{n1} {d1}", "{d1} {n1} and {n2}", "{n1} {n2} {d1}", "{n1} with {art} {a} {o}", "{os} and {n1}")

KINDS = ("pair", "two_obj", "two_attr", "obj", "attr", "none", "near")
KIND_WEIGHTS = (0.45, 0.06, 0.06, 0.13, 0.07, 0.11, 0.12)


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


@dataclass
class CorpusSpec:
    """What one part needs to know: the pairs, their popularity, the seed."""

    common_pairs: list[tuple[str, str]]
    rare_pairs: list[tuple[str, str]]
    seed: int
    popularity: list[float] = field(default_factory=list)
    typical: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.popularity:
            rng = random.Random(self.seed * 1_000_003 + 17)
            ranks = list(range(len(self.common_pairs)))
            rng.shuffle(ranks)
            # typical pairs take the top ranks (in the same seeded order among themselves)
            typ = set(self.typical)
            by_rank = sorted(range(len(ranks)), key=lambda i: (self.common_pairs[i] not in typ, ranks[i]))
            for r, i in enumerate(by_rank):
                ranks[i] = r
            self.popularity = [1.0 / (r + 4) ** 0.9 for r in ranks]


class CaptionMaker:
    """Draws captions of the kinds in the module docstring from a seeded ``random.Random``."""

    def __init__(self, spec: CorpusSpec, rng: random.Random):
        self.spec = spec
        self.rng = rng
        self.rare = set(spec.rare_pairs)
        self.common = set(spec.common_pairs)
        self.cum = []
        total = 0.0
        for w in spec.popularity:
            total += w
            self.cum.append(total)
        self.objs_of = {a: [o for o in OBJECT_NAMES if (a, o) in self.common] for a in ATTRIBUTE_NAMES}
        self.attrs_of = {o: [a for a in ATTRIBUTE_NAMES if (a, o) in self.common] for o in OBJECT_NAMES}

    def _pair(self) -> tuple[str, str]:
        return self.rng.choices(self.spec.common_pairs, cum_weights=self.cum)[0]

    def _fill(self, template: str, **kw: str) -> str:
        r = self.rng
        vals = {"d1": r.choice(DISTRACTORS), "d2": r.choice(DISTRACTORS), "n1": r.choice(NEAR_MISSES),
                "n2": r.choice(NEAR_MISSES)}
        vals.update(kw)
        if "o" in kw:
            vals["os"] = PLURALS[kw["o"]]
        if "o2" in kw:
            vals["o2s"] = PLURALS[kw["o2"]]
        first = kw.get("a") or kw.get("o") or "x"
        vals["art"] = article(first)
        vals["art2"] = article(kw.get("a", "x") if "{art2} {a}" in template else kw.get("o2", "x"))
        return template.format(**vals)

    def _style(self, text: str) -> str:
        u = self.rng.random()
        if u < 0.1:
            text = text.upper()
        elif u < 0.3:
            text = text.title()
        elif u < 0.4:
            text = text[:1].upper() + text[1:]
        v = self.rng.random()
        if v < 0.08:
            text += " | " + self.rng.choice(DISTRACTORS)
        elif v < 0.15:
            text += "..."
        return text

    def pair_caption(self, a: str, o: str) -> str:
        return self._style(self._fill(self.rng.choice(PAIR_TEMPLATES), a=a, o=o))

    def object_caption(self, o: str) -> str:
        return self._style(self._fill(self.rng.choice(OBJ_TEMPLATES), o=o))

    def draw(self) -> str:
        r = self.rng
        kind = r.choices(KINDS, weights=KIND_WEIGHTS)[0]
        if kind == "pair":
            return self.pair_caption(*self._pair())
        if kind == "two_obj":
            a, o = self._pair()
            others = [x for x in self.objs_of[a] if x != o]
            if others:
                return self._style(self._fill(r.choice(TWO_OBJ_TEMPLATES), a=a, o=o, o2=r.choice(others)))
            return self.pair_caption(a, o)
        if kind == "two_attr":
            a, o = self._pair()
            others = [x for x in self.attrs_of[o] if x != a]
            if others:
                return self._style(self._fill(r.choice(TWO_ATTR_TEMPLATES), a=a, o=o, a2=r.choice(others)))
            return self.pair_caption(a, o)
        if kind == "obj":
            return self.object_caption(r.choice(OBJECT_NAMES))
        if kind == "attr":
            return self._style(self._fill(r.choice(ATTR_TEMPLATES), a=r.choice(ATTRIBUTE_NAMES)))
        if kind == "none":
            text = r.choice(PHRASES) if r.random() < 0.5 else " ".join(r.choice(DISTRACTORS) for _ in range(3))
            return self._style(text)
        a, o = self._pair()
        return self._style(self._fill(r.choice(NEAR_TEMPLATES), a=a, o=o))


@dataclass
class PartCounts:
    """Exact mention counts of one part (merged over parts into the ground truth)."""

    rows: int = 0
    pairs: Counter = field(default_factory=Counter)
    attrs: Counter = field(default_factory=Counter)
    objs: Counter = field(default_factory=Counter)
    redrawn: int = 0

    def to_dict(self) -> dict:
        return {"rows": self.rows, "redrawn": self.redrawn, "attr_count": dict(self.attrs),
                "obj_count": dict(self.objs), "pair_count": {f"{a}|{o}": n for (a, o), n in self.pairs.items()}}


def part_rows(spec: CorpusSpec, part: int, n: int) -> tuple[dict[str, list], PartCounts]:
    """Columns of caption part ``part`` (``n`` rows) and its exact counts."""
    rng = random.Random(f"captions/{spec.seed}/{part}")
    maker = CaptionMaker(spec, rng)
    counts = PartCounts()
    cols: dict[str, list] = {"url": [], "caption": [], "width": [], "height": []}
    forced = [p for p in spec.common_pairs for _ in range(MIN_PAIR_MENTIONS)] if part == 0 else []
    for i in range(n):
        while True:
            text = maker.pair_caption(*forced[i]) if i < len(forced) else maker.draw()
            attrs, objs = mentions(text)
            hits = [(a, o) for a in attrs for o in objs]
            if not any(p in maker.rare for p in hits):
                break
            counts.redrawn += 1
        counts.pairs.update(hits)
        counts.attrs.update(attrs)
        counts.objs.update(objs)
        cols["url"].append(f"https://img{part % 4}.demo-world.example/{part:04d}/{i:07d}.jpg")
        cols["caption"].append(text)
        if rng.random() < 0.03:
            cols["width"].append(None)
            cols["height"].append(None)
        else:
            cols["width"].append(rng.randrange(160, 1600))
            cols["height"].append(rng.randrange(160, 1600))
    counts.rows = n
    return cols, counts


def merge_counts(parts: list[dict], rare_pairs: list[tuple[str, str]]) -> dict:
    """The ground-truth document from the per-part count dicts (``PartCounts.to_dict``)."""
    attrs: Counter = Counter()
    objs: Counter = Counter()
    pairs: Counter = Counter()
    rows = 0
    for p in parts:
        rows += p["rows"]
        attrs.update(p["attr_count"])
        objs.update(p["obj_count"])
        pairs.update(p["pair_count"])
    rare = {tuple(p) for p in rare_pairs}
    return {
        "rule": ("a caption mentions a word when it appears as a whole word, case-insensitive "
                 "(regex (?<![a-z0-9])WORD(?![a-z0-9]) on the lower-cased caption); an object by its "
                 "name or plural, multi-word names as the whole phrase; attributes by exact name only. "
                 "count = captions mentioning both; attr_count / obj_count = captions mentioning it."),
        "n_captions": rows,
        "rare_pairs": [list(p) for p in sorted(rare)],
        "attr_count": {a: attrs.get(a, 0) for a in ATTRIBUTE_NAMES},
        "obj_count": {o: objs.get(o, 0) for o in OBJECT_NAMES},
        "pairs": [
            {"attr": a, "obj": o, "pair": f"{a} {o}", "count": pairs.get(f"{a}|{o}", 0),
             "attr_count": attrs.get(a, 0), "obj_count": objs.get(o, 0), "rare": (a, o) in rare}
            for a in ATTRIBUTE_NAMES for o in OBJECT_NAMES
        ],
    }
