"""Writing the results: TRIDENT's ``aux_label.jsonl``, the provenance parquet, the summary.

``aux_label.jsonl`` is written by ``curate.aux_labels`` (its one reader and writer, format
and policy there): one JSON object per line with a single key, the pair ``"attr obj"``
(attribute, one space, object), mapping to the list of auxiliary adjectives.

TRIDENT looks for ``ROOT/aux_label/aux_label.jsonl`` under its CZSL root and keys it
``attr + ' ' + obj`` with the names *as in the pair files* (``paper_plane``, also for VAW-CZSL
whose pair files write ``attr+obj``). So besides ``OUT/aux_label.jsonl``:

- for a dataset with a CZSL export, ``DATASET/exports/czsl/aux_label/aux_label.jsonl`` is
  written with the export's names (spaces become ``_``);
- for a CZSL root, ``ROOT/aux_label/aux_label.jsonl`` with the pair files' names.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from curate.aux_labels import AUX_FILE, dataset_path, trident_path, write_aux_labels
from curate.fsutil import write_json, write_parquet

from .generate import AuxResult

AUX_LABEL = AUX_FILE
AUX_TABLE = "aux_attributes.parquet"
AUX_SUMMARY = "aux_summary.json"


def czsl_name(text: str) -> str:
    """A name as a CZSL export writes it (``builders.imagenet_ao.exports.czsl_name``)."""
    return text.strip().replace(" ", "_")


def write_trident_file(root: Path, results: list[AuxResult], rename: bool) -> Path:
    """``ROOT/aux_label/aux_label.jsonl`` keyed as TRIDENT looks (names renamed to CZSL names or kept)."""
    def key(r: AuxResult) -> str:
        return f"{czsl_name(r.attr)} {czsl_name(r.obj)}" if rename else f"{r.attr} {r.obj}"

    return write_aux_labels(trident_path(root), [(key(r), r.aux) for r in sorted(results, key=lambda r: (r.attr, r.obj))])


def write_outputs(out: Path, results: list[AuxResult], summary: dict) -> list[Path]:
    write_aux_labels(dataset_path(out), [(r.pair, r.aux) for r in sorted(results, key=lambda r: (r.attr, r.obj))])
    rows = [r.row() for r in sorted(results, key=lambda r: (r.attr, r.obj))]
    schema = {"attr": pl.Utf8, "obj": pl.Utf8, "pair": pl.Utf8, "aux": pl.List(pl.Utf8), "source": pl.Utf8,
              "tries": pl.Int32, "raw_answer": pl.Utf8, "raw_answers": pl.List(pl.Utf8),
              "problems": pl.List(pl.Utf8)}
    df = pl.DataFrame(rows, schema=schema)
    write_parquet(df, out / AUX_TABLE)
    write_json(out / AUX_SUMMARY, summary)
    return [out / AUX_LABEL, out / AUX_TABLE, out / AUX_SUMMARY]
