"""Plausibility, not only form: do the auxiliary adjectives agree with the pair, and with its images?

A well-formed answer can still be wrong: "red, shiny, round" for a *blue heart*. Two measures:

- **contradiction share** (any source, no ground truth needed): the share of auxiliary words
  that :meth:`ContradictionRules.clash` flags (another value of the pair's own attribute, or
  a value the object's name rules out: "gold" for a *paper* plane), and the share of pairs with
  at least one; and the share that is no adjective of how a thing looks (*not_adjective*:
  "slightly", "frank"; :func:`.answers.is_adjective`);
- **world truth** (a demo world, which knows what every rendered image shows: its colour,
  pattern and state, ``plain`` and ``normal`` included): each word that names a value of one
  of those families is checked against the images of its pair. *contradicts*: flagged by the
  rules; *implausible*: the pair's images show that value in under 10 % of cases ("red" for a
  striped lemon, whose lemons are yellow 87 % of the time); *grounded*: shown in 10 % or more
  ("yellow" for that lemon, "plain" for a red heart); *unverifiable*: the word names nothing
  the world renders ("round", "fresh"), so nothing can be said.

The world's truth is read from its images' own metadata (``train/``, ``heldout/``, ``rare/``
shards and ``pool/pool.parquet``), not re-derived from the renderer's rule.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import CurateError

from .contradictions import ContradictionRules

VERDICTS = ("contradicts", "not_adjective", "implausible", "grounded", "unverifiable")
WORLD_VERDICTS = VERDICTS[2:]  # judged against a demo world's images
IMPLAUSIBLE_BELOW = 0.10
Pair = tuple[str, str]


@dataclass
class WorldTruth:
    """What the world's images of each pair show, per family (``colour``, ``pattern``, ``state``)."""

    families: dict[str, list[str]]                       # family -> every value an image can show
    shown: dict[Pair, dict[str, Counter]] = field(default_factory=dict)
    images: Counter = field(default_factory=Counter)

    @classmethod
    def load(cls, world: Path) -> WorldTruth:
        from builders.synthetic.vocab import DEFAULT_VISIBLE
        from curate.world import SPLITS, World

        w = World.load(world)
        families = {f: [*vals, *([DEFAULT_VISIBLE[f]] if f in DEFAULT_VISIBLE else [])]
                    for f, vals in w.families.items()}
        truth = cls(families)
        for split in SPLITS:
            for shard in w.shards(split):
                truth._add_shard(shard)
        pool = w.pool_table
        if pool.is_file():
            import polars as pl

            cols = ["attr", "obj", *families]
            df = pl.read_parquet(pool)
            if all(c in df.columns for c in cols):
                for row in df.select(cols).iter_rows(named=True):
                    truth.add(row)
        if not truth.images:
            raise CurateError("the world holds no labelled images", where=str(world),
                              fix="regenerate it with `curate demo world --out DIR`")
        return truth

    def _add_shard(self, shard: Path) -> None:
        from curate.shards import iter_shard

        for s in iter_shard(shard, exts={"json"}):
            try:
                meta = json.loads(s["json"])
            except (KeyError, ValueError):
                continue
            if isinstance(meta, dict):
                self.add(meta)

    def add(self, meta: dict[str, Any]) -> None:
        attr, obj = meta.get("attr"), meta.get("obj")
        if not isinstance(attr, str) or not isinstance(obj, str):
            return
        pair = (attr, obj)
        self.images[pair] += 1
        by_family = self.shown.setdefault(pair, {})
        for fam in self.families:
            v = meta.get(fam)
            if isinstance(v, str):
                by_family.setdefault(fam, Counter())[v] += 1

    def share(self, pair: Pair, family: str, values: set[str]) -> float | None:
        """The share of the pair's images whose ``family`` shows one of ``values`` (None: no images)."""
        counts = self.shown.get(pair, {}).get(family)
        if not counts:
            return None
        return sum(counts[v] for v in values) / sum(counts.values())


@dataclass
class WordVerdict:
    attr: str
    obj: str
    word: str
    source: str          # "llm" | "fallback"
    verdict: str         # one of VERDICTS
    share: float | None  # world truth: share of the pair's images showing what the word names
    reason: str = ""


def _names(rules: ContradictionRules, word: str) -> set[str]:
    """Every value name ``word`` can stand for: itself and what any axis says it names."""
    out = {word.lower()}
    for vals in rules.named(word).values():
        out |= vals
    return out


