"""Benchmark: `curate attributes` with the bundled SmolLM2-135M on the demo world's pairs.

Reports what the issue asks for: valid-first-try rate, fallback rate and pairs/s, from the
command's own aux_summary.json (a fresh output folder, so every answer is really generated).
With ``--peer`` it also asks TRIDENT's bare single-turn prompt (no few-shot, as in its
3_call_gpt_api.py) for the same pairs and scores those answers with the same validator, so
the few-shot preamble's effect on a small model is measured rather than assumed.
Writes bench/results/bench_llm_attributes.{json,md}.

    .venv/bin/python bench/bench_llm_attributes.py [--world DIR] [--limit N] [--peer]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, help="a demo world folder (world.json); default: the demo vocabulary")
    ap.add_argument("--limit", type=int, help="only this many pairs, evenly spread")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--peer", action="store_true", help="also score TRIDENT's bare prompt")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = world_pairs_file(args.world, args.limit, tmp)
        env = {**os.environ, "CURATE_NO_PROGRESS": "1"}
        t0 = time.perf_counter()
        r = subprocess.run([CURATE, "-q", "attributes", "--pairs", str(pairs), "--out", str(tmp / "out"),
                            "--retries", str(args.retries)], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"curate attributes failed:\n{r.stderr}")
        s = json.loads((tmp / "out" / "aux_summary.json").read_text())
        peer = peer_trident_prompt(pairs) if args.peer else None
    load = os.getloadavg()
    res = {"ours": s, "wall_s_with_startup": round(wall, 1), "peer_trident_bare_prompt": peer,
           "loadavg": [round(x, 1) for x in load]}
    rows = [f"| curate attributes (few-shot, {args.retries} stricter retries, MiniLM fallback) | {s['pairs']} | "
            f"{s['valid_first_try_rate']:.3f} | {s['valid_after_retry']} | {s['fallback_rate']:.3f} | "
            f"{s['pairs_per_s']} |"]
    if peer:
        rows.append(f"| TRIDENT's bare prompt, same model, same validator | {peer['pairs']} | "
                    f"{peer['valid_first_try_rate']:.3f} | - | - | {peer['pairs_per_s']} |")
    md = "\n".join([
        "# Auxiliary attributes with SmolLM2-135M-Instruct (Q4_1 GGUF, llama.cpp, CPU)",
        "",
        "| run | pairs | valid first try | valid after retry | fallback rate | pairs/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"{os.cpu_count()} cores, load average during the run {res['loadavg']} (shared machine); "
        f"wall time with start-up {res['wall_s_with_startup']} s.",
    ])
    save("bench_llm_attributes", res, md)


if __name__ == "__main__":
    main()
