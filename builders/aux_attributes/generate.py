"""Asking, checking, retrying, falling back: auxiliary attributes for a list of pairs.

Round 0 asks every pair TRIDENT's question (temperature 0, ``seed``); round k asks the
pairs still invalid the stricter prompt, sampling at ``retry_temperature`` with seed
``seed + k`` (deterministic, but a different answer from round 0). Pairs still invalid after
``retries`` rounds get their nearest adjectives by embedding (``source: fallback``).
With contradiction rules (``AuxConfig.rules``) an answer naming another value of the pair's
own attribute ("red" for a blue heart) is invalid like a malformed one: re-asked with the
reason, and the fallback skips such words too.
All answers live in the client's sqlite cache, so an interrupted run resumes and a repeated
one sends no request. A pair the LLM never answered (endpoint down, HTTP errors) is not
guessed: the run stops with a clear error and the answers so far stay cached.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

from curate.errors import CurateError
from curate.llm import LLMClient, LLMUnreachable
from curate.log import progress_bar

from . import prompt
from .answers import Verdict, parse_answer, validate
from .contradictions import CONTRADICTS, ContradictionRules
from .fallback import NearestAdjectives

log = logging.getLogger(__name__)


@dataclass
class AuxConfig:
    retries: int = 2  # stricter re-asks after an invalid answer
    seed: int = 0
    max_tokens: int = 32
    retry_temperature: float = 0.7
    vocab: frozenset[str] | None = None
    rules: ContradictionRules | None = None  # the contradiction check (None: off)


@dataclass
class AuxResult:
    attr: str
    obj: str
    aux: list[str] = field(default_factory=list)
    source: str = ""  # "llm" | "fallback"
    tries: int = 0
    raw_answers: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def pair(self) -> str:
        return f"{self.attr} {self.obj}"

    def row(self) -> dict:
        d = asdict(self)
        d["pair"] = self.pair
        d["raw_answer"] = self.raw_answers[-1] if self.raw_answers else ""
        return d


@dataclass
class AuxStats:
    pairs: int = 0
    valid_first_try: int = 0
    valid_after_retry: int = 0
    fallback: int = 0
    rejected_contradiction: int = 0  # answers re-asked because a word contradicted the pair
    requests_sent: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        n = max(self.pairs, 1)
        return {**asdict(self), "valid_first_try_rate": round(self.valid_first_try / n, 4),
                "fallback_rate": round(self.fallback / n, 4),
                "pairs_per_s": round(self.pairs / self.seconds, 3) if self.seconds > 0 else None}


def _messages(r: AuxResult) -> list[dict]:
    attr, obj = r.attr.replace("_", " "), r.obj.replace("_", " ")  # CZSL names: paper_plane -> paper plane
    if not r.problems:
        return prompt.first_prompt(attr, obj)
    return prompt.retry_prompt(attr, obj, r.problems[-1])


def generate_aux(pairs: list[tuple[str, str]], llm: LLMClient, cfg: AuxConfig,
                 fallback: NearestAdjectives | None = None) -> tuple[list[AuxResult], AuxStats]:
    t0 = time.perf_counter()
    sent0 = llm.requests_sent
    results = [AuxResult(a, o) for a, o in pairs]
    pending = list(results)
    stats = AuxStats(pairs=len(results))
    with progress_bar("auxiliary attributes", total=len(results), unit="pairs") as advance:
        for round_no in range(cfg.retries + 1):
            if not pending:
                break
            temp, seed = (0.0, cfg.seed) if round_no == 0 else (cfg.retry_temperature, cfg.seed + round_no)
            still: list[AuxResult] = []

            def judge(i: int, ans: str | Exception, batch: list[AuxResult] = pending, first: bool = round_no == 0,
                      still: list[AuxResult] = still) -> None:
                if isinstance(ans, Exception):
                    return
                r = batch[i]
                r.tries += 1
                r.raw_answers.append(ans)
                verdict = validate(parse_answer(ans), r.attr, r.obj, cfg.vocab, cfg.rules)
                if verdict.adjectives and prompt.copies_example(verdict.adjectives):
                    verdict = Verdict(None, "it copies a worked example instead of describing the pair")
                if verdict.adjectives:
                    r.aux, r.source = verdict.adjectives, "llm"
                    stats.valid_first_try += first
                    stats.valid_after_retry += not first
                    advance(1)
                else:
                    r.problems.append(verdict.problem or "invalid")
                    stats.rejected_contradiction += CONTRADICTS in (verdict.problem or "")
                    still.append(r)

            answers = llm.chat_many([_messages(r) for r in pending], temperature=temp, max_tokens=cfg.max_tokens,
                                    seed=seed, on_result=judge)
            _stop_on_failures(pending, answers, llm)
            still.sort(key=lambda r: (r.attr, r.obj))
            pending = still
        if pending:
            log.info("%d pair(s) still invalid after %d retries: nearest adjectives by embedding",
                     len(pending), cfg.retries)
            fallback = fallback or NearestAdjectives(sorted(cfg.vocab) if cfg.vocab else None)
            near = fallback.nearest([(r.attr, r.obj) for r in pending], rules=cfg.rules)
            for r, words in zip(pending, near, strict=True):
                r.aux, r.source = words, "fallback"
                advance(1)
            stats.fallback = len(pending)
    stats.requests_sent = llm.requests_sent - sent0
    stats.seconds = time.perf_counter() - t0
    return results, stats


def _stop_on_failures(pending: list[AuxResult], answers: list, llm: LLMClient) -> None:
    """Requests that failed mean the LLM was not heard: stop rather than guess (answers stay cached)."""
    failed = [(r, a) for r, a in zip(pending, answers, strict=True) if isinstance(a, Exception)]
    if not failed:
        return
    got = sum(1 for a in answers if not isinstance(a, Exception))
    first = next((a for _, a in failed if isinstance(a, LLMUnreachable)), failed[0][1])
    reason = first.what if isinstance(first, CurateError) else str(first)
    raise CurateError(
        f"{len(failed)} of {len(answers)} request(s) this round got no answer ({reason})",
        where=llm.name,
        fix=f"fix the endpoint and rerun the same command: the {len(llm.cache)} answer(s) received so far "
            f"are cached in {llm.cache.path} and will not be asked again" + (f" ({got} this round)" if got else ""),
    )
