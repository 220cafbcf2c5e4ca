"""Benchmark: `curate attributes` on the demo world's pairs: form, plausibility and speed, per model.

For each model (the bundled SmolLM2-135M by default; ``--llm SPEC`` adds others, e.g.
``local:PATH.gguf``) it runs the command twice on the same pairs, sharing one answer cache:

1. with the contradiction check (the default): a fresh cache, so every answer is really
   generated and pairs/s is the model's own rate;
2. with ``--no-contradiction-check``: the first-try answers come from the cache (same
   prompts), so only its extra retries cost anything.

Both outputs are then judged against the demo world's truth (``builders.aux_attributes.
plausibility``): the share of auxiliary words that contradict their pair (another colour,
pattern or state than the pair's own, a material its name rules out), and of words naming a
colour, pattern or state that the pair's world images show in under 10 % of cases
(implausible) or more (grounded). Valid-first-try and fallback rates, pairs/s and the load
average are recorded. With ``--peer`` TRIDENT's bare single-turn prompt (no few-shot, as in
its 3_call_gpt_api.py) is also scored with the same validator.
Writes bench/results/bench_llm_attributes.{json,md}.

    .venv/bin/python bench/bench_llm_attributes.py [--world demo-out/world] [--limit N] [--llm SPEC] [--peer]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CURATE = str(Path(sys.executable).with_name("curate"))

from bench.common import save  # noqa: E402


def world_pairs_file(world: Path | None, limit: int | None, tmp: Path) -> Path:
    """The demo world's attribute x object pairs as a pairs file (from world.json, else the vocabulary)."""
    if world is not None:
        w = json.loads((world / "world.json").read_text())
        attrs = [a["name"] for a in w["attributes"]]
        objs = [o["name"] for o in w["objects"]]
    else:
        from builders.synthetic.vocab import ATTRIBUTE_NAMES, OBJECT_NAMES

        attrs, objs = list(ATTRIBUTE_NAMES), list(OBJECT_NAMES)
    pairs = [(a, o) for a in attrs for o in objs]
    if limit:
        pairs = pairs[:: max(1, len(pairs) // limit)][:limit]
    p = tmp / "pairs.txt"
    p.write_text("".join(f"{a},{o}\n" for a, o in pairs))
    return p


def families_file(world: Path, tmp: Path) -> Path:
    """The world's families as a --families file (its renderer shows one value per family)."""
    fams = json.loads((world / "world.json").read_text())["families"]
    p = tmp / "families.txt"
    p.write_text("".join(f"{f}: {', '.join(vals)}\n" for f, vals in fams.items()))
    return p


def peer_trident_prompt(pairs_file: Path) -> dict:
    """TRIDENT's own single-turn prompt, scored with the same validator."""
    from builders.aux_attributes.answers import parse_answer, validate
    from builders.aux_attributes.pairs import pairs_from_file
    from builders.aux_attributes.prompt import question
    from curate.llm import load_llm

    pairs = pairs_from_file(pairs_file)
    with tempfile.TemporaryDirectory() as tmp, load_llm("local", cache_path=Path(tmp) / "c.sqlite") as llm:
        t0 = time.perf_counter()
        answers = llm.chat_many([[{"role": "user", "content": question(a, o)}] for a, o in pairs], max_tokens=32)
        secs = time.perf_counter() - t0
    ok = sum(validate(parse_answer(x), a, o).adjectives is not None
             for (a, o), x in zip(pairs, answers, strict=True) if isinstance(x, str))
    return {"pairs": len(pairs), "valid_first_try_rate": round(ok / len(pairs), 4),
            "pairs_per_s": round(len(pairs) / secs, 3)}


def run_attributes(pairs: Path, fams: Path, out: Path, cache: Path, llm: str, retries: int, check: bool) -> dict:
    env = {**os.environ, "CURATE_NO_PROGRESS": "1"}
    cmd = [CURATE, "-q", "attributes", "--pairs", str(pairs), "--out", str(out), "--llm", llm, "--retries",
           str(retries), "--families", str(fams), "--cache", str(cache)]
    if not check:
        cmd.append("--no-contradiction-check")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"curate attributes failed:\n{r.stderr}")
    s = json.loads((out / "aux_summary.json").read_text())
    return {"summary": {k: v for k, v in s.items() if k != "plausibility"}, "wall_s": round(wall, 1),
            "load_1min_start": round(load0, 2), "load_1min_end": round(os.getloadavg()[0], 2)}


def judge_against_world(out: Path, world: Path, fams: Path) -> dict:
    """Plausibility of OUT/aux_attributes.parquet against the world's images."""
    import polars as pl

    from builders.aux_attributes.contradictions import ContradictionRules, read_families
    from builders.aux_attributes.plausibility import WorldTruth, judge, summarise

    rules = ContradictionRules.bundled().with_families(read_families(fams), "world")
    rows = pl.read_parquet(out / "aux_attributes.parquet").select("attr", "obj", "aux", "source").to_dicts()
    return summarise(judge(rows, rules, WorldTruth.load(world)), with_truth=True)


def model_runs(llm: str, pairs: Path, fams: Path, world: Path, tmp: Path, retries: int) -> dict:
    tag = str(abs(hash(llm)))
    cache = tmp / f"cache-{tag}.sqlite"
    res = {}
    for check in (True, False):
        out = tmp / f"out-{tag}-{'on' if check else 'off'}"
        r = run_attributes(pairs, fams, out, cache, llm, retries, check)
        r["plausibility"] = judge_against_world(out, world, fams)
        res["check" if check else "no_check"] = r
    return res


def label(llm: str) -> str:
    return "SmolLM2-135M-Instruct Q4_1 (bundled)" if llm == "local" else llm


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def markdown(results: dict, retries: int, peer: dict | None) -> str:
    lines = ["# Auxiliary attributes on the demo world: form, plausibility, speed", "",
             f"All attribute x object pairs of the demo world; few-shot prompt, {retries} stricter retries, MiniLM "
             "fallback. Plausibility is judged against the world's own images (train, heldout, rare and pool "
             "metadata): *contradict* = names another value of the pair's own attribute family (or a material its "
             "name rules out); *implausible* = names a colour/pattern/state the pair's images show in under 10 % of "
             "cases; *grounded* = 10 % or more; the rest (round, fresh, ...) cannot be checked. "
             "pairs/s is measured on the run with the check (a fresh cache, model load included); the run without "
             "it reuses that cache for its first tries.", "",
             "| model | contradiction check | pairs | valid first try | valid after retry | re-asked for a "
             "contradiction | fallback | words contradicting the pair | pairs with one | implausible | grounded | "
             "pairs/s | load (1-min, start-end) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for llm, runs in results.items():
        for key in ("no_check", "check"):
            r = runs[key]
            s, p = r["summary"], r["plausibility"]["all"]
            speed = f"{s['pairs_per_s']}" if key == "check" else "(cached)"
            lines.append(f"| {label(llm)} | {'on' if key == 'check' else 'off'} | {s['pairs']} | "
                         f"{s['valid_first_try_rate']:.3f} | {s['valid_after_retry']} | "
                         f"{s.get('rejected_contradiction', 0)} | {s['fallback_rate']:.3f} | "
                         f"{pct(p['contradiction_share'])} | {pct(p['pairs_with_contradiction_share'])} | "
                         f"{pct(p['implausible_share'])} | {pct(p['grounded_share'])} | {speed} | "
                         f"{r['load_1min_start']}-{r['load_1min_end']} |")
    lines.append("")
    for llm, runs in results.items():
        for key in ("no_check", "check"):
            p = runs[key]["plausibility"]
            by = [f"{src} {p[src]['words']} words, {pct(p[src]['contradiction_share'])} contradicting, "
                  f"{pct(p[src]['implausible_share'])} implausible, {pct(p[src]['grounded_share'])} grounded"
                  for src in ("llm", "fallback") if src in p]
            ex = p.get("examples", {})
            lines.append(f"- {label(llm)}, check {'on' if key == 'check' else 'off'}, by source: "
                         f"{'; '.join(by)}. Examples: contradicting: {', '.join(ex.get('contradicts', [])[:5]) or '-'};"
                         f" implausible: {', '.join(ex.get('implausible', [])[:5]) or '-'}.")
    if peer:
        lines += ["", f"TRIDENT's bare prompt (no few-shot), same model and validator: valid first try "
                      f"{peer['valid_first_try_rate']:.3f} on {peer['pairs']} pairs, {peer['pairs_per_s']} pairs/s."]
    lines += ["", f"{os.cpu_count()} cores shared with other jobs; llama.cpp threads = idle cores at start "
                  "(`CURATE_LLM_THREADS` overrides)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, default=REPO / "demo-out" / "world", help="a demo world folder")
    ap.add_argument("--limit", type=int, help="only this many pairs, evenly spread")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--llm", action="append", default=[], help="another model to compare (repeatable)")
    ap.add_argument("--peer", action="store_true", help="also score TRIDENT's bare prompt")
    ap.add_argument("--render", action="store_true", help="only rewrite the Markdown from the saved JSON")
    args = ap.parse_args()
    if args.render:
        from bench.common import RESULTS

        res = json.loads((RESULTS / "bench_llm_attributes.json").read_text())
        md = markdown(res["models"], res["retries"], res["peer_trident_bare_prompt"])
        (RESULTS / "bench_llm_attributes.md").write_text(md + "\n")
        print(md)
        return
    models = ["local", *args.llm]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = world_pairs_file(args.world, args.limit, tmp)
        fams = families_file(args.world, tmp)
        results = {m: model_runs(m, pairs, fams, args.world, tmp, args.retries) for m in models}
        peer = peer_trident_prompt(pairs) if args.peer else None
    res = {"models": results, "peer_trident_bare_prompt": peer, "retries": args.retries,
           "world": str(args.world), "loadavg_end": [round(x, 1) for x in os.getloadavg()]}
    save("bench_llm_attributes", res, markdown(results, args.retries, peer))


if __name__ == "__main__":
    main()
