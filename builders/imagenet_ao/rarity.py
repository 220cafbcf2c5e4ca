"""Rarity scan: how often does each attribute x object pair co-occur in a caption corpus?

A pair co-occurs in a caption when some form of the attribute and some form of the object
(synonyms, plurals, multi-word names) both appear as *whole words*, case-insensitively: a
form matches where it is neither preceded nor followed by an ASCII letter or digit
(``heart-shaped`` and ``heart's`` mention ``heart``; ``hearty`` and ``starfish`` do not), and
a multi-word name matches only as the exact phrase with single spaces (``crescent moon``,
not ``crescent. moon``). This is the rule the demo world's ground truth uses.

The scan streams each file in batches (memory is bounded by the batch, not the corpus),
runs one task per input file through the executor (resumable: a file's counts are saved
as ``parts/NNNNN.npz`` with a done marker), and merges the counts into ``pairs.parquet``.
Per batch, the work is vectorised in polars: captions are normalised to
``" word word ... "`` (every character that is not a letter, digit or space becomes
``" # "``, a separator no name contains) and every form is found with one Aho-Corasick pass
(``str.extract_many``), so the cost grows with the corpus, not with the number of pairs.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.fingerprint import fingerprint
from curate.fsutil import atomic_open
from curate.ledger import Task, run_stage
from curate.stats import nmi

from .vocab import Vocabulary

log = logging.getLogger(__name__)
CAPTION_COLUMNS = ("caption", "TEXT", "text")
SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".json", ".ndjson")
SEPARATORS = r"[^a-z0-9 ]"


def list_caption_files(specs: list[str | os.PathLike]) -> list[Path]:
    """Expand paths, folders and globs into caption files (parquet/CSV/JSONL), sorted."""
    out: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in SUFFIXES and q.is_file()))
        else:
            hits = sorted(glob.glob(str(s), recursive=True))
            if not hits:
                raise CurateError("caption file not found", where=str(s),
                                  fix="give parquet/CSV/JSONL files, folders or globs like 'captions/*.parquet'")
            out.extend(Path(h) for h in hits)
    files = [p for p in out if p.suffix.lower() in SUFFIXES]
    if not files:
        raise CurateError(f"no caption files (.parquet/.csv/.jsonl) in {', '.join(map(str, specs))}")
    return sorted(dict.fromkeys(files))


def _columns(path: Path) -> list[str]:
    suf = path.suffix.lower()
    try:
        if suf == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).schema_arrow.names
        if suf in (".csv", ".tsv"):
            return pl.read_csv(path, n_rows=1, separator="\t" if suf == ".tsv" else ",",
                               infer_schema_length=0).columns
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        return list(pl.read_ndjson(first.encode()).columns) if first.strip() else []
    except Exception as e:  # noqa: BLE001 - any parse failure is bad input
        raise CurateError(f"cannot read caption file ({type(e).__name__}: {e})", where=str(path)) from e


def detect_caption_column(path: Path, requested: str | None = None) -> str:
    cols = _columns(path)
    if requested:
        if requested not in cols:
            raise CurateError(f"no column {requested!r}; columns found: {cols}", where=str(path),
                              fix="pass --caption-column with one of the columns found")
        return requested
    for c in CAPTION_COLUMNS:
        if c in cols:
            return c
    raise CurateError(f"no caption column (looked for {', '.join(CAPTION_COLUMNS)}); columns found: {cols}",
                      where=str(path), fix="pass --caption-column NAME")


def iter_caption_batches(path: Path, column: str, batch_rows: int = 200_000):
    """Yield ``pl.Series`` of captions, ``batch_rows`` at a time, never the whole file."""
    suf = path.suffix.lower()
    if suf == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[column]):
            yield pl.from_arrow(batch.column(0)).cast(pl.String)
    elif suf in (".csv", ".tsv"):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=max(1 << 16, batch_rows * 128)),
            parse_options=pacsv.ParseOptions(delimiter="\t" if suf == ".tsv" else ",", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()}),
        )
        for batch in reader:
            yield pl.from_arrow(batch.column(0)).cast(pl.String)
    else:
        lines: list[bytes] = []
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    lines.append(line)
                if len(lines) >= batch_rows:
                    yield pl.read_ndjson(b"".join(lines), schema_overrides={column: pl.String})[column]
                    lines = []
        if lines:
            yield pl.read_ndjson(b"".join(lines), schema_overrides={column: pl.String})[column]


def normalise_expr(col: pl.Expr) -> pl.Expr:
    """Lower-case, turn every non [a-z0-9 ] character into " # ", pad with spaces."""
    return pl.lit(" ") + col.fill_null("").str.to_lowercase().str.replace_all(SEPARATORS, " # ") + pl.lit(" ")


def normalise_text(s: pl.Series) -> pl.Series:
    return pl.DataFrame({"c": s}).select(normalise_expr(pl.col("c")).alias("c"))["c"]


@dataclass
class TermTable:
    """Every matchable form -> (kind, index). Forms are padded with spaces for whole-word matching."""

    patterns: list[str]
    kinds: list[str]  # "a" or "o"
    ids: list[int]
    n_attrs: int
    n_objs: int

    @classmethod
    def from_vocab(cls, vocab: Vocabulary) -> TermTable:
        pats, kinds, ids = [], [], []
        for kind, entries in (("a", vocab.attributes), ("o", vocab.objects)):
            for i, e in enumerate(entries):
                for form in e.forms:
                    norm = normalise_text(pl.Series([form.strip()])).to_list()[0]
                    if norm.strip(" #"):
                        pats.append(norm)
                        kinds.append(kind)
                        ids.append(i)
        return cls(pats, kinds, ids, len(vocab.attributes), len(vocab.objects))


def count_batch(captions: pl.Series, table: TermTable) -> dict[str, np.ndarray]:
    """Pair co-occurrence and marginal counts for one batch of captions."""
    import scipy.sparse as sp

    lut = pl.DataFrame({"m": table.patterns, "kind": table.kinds, "id": table.ids},
                       schema={"m": pl.String, "kind": pl.String, "id": pl.Int32}).unique(["m", "kind", "id"])
    norm = normalise_expr(pl.col("c"))
    hits = (
        pl.DataFrame({"c": captions}).lazy().with_row_index("row")
        .select("row", norm.str.extract_many(table.patterns, overlapping=True).alias("m"))
        .explode("m").drop_nulls("m")
        .join(lut.lazy(), on="m", how="inner")
        .select("row", "kind", "id").unique()
        .collect()
    )
    n = len(captions)
    a = hits.filter(pl.col("kind") == "a")
    o = hits.filter(pl.col("kind") == "o")
    am = sp.csr_matrix((np.ones(a.height, dtype=np.int64), (a["row"].to_numpy(), a["id"].to_numpy())),
                      shape=(n, table.n_attrs))
    om = sp.csr_matrix((np.ones(o.height, dtype=np.int64), (o["row"].to_numpy(), o["id"].to_numpy())),
                      shape=(n, table.n_objs))
    return {
        "pairs": np.asarray((am.T @ om).todense(), dtype=np.int64),
        "attr": np.asarray(am.sum(axis=0)).ravel().astype(np.int64),
        "obj": np.asarray(om.sum(axis=0)).ravel().astype(np.int64),
        "captions": np.array(n, dtype=np.int64),
    }


def _scan_file(task: Task) -> dict[str, Any]:
    """Executor task: count one caption file, save ``parts/NNNNN.npz`` atomically."""
    a = task.args
    table = TermTable(**a["table"])
    path = Path(a["path"])
    totals = {"pairs": np.zeros((table.n_attrs, table.n_objs), np.int64), "attr": np.zeros(table.n_attrs, np.int64),
              "obj": np.zeros(table.n_objs, np.int64), "captions": np.array(0, np.int64)}
    for batch in iter_caption_batches(path, a["column"], a["batch_rows"]):
        c = count_batch(batch, table)
        for k in totals:
            totals[k] = totals[k] + c[k]
    out = Path(a["out_dir"]) / a["part"]
    with atomic_open(out, "wb") as f:
        np.savez(f, **totals)
    return {"outputs": [a["part_rel"]], "stats": {"items": int(totals["captions"]), "file": str(path)}}


@dataclass
class RarityResult:
    pairs: pl.DataFrame
    nmi: float
    captions: int
    files: int
    failed: dict[str, str]
    summary: Any


def scan_corpus(
    files: list[Path],
    vocab: Vocabulary,
    out_dir: Path,
    executor=None,
    caption_column: str | None = None,
    max_cooccurrence: int = 0,
    batch_rows: int = 200_000,
) -> RarityResult:
    """Scan every file (resumably), merge counts, mark pairs with count <= max_cooccurrence rare."""
    out_dir = Path(out_dir)
    table = TermTable.from_vocab(vocab)
    tasks = []
    for i, f in enumerate(files):
        col = detect_caption_column(f, caption_column)
        part_rel = f"rarity/parts/{i:05d}.npz"
        tasks.append(Task(f"{i:05d}-{f.name}", {
            "path": str(f), "column": col, "batch_rows": batch_rows, "table": table.__dict__,
            "out_dir": str(out_dir), "part": part_rel, "part_rel": part_rel,
        }, inputs=fingerprint(f, col, table.__dict__)))  # a file's counts are redone when it or the terms change
    res = run_stage("rarity scan", _scan_file, tasks, out_dir, executor, unit="files")
    if res.errors:
        tid, err = next(iter(res.errors.items()))
        raise CurateError(f"{len(res.errors)} of {len(tasks)} caption file(s) could not be scanned, e.g. {tid}: "
                          f"{err.splitlines()[0]}", where=str(out_dir),
                          fix="fix or remove those files and rerun; files already scanned are kept")
    pairs = np.zeros((table.n_attrs, table.n_objs), np.int64)
    attr = np.zeros(table.n_attrs, np.int64)
    obj = np.zeros(table.n_objs, np.int64)
    n = 0
    for t in tasks:
        if t.id in res.errors:
            continue
        with np.load(out_dir / t.args["part"]) as z:
            pairs += z["pairs"]
            attr += z["attr"]
            obj += z["obj"]
            n += int(z["captions"])
    rows = []
    for i, a in enumerate(vocab.attributes):
        for j, o in enumerate(vocab.objects):
            rows.append((a.name, a.family or "attribute", o.name, int(pairs[i, j]), int(attr[i]), int(obj[j])))
    df = pl.DataFrame(rows, schema=["attr", "family", "obj", "cooccurrence", "attr_count", "obj_count"], orient="row")
    df = df.with_columns((pl.col("cooccurrence") <= max_cooccurrence).alias("rare"))
    value = nmi(pairs)
    return RarityResult(df, value if math.isfinite(value) else 0.0, n, len(files), res.errors, res.summary)
