"""Edit texts: varied templates per mode, or an LLM rewrite that is checked before it is kept.

Each triplet gets two texts (``edit_text``, ``edit_text_2``; FashionIQ wants two captions per
pair), chosen deterministically from the seed and the triplet id. With ``--edit-text llm`` the
first text comes from the LLM client (cached in the output folder, so reruns cost nothing);
an answer that does not name the new attribute/object, or that only restates the old one,
is replaced by a template and counted, never kept.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .config import unit_hash

logger = logging.getLogger(__name__)

# {old}/{new}: the changed word; {keep}: the kept word; {a_X}: X with its article
TEMPLATES: dict[str, list[str]] = {
    "attribute": [
        "make it {new} instead of {old}",
        "change the {keep} from {old} to {new}",
        "the same {keep}, but {new}",
        "turn the {old} {keep} into {a_new} one",
        "show {a_new} {keep} rather than {a_old} one",
        "{new} instead of {old}",
        "is {new} instead of {old}",
        "make the {keep} {new}, not {old}",
        "I want this {keep} but {new}",
        "same object, {new} rather than {old}",
        "switch it from {old} to {new}",
        "has a {new} look instead of a {old} one",
    ],
    "object": [
        "replace the {old} with {a_new}",
        "make it {a_new} instead of {a_old}",
        "the same {keep} look, but on {a_new}",
        "change the {old} into {a_new}",
        "show {a_keep} {new} instead",
        "{new} instead of {old}, keep it {keep}",
        "swap the {old} for {a_new}",
        "turn this {keep} {old} into {a_keep} {new}",
        "keep it {keep} but make it {a_new}",
        "is {a_new} instead of {a_old}",
        "same {keep} appearance on {a_new}",
        "has {a_new} in place of the {old}",
    ],
    "caption": [
        "replace {old} with {new}",
        "change {old} to {new}",
        "{new} instead of {old}",
        "make it {new} rather than {old}",
        "swap {old} for {new}",
        "the same scene but with {new} instead of {old}",
        "show {new}, not {old}",
        "switch {old} to {new}",
        "same picture with {new} in place of {old}",
        "has {new} instead of {old}",
        "turn {old} into {new}",
    ],
}


def article(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def render(mode: str, index: int, old: str, new: str, keep: str) -> str:
    t = TEMPLATES[mode][index % len(TEMPLATES[mode])]
    return t.format(old=old, new=new, keep=keep, a_old=article(old), a_new=article(new), a_keep=article(keep))


def template_texts(row: dict[str, Any], seed: int) -> tuple[str, str]:
    """Two different template texts for one triplet, picked by (seed, id)."""
    n = len(TEMPLATES[row["mode"]])
    i = int(unit_hash(seed, row["id"]) * n)
    j = (i + 1 + int(unit_hash(seed + 1, row["id"]) * (n - 1))) % n
    args = (row["old_word"], row["new_word"], row["shared"] or "")
    return render(row["mode"], i, *args), render(row["mode"], j, *args)


def mentions(text: str, word: str) -> bool:
    """Whole-word (or plural) mention, case-insensitive."""
    w = re.escape(word.lower())
    return re.search(rf"(?<![a-z0-9]){w}(s|es)?(?![a-z0-9])", text.lower()) is not None


_ARTICLE = r"(?:(?:an?|the|this|that)\s+)?"
# words that may follow "replace/change/turn" besides the old or the kept word
_NEUTRAL = {"it", "this", "image", "picture", "photo", "color", "colour", "object", "one", "look", "style"}


def _after(t: str, phrase: str) -> list[str]:
    """What follows each occurrence of ``phrase`` (a leading article dropped)."""
    return [m.group(1) for m in re.finditer(rf"\b(?:{phrase})\s+{_ARTICLE}(.*)", t)]


def check_llm_text(text: str, old: str, new: str, reference: str, keep: str | None = None) -> str | None:
    """Why an LLM edit text is unusable, or None when it is fine.

    Beyond naming the new word: what is contrasted ("instead of X") or replaced ("replace the
    X") must be the old word, and what is kept ("keep it X") the kept one; small LLMs copy
    the few-shot pattern with the wrong words ("make the heart red instead of red").
    """
    t = " ".join(text.strip().strip('"').split()).lower()
    old, new = old.lower(), new.lower()
    if not t:
        return "empty"
    if len(t.split()) > 25:
        return "too long"
    if not mentions(t, new):
        return "does not name the new word"
    if t.rstrip(".") in {reference.lower(), f"a photo of {reference.lower()}"}:
        return "restates the reference"
    if re.search(rf"\b(not|no|never)\s+(an?\s+)?{re.escape(new)}\b", t):
        return "negates the new word"
    if any(not mentions(rest.split(",")[0], old) or not rest.startswith(old.split()[0])
           for rest in _after(t, "instead of|rather than|in place of")):
        return "contrasts with the wrong word"
    allowed = [old] + ([keep.lower()] if keep else [])
    for rest in _after(t, "replace|swap|change|turn"):
        first = rest.split(" ")[0].strip(",.")
        if first not in _NEUTRAL and not any(rest.startswith(w.split()[0]) for w in allowed):
            return "replaces the wrong word"
    if keep:
        for rest in _after(t, "keep it|keeping it|keep the"):
            if not rest.startswith(keep.lower().split()[0]) and rest.split(" ")[0].strip(",.") not in _NEUTRAL:
                return "keeps the wrong word"
    return None


def describe(row: dict[str, Any], side: str) -> str:
    if row["mode"] == "caption":
        return row["ref_caption"] if side == "ref" else row["tgt_caption"]
    return f"{article(row[f'{side}_attr'])} {row[f'{side}_obj']}"


# one worked example per mode: SmolLM-size models copy the example's shape closely
EXAMPLES = {
    "attribute": ("a red car", "a blue car", "make the car blue instead of red"),
    "object": ("a striped cat", "a striped dog", "replace the cat with a dog, keep it striped"),
    "caption": ("a man riding a horse on the beach", "a man riding a camel on the beach",
                "swap the horse for a camel"),
}


def llm_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    ref, tgt = describe(row, "ref"), describe(row, "tgt")
    ex_ref, ex_tgt, ex_answer = EXAMPLES[row["mode"]]
    return [
        {"role": "system", "content": "You write short image edit instructions. Answer with the instruction only."},
        {"role": "user", "content": f"Reference image: {ex_ref}. Target image: {ex_tgt}. Instruction:"},
        {"role": "assistant", "content": ex_answer},
        {"role": "user", "content": f"Reference image: {ref}. Target image: {tgt}. Instruction:"},
    ]


@dataclass
class EditStats:
    template: int = 0
    llm_ok: int = 0
    llm_fallback: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def add_edit_texts(df: pl.DataFrame, how: str, seed: int, llm_spec: str | None = None,
                   cache_path: Path | None = None) -> tuple[pl.DataFrame, EditStats]:
    rows = df.to_dicts()
    st = EditStats()
    pairs = [template_texts(r, seed) for r in rows]
    first = [p[0] for p in pairs]
    source = ["template"] * len(rows)
    if how == "llm" and rows:
        answers = _ask_llm(rows, llm_spec or "local", cache_path)
        reasons: Counter[str] = Counter()
        for i, (r, ans) in enumerate(zip(rows, answers, strict=True)):
            why = f"error: {type(ans).__name__}" if isinstance(ans, Exception) else \
                check_llm_text(ans, r["old_word"], r["new_word"], describe(r, "ref"),
                               None if r["mode"] == "caption" else r["shared"])
            if why is None:
                first[i] = " ".join(str(ans).strip().strip('"').split())
                source[i] = "llm"
                st.llm_ok += 1
            else:
                reasons[why] += 1
                source[i] = "template-fallback"
                st.llm_fallback += 1
        st.reasons = dict(reasons)
        if st.llm_fallback:
            logger.warning("LLM edit texts: %d kept, %d replaced by templates (%s)", st.llm_ok,
                           st.llm_fallback, ", ".join(f"{k}: {v}" for k, v in reasons.most_common()))
    st.template = sum(s != "llm" for s in source)
    out = df.with_columns(pl.Series("edit_text", first, dtype=pl.String),
                          pl.Series("edit_text_2", [p[1] for p in pairs], dtype=pl.String),
                          pl.Series("edit_source", source, dtype=pl.String))
    return out, st


def _ask_llm(rows: list[dict[str, Any]], spec: str, cache_path: Path | None) -> list[Any]:
    from curate.llm import load_llm
    from curate.log import progress_bar

    client = load_llm(spec, cache_path=cache_path)
    out: list[Any] = []
    with progress_bar("edit texts (llm)", total=len(rows), unit="texts") as advance:
        for start in range(0, len(rows), 64):
            chunk = rows[start:start + 64]
            out.extend(client.chat_many([llm_messages(r) for r in chunk], temperature=0.0, max_tokens=32, seed=0))
            advance(len(chunk))
    return out
