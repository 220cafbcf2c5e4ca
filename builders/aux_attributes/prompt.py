"""The prompts: TRIDENT's wording, a few-shot preamble, and a stricter retry prompt.

TRIDENT (utils/get_auxiliary_attributes/3_call_gpt_api.py) asks GPT-3.5 a single user turn.
Small local models (SmolLM2-135M) drift into prose or lists with that alone, so the same
question is preceded by worked examples that show the exact answer shape. Retries add the
rules the last answer broke and sample with a different seed.
"""

from __future__ import annotations

SYSTEM = ("You describe how things look. Answer with exactly three different one-word adjectives, "
          "lowercase, separated by commas, and nothing else.")

STRICT_SYSTEM = SYSTEM + (" Never repeat a word, never use the attribute or the object named in the question, "
                          "no numbering, no explanations.")

# (attr, obj, answer): answers avoid their own attribute, as the validator requires.
FEW_SHOT: tuple[tuple[str, str, str], ...] = (
    ("ripe", "banana", "yellow, curved, smooth"),
    ("rusty", "car", "brown, corroded, old"),
    ("wet", "dog", "shiny, dripping, furry"),
    ("sliced", "bread", "soft, golden, crumbly"),
)


def a_an(attr: str, obj: str) -> str:
    """The pair as TRIDENT writes it after 'a photo of a/an'."""
    return f"{attr} {obj}"


def question(attr: str, obj: str) -> str:
    """TRIDENT's exact question for one pair."""
    return (f"Please give me three adjectives that can describe the visual feature of a photo of a/an "
            f"{a_an(attr, obj)} well. Please strictly follow the format: give me just three words separated "
            f"by commas and do not say more.")


def _shots() -> list[dict]:
    msgs: list[dict] = []
    for a, o, ans in FEW_SHOT:
        msgs += [{"role": "user", "content": question(a, o)}, {"role": "assistant", "content": ans}]
    return msgs


def first_prompt(attr: str, obj: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, *_shots(), {"role": "user", "content": question(attr, obj)}]


def retry_prompt(attr: str, obj: str, problem: str) -> list[dict]:
    """The stricter prompt after an invalid answer; ``problem`` says what was wrong with it."""
    rules = (f" Your answer must be three different single words, none of them '{attr}' or '{obj}'"
             f" (the last answer was rejected: {problem}).")
    return [{"role": "system", "content": STRICT_SYSTEM}, *_shots(),
            {"role": "user", "content": question(attr, obj) + rules}]


_SHOT_ANSWERS = frozenset(frozenset(ans.split(", ")) for _, _, ans in FEW_SHOT)


def copies_example(words: list[str]) -> bool:
    """True when an answer is a worked example's answer: form-valid, but says nothing about the pair.

    Small models do this (SmolLM2 with the examples in one user turn answered "golden,
    crumbly, soft" for 44 of 45 pairs), so it counts as invalid and is retried.
    """
    return frozenset(words) in _SHOT_ANSWERS
