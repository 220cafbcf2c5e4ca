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


def scripts() -> list[Path]:
    return sorted(BENCH.glob("bench_*.py"))


def run(script: Path) -> tuple[bool, float]:
    print(f"== {script.name}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(script)], cwd=BENCH.parent)
    return r.returncode == 0, time.perf_counter() - t0


def results_section() -> str:
    parts = [MARK, "", "Written by `bench/run_all.py` from `bench/results/` (each file names its machine and date).", ""]
    for md in sorted((BENCH / "results").glob("*.md")):
        meta = md.with_suffix(".json")
        when = ""
        if meta.exists():
            m = json.loads(meta.read_text()).get("machine", {})
            when = f" ({m.get('date', '?')}, {m.get('cores', '?')} cores)" if isinstance(m, dict) else f" ({m})"
        parts += [f"### {md.stem}{when}", "", md.read_text().strip(), ""]
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
