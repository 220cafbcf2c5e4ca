"""Embedding folders in clip-retrieval's layout, written part by part and read memory-mapped.

::

    EMB/img_emb/img_emb_N.npy          float32 [n, D], L2-normalised (float16 with --dtype float16)
    EMB/text_emb/text_emb_N.npy        float32 [n, D] (caption embeddings, when captions exist)
    EMB/metadata/metadata_N.parquet    n rows: key, shard, caption, image_path (+ more)
    EMB/embeddings.json                {"model": SPEC, "dim": D, "counts": {...}} (ours only)

Part N of every subfolder holds the same rows in the same order, so ``clip-retrieval index``
and ``autofaiss`` read our folders, and we read folders made by ``clip-retrieval inference``
(keys then come from ``image_path`` or ``url`` when there is no ``key`` column).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CurateError
from ..fsutil import atomic_open, read_json, write_parquet

KINDS = ("img", "text")
_PART = re.compile(r"^(?:img_emb|text_emb|metadata)_(\d+)\.(?:npy|parquet)$")
INFO_NAME = "embeddings.json"


@dataclass
class Part:
    suffix: str
    emb: Path
    meta: Path

    @property
    def number(self) -> int:
        return int(self.suffix)


def part_paths(folder: Path, suffix: str, kind: str = "img") -> tuple[Path, Path]:
    return folder / f"{kind}_emb" / f"{kind}_emb_{suffix}.npy", folder / "metadata" / f"metadata_{suffix}.parquet"


STORE_DTYPES = ("float32", "float16")


def save_npy(path: Path, matrix: np.ndarray, dtype: str = "float32") -> None:
    """Write one part: float32 (the default), or float16 as clip-retrieval stores its parts (half the
    disk; every reader here widens parts to float32)."""
    if dtype not in STORE_DTYPES:
        raise CurateError(f"unknown embedding dtype {dtype!r}", fix=f"use one of {', '.join(STORE_DTYPES)}")
    with atomic_open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(matrix, dtype=np.dtype(dtype)), allow_pickle=False)


def save_parquet(path: Path, df) -> None:
    write_parquet(df, path, statistics=True)


def list_parts(folder: str | os.PathLike, kind: str = "img") -> list[Part]:
    """Parts of ``kind`` that have embeddings, each paired with its metadata file, in part order."""
    if kind not in KINDS:
        raise CurateError(f"unknown embedding kind {kind!r}", fix="use 'img' or 'text'")
    folder = Path(folder)
    sub = folder / f"{kind}_emb"
    if not sub.is_dir():
        raise CurateError(f"no {kind}_emb/ folder here", where=str(folder),
                          fix="pass a folder made by `curate embed` or `clip-retrieval inference`")
    parts = []
    for p in sub.glob(f"{kind}_emb_*.npy"):
        m = _PART.match(p.name)
        if not m:
            continue
        suffix = m.group(1)
        meta = folder / "metadata" / f"metadata_{suffix}.parquet"
        if not meta.exists():
            raise CurateError(f"{p.name} has no matching metadata file", where=str(meta),
                              fix="the embeddings folder is incomplete; re-run the embedding command")
        parts.append(Part(suffix, p, meta))
    if not parts:
        raise CurateError(f"no {kind}_emb_N.npy files", where=str(sub))
    return sorted(parts, key=lambda pt: (pt.number, pt.suffix))


def embeddings_info(folder: str | os.PathLike) -> dict:
    p = Path(folder) / INFO_NAME
    return read_json(p) if p.exists() else {}


def made_by(info: dict, spec: str) -> bool:
    """Were the embeddings described by ``info`` (embeddings.json) made by the model ``spec`` is now?
    The same spec, and (when recorded) the same weights: a retrained ``mini:PATH`` is another model."""
    from ..fingerprint import model_fingerprint

    if info.get("model") != spec:
        return False
    return info.get("model_fingerprint") in (None, model_fingerprint(spec))


def keys_from_metadata(df, part: str) -> list[str]:
    """Sample keys of one metadata part: ``key``, else the stem of ``image_path`` or ``url``."""
    if "key" in df.columns and df["key"].null_count() == 0:
        return [str(k) for k in df["key"].to_list()]
    for col in ("image_path", "url"):
        if col in df.columns and df[col].null_count() == 0:
            return [_stem(str(v)) for v in df[col].to_list()]
    return [f"{part}_{i}" for i in range(df.height)]


def _stem(value: str) -> str:
    base = value.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return base.rsplit(".", 1)[0] if "." in base else base


def load_part(part: Part, mmap: bool = True) -> np.ndarray:
    try:
        arr = np.load(part.emb, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CurateError(f"not a readable .npy embedding file ({e})", where=str(part.emb),
                          fix="re-create this part with `curate embed`") from e
    if arr.ndim != 2:
        raise CurateError(f"expected a 2-D matrix, got shape {arr.shape}", where=str(part.emb))
    return arr


def read_part_metadata(part: Part):
    import polars as pl

    return pl.read_parquet(part.meta)


def check_rows(part: Part, n_emb: int, n_meta: int) -> None:
    if n_emb != n_meta:
        raise CurateError(
            f"{part.emb.name} has {n_emb} rows but {part.meta.name} has {n_meta}",
            where=str(part.emb),
            fix="the folder is inconsistent (interrupted copy or mixed runs); re-create it with `curate embed`",
        )


def read_metadata(folder: str | os.PathLike, kind: str = "img"):
    """All metadata rows in part order, with a ``key`` column filled in and checked against the npy rows."""
    import polars as pl

    frames = []
    for part in list_parts(folder, kind):
        df = read_part_metadata(part)
        arr = load_part(part, mmap=True)
        check_rows(part, arr.shape[0], df.height)
        keys = keys_from_metadata(df, part.suffix)
        df = df.with_columns(pl.Series("key", keys, dtype=pl.Utf8))
        frames.append(df)
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame({"key": []})


def iter_chunks(folder: str | os.PathLike, kind: str = "img", rows: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
    """(keys, float32 chunk) pieces in part order, read memory-mapped: never the whole folder in RAM."""
    for part in list_parts(folder, kind):
        df = read_part_metadata(part)
        arr = load_part(part, mmap=True)
        check_rows(part, arr.shape[0], df.height)
        keys = keys_from_metadata(df, part.suffix)
        for i in range(0, arr.shape[0], rows):
            yield keys[i:i + rows], _normalised(np.asarray(arr[i:i + rows], dtype=np.float32))


def count_rows(folder: str | os.PathLike, kind: str = "img") -> tuple[int, int]:
    """(rows, dim) without reading the matrices (npy headers only)."""
    n, dim = 0, 0
    for part in list_parts(folder, kind):
        arr = load_part(part, mmap=True)
        n += arr.shape[0]
        dim = dim or arr.shape[1]
        if arr.shape[1] != dim:
            raise CurateError(f"dimension {arr.shape[1]} differs from the other parts ({dim})", where=str(part.emb))
    return n, dim


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if x.size and np.allclose(norms[norms > 0], 1.0, atol=1e-3):
        return x
    return l2_normalise(x)


def read_embeddings(folder: str | os.PathLike, kind: str = "img", mmap: bool = True) -> tuple[list[str], np.ndarray]:
    """(keys, float32 [N, D] L2-normalised) for one kind. A single part comes back memory-mapped.

    Refuses (naming the file) when a part's npy and parquet row counts differ.
    """
    parts = list_parts(folder, kind)
    keys: list[str] = []
    mats = []
    for part in parts:
        df = read_part_metadata(part)
        arr = load_part(part, mmap=mmap)
        check_rows(part, arr.shape[0], df.height)
        keys.extend(keys_from_metadata(df, part.suffix))
        mats.append(arr)
    dims = {m.shape[1] for m in mats}
    if len(dims) > 1:
        raise CurateError(f"parts have different dimensions {sorted(dims)}", where=str(folder))
    if len(mats) == 1 and mats[0].dtype == np.float32:
        matrix = mats[0]
        norms = np.linalg.norm(np.asarray(matrix[: min(len(matrix), 256)]), axis=1)
        if len(norms) and not np.allclose(norms[norms > 0], 1.0, atol=1e-3):
            matrix = _normalised(np.asarray(matrix, dtype=np.float32))
    else:
        matrix = _normalised(np.concatenate([np.asarray(m, dtype=np.float32) for m in mats]))
    return keys, matrix
