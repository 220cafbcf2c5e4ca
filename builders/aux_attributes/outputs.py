"""Writing the results: TRIDENT's ``aux_label.jsonl``, the provenance parquet, the summary.

``aux_label.jsonl`` matches what TRIDENT's ``dataset.py`` (``get_aux_by_pair``) reads: one
JSON object per line with a single key, the pair ``"attr obj"`` (attribute, one space,
object), mapping to the list of auxiliary adjectives, written the way its own
``4_extract_aux_attr_from_sentence.py`` writes it (``json.dump`` defaults). TRIDENT looks
for ``ROOT/<aux_name>/aux_label.jsonl``; with the file in the dataset root set
``DATASET.aux_name: ''`` in its config (or copy the file into ``ROOT/aux_label/``).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from curate.fsutil import write_json, write_parquet, write_text

from .generate import AuxResult

AUX_LABEL = "aux_label.jsonl"
AUX_TABLE = "aux_attributes.parquet"
AUX_SUMMARY = "aux_summary.json"


def aux_label_lines(results: list[AuxResult]) -> str:
    return "".join(json.dumps({r.pair: r.aux}) + "\n" for r in sorted(results, key=lambda r: (r.attr, r.obj)))


def write_outputs(out: Path, results: list[AuxResult], summary: dict) -> list[Path]:
    write_text(out / AUX_LABEL, aux_label_lines(results))
    rows = [r.row() for r in sorted(results, key=lambda r: (r.attr, r.obj))]
    schema = {"attr": pl.Utf8, "obj": pl.Utf8, "pair": pl.Utf8, "aux": pl.List(pl.Utf8), "source": pl.Utf8,
              "tries": pl.Int32, "raw_answer": pl.Utf8, "raw_answers": pl.List(pl.Utf8),
              "problems": pl.List(pl.Utf8)}
    df = pl.DataFrame(rows, schema=schema)
    write_parquet(df, out / AUX_TABLE)
    write_json(out / AUX_SUMMARY, summary)
    return [out / AUX_LABEL, out / AUX_TABLE, out / AUX_SUMMARY]
