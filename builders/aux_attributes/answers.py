"""Parsing and validating an LLM's answer: words out of free text, then the rules they must meet.

Parsing is lenient (numbered or bulleted lists, commas, 'and', markdown, a chatty first or
last line); validation is strict: exactly three distinct lowercase single-word adjectives,
none equal to the pair's own attribute (nor a word of its object), optionally all from a
vocabulary, and, given contradiction rules, none naming another value of the pair's own
attribute ("red" for a blue heart; see ``contradictions``).

"Adjective" is decided offline by a lexicon (:func:`is_adjective`): the bundled
``adjectives.txt`` (WordNet 3.0's single-word adjectives), the visual adjectives of the
fallback and the words of the exclusive values (materials such as "paper" included), plus
words with an adjective's suffix ("folded", "shimmering", "pointy", "reddish", "starlike"; not
"-ly"); a
``--vocab`` vouches for its own words. So "slightly"
(an adverb) and "vintage" (a noun) fail; so do a few real adjectives that describe a person's
manner or speech, never how a thing looks ("frank", "honest": :data:`NOT_VISUAL`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .contradictions import ContradictionRules

_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022+]+|\(?\d{1,2}[.):]|\(?[a-c][.)])\s+")
_INLINE_NUM = re.compile(r"(?:^|\s)\(?\d{1,2}[.)]\s+")
_SEP = re.compile(r"\s*(?:,\s*(?:and|or)\s+|,|;|\||/|\s+and\s+|\s+or\s+|\s+&\s+)\s*")
_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
_STRIP = "\"'`*_.!?()[]{}<>:\u201c\u201d\u2018\u2019 \t"
ADJ = re.compile(r"^[a-z]{3,20}$")

NOT_ADJECTIVES = frozenset(
    "the and but with for from that this these those there here its his her their your our photo photograph "
    "image picture object thing things three adjectives adjective words word answer sure okay feature "
    "features visual describe color colour shape very quite rather somewhat more most".split()
)
# adjectives of a person's manner, speech or character: no reader accepts them for how a thing looks
NOT_VISUAL = frozenset(
    "frank honest candid sincere blunt polite rude kind unkind cruel brave cowardly shy bold proud humble "
    "friendly unfriendly generous selfish greedy jealous lazy clever stupid wise foolish witty funny serious "
    "cheerful grumpy angry happy sad lonely nervous anxious calm curious eager loyal modest arrogant "
    "talkative quiet".split()
)
ADJECTIVES = "adjectives.txt"


@lru_cache(maxsize=1)
def adjective_lexicon() -> frozenset[str]:
    """The bundled adjectives (WordNet 3.0), the fallback's visual adjectives and every word of the
    exclusive values (materials and colours named by nouns, "paper", "gold", included)."""
    from .contradictions import ContradictionRules

    words: set[str] = set()
    for name in (ADJECTIVES, "visual_adjectives.txt"):
        text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
        words.update(ln.strip().lower() for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))
    for axis in ContradictionRules.bundled().axes:
        words.update(axis.names)
    return frozenset(words)


def is_adjective(word: str, vocab: frozenset[str] | None = None) -> bool:
    """Whether an answer word can be an adjective that describes how a thing looks (see the module)."""
    if vocab is not None and word in vocab:
        return True
    if word in NOT_ADJECTIVES or word in NOT_VISUAL:
        return False
    return word in adjective_lexicon() or bool(_DERIVED.search(word))


# adjectives made from other words, which no word list holds all of: "folded", "shimmering", "pointy"
# (not "-ly": "slightly" is an adverb; "lovely", "curly" are in the lexicon)
_DERIVED = re.compile(r"^[a-z]{3,}(?:ed|[a-z]{2}ing|[^l]y|ish|like|less|ful|ous)$")


def _clean(item: str) -> str:
    item = item.strip(_STRIP)
    item = re.split(r"\s*(?::|\s-\s|\s\u2013\s|\s\u2014\s|\()", item, maxsplit=1)[0]  # "bright: because ..."
    return " ".join(_WORD.findall(item.lower()))


def parse_answer(text: str) -> list[str]:
    """Candidate answers, in order: lowercase, stripped, each one or more words. Never raises."""
    text = (text or "").lower().replace("**", "").replace("\r", "")
    lines = [ln for ln in text.split("\n") if ln.strip()]
    listed = [ln for ln in lines if _LIST_ITEM.match(ln)]
    if len(listed) >= 2:
        raw = [_LIST_ITEM.sub("", ln, count=1) for ln in listed]
    else:
        best = max(lines, key=lambda ln: (len(_SEP.findall(ln)) + len(_INLINE_NUM.findall(ln)), -len(ln)),
                   default="")
        if ":" in best and _SEP.search(best.rsplit(":", 1)[1]):
            best = best.rsplit(":", 1)[1]  # "Here are three adjectives: a, b, c"
        best = _INLINE_NUM.sub(",", best)
        best = re.sub(r"[.!?]+\s+\S.*$", "", best.strip())  # drop a trailing sentence
        raw = _SEP.split(best)
    items = [_clean(r) for r in raw]
    return [i for i in items if i]


@dataclass(frozen=True)
class Verdict:
    adjectives: list[str] | None  # the three, when valid
    problem: str | None  # why not, when invalid


def word_problem(word: str, attr: str, obj: str, vocab: frozenset[str] | None = None,
                 rules: ContradictionRules | None = None) -> str | None:
    """Why one word cannot be an auxiliary attribute of (attr, obj), or None when it can."""
    if not ADJ.match(word):
        return f"'{word}' is not a single lowercase word"
    if word == attr.lower() or word in obj.lower().split():
        return f"'{word}' repeats the pair itself"
    if vocab is not None and word not in vocab:
        return f"'{word}' is not in the vocabulary"
    if not is_adjective(word, vocab):
        return f"'{word}' is not an adjective that describes how a thing looks"
    if rules is not None:
        return rules.clash(word, attr, obj)
    return None


def validate(items: list[str], attr: str, obj: str, vocab: frozenset[str] | None = None,
             rules: ContradictionRules | None = None) -> Verdict:
    """Apply the rules; the first broken rule is the problem reported (and fed to the retry prompt)."""
    if len(items) != 3:
        return Verdict(None, f"expected 3 adjectives, got {len(items)}")
    if len(set(items)) != 3:
        return Verdict(None, "a word is repeated")
    for w in items:
        problem = word_problem(w, attr, obj, vocab, rules)
        if problem:
            return Verdict(None, problem)
    return Verdict(list(items), None)
