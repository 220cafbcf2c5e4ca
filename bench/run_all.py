"""``make bench``: run every benchmark, then rewrite the results section of ``bench/README.md``.

Each ``bench/bench_*.py`` runs with its default arguments (the ones the README table names)
in its own interpreter; a failing benchmark is reported and the others still run. The
results section is rebuilt from ``bench/results/*.md`` (each benchmark's own table), so a
single benchmark rerun by hand also lands in the README with ``--only-readme``.

    .venv/bin/python bench/run_all.py                 # all, then the README
    .venv/bin/python bench/run_all.py --only bench_read bench_embed
    .venv/bin/python bench/run_all.py --only-readme   # just rebuild the README section
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
README = BENCH / "README.md"
MARK = "## Results"
NOTES = ".notes.md"  # bench/results/NAME.notes.md: hand-written findings appended to NAME's section


def scripts() -> list[Path]:
    return sorted(BENCH.glob("bench_*.py"))


def run(script: Path) -> tuple[bool, float]:
    print(f"== {script.name}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(script)], cwd=BENCH.parent)
    return r.returncode == 0, time.perf_counter() - t0


def _machine(meta: dict) -> tuple[str, str]:
    """(machine, date) of a result file, whatever form its ``machine`` field takes."""
    m = meta.get("machine", {})
    if not isinstance(m, dict):
        return str(m), "?"
    load = m.get("load")
    load_s = f", load {load[0]:.1f}" if isinstance(load, list) and load else ""
    return f"{m.get('cores', '?')} cores{load_s}", m.get("date", "?")


def _adapted(name: str, meta: dict) -> list[dict]:
    """Summary rows for result files written before the ``summary`` convention (or by scripts that
    do not write one): only numbers their own files hold."""
    def row(what: str, ours: str, peer: str, ratio, goal: str = "") -> dict:
        return {"what": what, "ours": ours, "peer": peer, "ratio": ratio, "goal": goal}

    if name == "bench_llm" and "ratio_curate_over_peer" in meta:
        return [row("LLM client vs httpx + threads", f"{meta['curate_rps']:,.0f} req/s",
                    f"{meta['peer_httpx_rps']:,.0f} req/s", meta["ratio_curate_over_peer"])]
    if name == "bench_triplets" and "speedup_full" in meta:
        same = meta.get("same_pairs_on_subset")
        return [row("triplet mining vs naive pairwise (1M captions, naive extrapolated)",
                    f"{meta['ours_full']['seconds']:.1f} s", f"{meta['naive_full_extrapolated_s']:,.0f} s",
                    meta["speedup_full"] if same else "MISMATCH: pairs differ on the subset")]
    if name == "review_ingest" and "ratio_end_to_end" in meta:
        return [row("FiftyOne review sync vs add_sample loop", f"{meta['ours']['samples_per_s']:,.0f} samples/s",
                    f"{meta['peer_add_sample_loop']['samples_per_s']:,.0f} samples/s", meta["ratio_end_to_end"])]
    if name == "bench_cir" and "ours" in meta and "dense" in meta:
        same = meta.get("identical_metrics")
        return [row("CIR eval, 1M gallery vs dense torch", f"{meta['ours']['wall_s']:.1f} s, "
                    f"{meta['ours']['peak_rss_mb']:,} MB", f"{meta['dense']['wall_s']:.1f} s, "
                    f"{meta['dense']['peak_rss_mb']:,} MB",
                    round(meta["dense"]["wall_s"] / meta["ours"]["wall_s"], 3) if same else "MISMATCH: metrics differ")]
    return []


def _fmt(ratio) -> str:
    if isinstance(ratio, str):
        return ratio
    if isinstance(ratio, int | float):
        return f"**{ratio:,.2f}x**"
    return "-"


def summary_table() -> list[str]:
    """One row per comparison: ours, peer, ratio (or the mismatch), goal, machine, date, script."""
    lines = ["| benchmark | comparison | ours | peer | ratio | goal | machine | date |",
             "|---|---|---|---|---:|---|---|---|"]
    for meta_path in sorted((BENCH / "results").glob("*.json")):
        meta = json.loads(meta_path.read_text())
        rows = meta.get("summary")
        if not (isinstance(rows, list) and rows and isinstance(rows[0], dict) and "what" in rows[0]):
            rows = _adapted(meta_path.stem, meta)
        machine, date = _machine(meta)
        for r in rows:
            load = r.get("load")
            where = f"{machine}" if not (isinstance(load, list) and load) else \
                f"{machine.split(',')[0]}, load {load[0]:.1f}"
            lines.append(f"| {meta_path.stem} | {r['what']} | {r['ours']} | {r['peer']} | {_fmt(r.get('ratio'))} | "
                         f"{r.get('goal', '')} | {where} | {date} |")
    return lines


def results_section() -> str:
    parts = [MARK, "", "Written by `bench/run_all.py` from `bench/results/` (each file names its machine, load and "
             "date, and the command that made it). Ratios are ours / peer throughput (higher is better); a row "
             "whose two sides disagree shows MISMATCH instead of a ratio.", "", *summary_table(), ""]
    for md in sorted(p for p in (BENCH / "results").glob("*.md") if not p.name.endswith(NOTES)):
        meta = md.with_suffix(".json")
        when, command = "", ""
        if meta.exists():
            data = json.loads(meta.read_text())
            m = data.get("machine", {})
            when = f" ({m.get('date', '?')}, {m.get('cores', '?')} cores)" if isinstance(m, dict) else f" ({m})"
            command = data.get("command", "")
        parts += [f"### {md.stem}{when}", ""]
        if command:
            parts += [f"`{command}`", ""]
        parts += [md.read_text().strip(), ""]
        notes = md.with_name(md.stem + NOTES)  # what a person wrote about these numbers: a rerun never touches it
        if notes.exists():
            parts += [notes.read_text().strip(), ""]
    return "\n".join(parts).rstrip() + "\n"


def write_readme() -> None:
    text = README.read_text()
    head = text.split(MARK, 1)[0].rstrip() + "\n\n"
    README.write_text(head + results_section())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", help="script names (bench_read ...) to run")
    ap.add_argument("--only-readme", action="store_true", help="run nothing; rebuild the README results")
    args = ap.parse_args()
    failed = []
    if not args.only_readme:
        chosen = [s for s in scripts() if not args.only or s.stem in args.only]
        for script in chosen:
            ok, seconds = run(script)
            print(f"   {'ok' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
            if not ok:
                failed.append(script.name)
    write_readme()
    print(f"wrote {README}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