def judge(rows: list[dict[str, Any]], rules: ContradictionRules, truth: WorldTruth | None = None,
          vocab: frozenset[str] | None = None) -> list[WordVerdict]:
    """One verdict per auxiliary word of ``rows`` (``attr``, ``obj``, ``aux``, ``source``)."""
    from .answers import is_adjective

    out = []
    for r in rows:
        attr, obj = str(r["attr"]), str(r["obj"])
        for word in r.get("aux") or []:
            reason = rules.clash(word, attr, obj)
            if reason:
                out.append(WordVerdict(attr, obj, word, r.get("source", ""), "contradicts", 0.0, reason))
                continue
            if not is_adjective(word, vocab):
                out.append(WordVerdict(attr, obj, word, r.get("source", ""), "not_adjective", None,
                                       f"'{word}' is not an adjective that describes how a thing looks"))
                continue
            if truth is None:
                out.append(WordVerdict(attr, obj, word, r.get("source", ""), "unverifiable", None))
                continue
            names = _names(rules, word)
            shares = [truth.share((attr, obj), fam, names & set(vals))
                      for fam, vals in truth.families.items() if names & set(vals)]
            shares = [s for s in shares if s is not None]
            if not shares:
                out.append(WordVerdict(attr, obj, word, r.get("source", ""), "unverifiable", None))
                continue
            best = max(shares)
            verdict = "implausible" if best < IMPLAUSIBLE_BELOW else "grounded"
            out.append(WordVerdict(attr, obj, word, r.get("source", ""), verdict, round(best, 4)))
    return out


def summarise(verdicts: list[WordVerdict], with_truth: bool) -> dict[str, Any]:
    """Shares of words per verdict (overall and per source), and pairs with a contradiction."""
    def shares(vs: list[WordVerdict]) -> dict[str, Any]:
        n = len(vs)
        c = Counter(v.verdict for v in vs)
        pairs = {(v.attr, v.obj) for v in vs}
        bad = {(v.attr, v.obj) for v in vs if v.verdict == "contradicts"}
        d: dict[str, Any] = {"words": n, "pairs": len(pairs),
                             "contradiction_share": round(c["contradicts"] / n, 4) if n else None,
                             "pairs_with_contradiction": len(bad),
                             "pairs_with_contradiction_share": round(len(bad) / len(pairs), 4) if pairs else None,
                             "not_adjective_share": round(c["not_adjective"] / n, 4) if n else None}
        if with_truth:
            d.update({f"{k}_share": round(c[k] / n, 4) if n else None for k in WORLD_VERDICTS})
        return d

    out = {"all": shares(verdicts)}
    for src in sorted({v.source for v in verdicts}):
        out[src] = shares([v for v in verdicts if v.source == src])
    out["examples"] = {k: [f"{v.word} ({v.attr} {v.obj})" for v in verdicts if v.verdict == k][:8]
                       for k in ("contradicts", "not_adjective", "implausible")
                       if any(v.verdict == k for v in verdicts)}
    out["implausible_below"] = IMPLAUSIBLE_BELOW if with_truth else None
    return out


def markdown(summary: dict[str, Any], title: str = "Plausibility of the auxiliary attributes") -> str:
    """The summary as a Markdown table (rows: all words, then per source)."""
    with_truth = summary.get("implausible_below") is not None
    cols = ["words", "pairs", "contradiction_share", "pairs_with_contradiction_share", "not_adjective_share"]
    if with_truth:
        cols += ["implausible_share", "grounded_share", "unverifiable_share"]
    head = ["answers", "words", "pairs", "contradict the pair", "pairs with one", "not an adjective"]
    if with_truth:
        head += ["implausible for its images", "grounded in its images", "unverifiable"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for key in ["all", *[k for k in summary if k not in ("all", "examples", "implausible_below")]]:
        row = summary[key]
        cells = [str(row[c]) if c in ("words", "pairs") else
                 ("-" if row.get(c) is None else f"{100 * row[c]:.1f} %") for c in cols]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    for k, ex in summary.get("examples", {}).items():
        lines += ["", f"{k.replace('_', ' ').capitalize()}, e.g.: " + ", ".join(ex)]
    if with_truth:
        lines += ["", f"Implausible: the pair's world images show what the word names in under "
                      f"{100 * summary['implausible_below']:.0f} % of cases."]
    return "\n".join(lines) + "\n"


COLOURS = {"contradicts": "#c0392b", "not_adjective": "#8e44ad", "implausible": "#e67e22", "grounded": "#27ae60", "unverifiable": "#bdc3c7"}


def plot(summary: dict[str, Any], path: Path) -> Path:
    """One stacked bar per answer source (all, llm, fallback): the share of words per verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curate.fsutil import atomic_open

    with_truth = summary.get("implausible_below") is not None
    rows = [k for k in summary if k not in ("examples", "implausible_below")]
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.55 * len(rows)))
    for i, key in enumerate(rows):
        row, left = summary[key], 0.0
        parts = [("contradicts", row["contradiction_share"] or 0.0),
                 ("not_adjective", row.get("not_adjective_share") or 0.0)]
        if with_truth:
            parts += [(k, row[f"{k}_share"] or 0.0) for k in WORLD_VERDICTS]
        else:
            parts += [("unverifiable", 1.0 - sum(share for _, share in parts))]
        for verdict, share in parts:
            ax.barh(i, 100 * share, left=100 * left, color=COLOURS[verdict],
                    label=verdict if i == 0 else None)
            if share >= 0.06:
                ax.text(100 * (left + share / 2), i, f"{100 * share:.0f}%", ha="center", va="center", fontsize=8)
            left += share
    ax.set_yticks(range(len(rows)), [f"{k} ({summary[k]['words']} words)" for k in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of auxiliary words (%)")
    ax.set_title("Auxiliary words: contradicting the pair, not adjectives" + (", and against the world's images" if with_truth else ""),
                 fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.12), frameon=False)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path
