"""Parsing and validating an LLM's answer: words out of free text, then the rules they must meet.

Parsing is lenient (numbered or bulleted lists, commas, 'and', markdown, a chatty first or
last line); validation is strict: exactly three distinct lowercase single-word adjectives,
none equal to the pair's own attribute (nor a word of its object), optionally all from a
vocabulary, and, given contradiction rules, none naming another value of the pair's own
attribute ("red" for a blue heart; see ``contradictions``). Without a POS tagger
"adjective" is approximated: alphabetic, 3-20 letters and not one of a short list of words
small models often answer with that are not adjectives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    "features visual describe color colour shape".split()
)


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
    if word in NOT_ADJECTIVES:
        return f"'{word}' is not an adjective"
    if vocab is not None and word not in vocab:
        return f"'{word}' is not in the vocabulary"
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
