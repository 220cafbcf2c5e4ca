"""Where the attribute-object pairs come from: a dataset, a pairs file, or a demo world.

- a dataset folder (``manifest.parquet``): the unique (attr, obj) pairs of its samples,
  rows a reviewer rejected left out;
- a CZSL root (``compositional-split-natural/{train,val,test}_pairs.txt``, the layout TRIDENT
  reads): the pairs of its pair files, names exactly as written there (``paper_plane``;
  ``attr+obj`` lines as in VAW-CZSL);
- a demo world folder (``world.json``): every attribute x every object;
- ``--pairs FILE``: text lines ``attr obj`` (split at the first space, so a multi-word
  *object* needs a comma or a tab: ``small,paper plane`` / ``small<TAB>paper plane``; blank
  lines and ``#`` comments are skipped), a CSV with ``attr`` and ``obj`` columns, or a
  parquet file with ``attr`` and ``obj`` columns (a build's ``pairs.parquet``).

Pairs are returned unique and sorted, so outputs are byte-identical across reruns.
"""

from __future__ import annotations

import csv
from pathlib import Path

from curate.errors import CurateError
from curate.world import is_world

Pair = tuple[str, str]


def _norm(pairs: list[Pair]) -> list[Pair]:
    return sorted({(a.strip(), o.strip()) for a, o in pairs if a and o and a.strip() and o.strip()})


def pairs_from_dataset(folder: Path) -> list[Pair]:
    from curate.manifest import read_manifest

    df = read_manifest(folder, include_rejected=False)
    missing = [c for c in ("attr", "obj") if c not in df.columns]
    if missing:
        raise CurateError(f"manifest has no {missing} column(s)", where=str(folder / "manifest.parquet"),
                          fix="pass a dataset built by `curate build`, or use --pairs FILE")
    rows = df.select("attr", "obj").drop_nulls().unique().iter_rows()
    return _norm([(str(a), str(o)) for a, o in rows])


CZSL_SPLIT = "compositional-split-natural"


def is_czsl_root(folder: Path) -> bool:
    return (folder / CZSL_SPLIT).is_dir()


def pairs_from_czsl(folder: Path) -> list[Pair]:
    """The pairs of a CZSL root's pair files ('attr obj', or 'attr+obj' when a file's lines all have '+')."""
    pairs: list[Pair] = []
    for split in ("train", "val", "test"):
        path = folder / CZSL_SPLIT / f"{split}_pairs.txt"
        if not path.is_file():
            continue
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        plus = bool(lines) and all("+" in ln for ln in lines)
        for n, line in enumerate(lines, 1):
            parts = line.split("+") if plus else line.split()
            if len(parts) != 2:
                raise CurateError(f"expected 'attr obj' or 'attr+obj', got {line!r}", where=f"{path}:{n}")
            pairs.append((parts[0], parts[1]))
    return pairs


def pairs_from_world(folder: Path) -> list[Pair]:
    from curate.world import World

    return _norm(World.load(folder).all_pairs())


def _split_line(line: str, where: str) -> Pair:
    for sep in ("\t", ",", "+"):  # '+': VAW-CZSL pair files
        if sep in line:
            parts = [p.strip() for p in line.split(sep)]
            if len(parts) == 2 and all(parts):
                return parts[0], parts[1]
            raise CurateError(f"expected 'attr{sep}obj', got {line!r}", where=where,
                              fix="one pair per line: 'attr obj', or 'attr,obj words' for multi-word objects")
    parts = line.split(None, 1)
    if len(parts) != 2:
        raise CurateError(f"expected 'attr obj', got {line!r}", where=where,
                          fix="one pair per line: 'attr obj', or 'attr,obj words' for multi-word objects")
    return parts[0], parts[1].strip()


def _table_pairs(rows: list[dict], columns: list[str], where: str) -> list[Pair]:
    missing = [c for c in ("attr", "obj") if c not in columns]
    if missing:
        raise CurateError(f"no {missing} column(s); found {columns}", where=where,
                          fix="name the columns 'attr' and 'obj'")
    return [(str(r["attr"]), str(r["obj"])) for r in rows if r["attr"] is not None and r["obj"] is not None]


def pairs_from_file(path: Path) -> list[Pair]:
    if not path.is_file():
        raise CurateError("pairs file not found", where=str(path))
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import polars as pl

        try:
            df = pl.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - any parquet failure is a bad input file
            raise CurateError(f"cannot read parquet ({e})", where=str(path)) from e
        pairs = _table_pairs(df.to_dicts() if {"attr", "obj"} <= set(df.columns) else [], df.columns, str(path))
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            pairs = _table_pairs(list(reader), list(reader.fieldnames or []), str(path))
    else:
        pairs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                pairs.append(_split_line(line, f"{path}:{n}"))
    pairs = _norm(pairs)
    if not pairs:
        raise CurateError("no pairs in this file", where=str(path),
                          fix="one 'attr obj' per line (or a CSV/parquet with attr,obj columns)")
    return pairs


def load_pairs(source: Path | None, pairs_file: Path | None) -> tuple[list[Pair], str]:
    """The pairs and what kind of source gave them (``dataset`` / ``czsl`` / ``world`` / ``file``)."""
    if pairs_file is not None:
        return pairs_from_file(pairs_file), "file"
    if source is None:
        raise CurateError("no pairs given", fix="pass a DATASET folder, a demo world folder, or --pairs FILE")
    if not source.is_dir():
        raise CurateError("not a folder", where=str(source),
                          fix="pass a dataset folder, a demo world folder, or use --pairs FILE for a file")
    if (source / "manifest.parquet").exists():
        pairs, kind = pairs_from_dataset(source), "dataset"
    elif is_czsl_root(source):
        pairs, kind = _norm(pairs_from_czsl(source)), "czsl"
    elif is_world(source):
        pairs, kind = pairs_from_world(source), "world"
    else:
        raise CurateError("neither a dataset (manifest.parquet), a CZSL root (compositional-split-natural/) nor a "
                          "demo world (world.json)", where=str(source),
                          fix="pass a folder made by `curate build` or `curate demo world`, or --pairs FILE")
    if not pairs:
        raise CurateError(f"the {kind} has no attribute-object pairs", where=str(source))
    return pairs, kind


def read_vocab(path: Path) -> frozenset[str]:
    """A vocabulary file: one adjective per line, ``#`` comments allowed."""
    if not path.is_file():
        raise CurateError("vocabulary file not found", where=str(path))
    words = [ln.strip().lower() for ln in path.read_text(encoding="utf-8").splitlines()]
    words = [w for w in words if w and not w.startswith("#")]
    if len(set(words)) < 3:
        raise CurateError(f"a vocabulary needs at least 3 words, found {len(set(words))}", where=str(path))
    return frozenset(words)
