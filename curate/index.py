"""faiss indexes over embedding folders, and text/image search against them.

``build_index(EMB, OUT)`` picks the index kind from the size of the folder and a memory
budget (exact ``flat`` inner product for small folders, ``ivf`` when the raw vectors fit the
budget, ``pq`` (IVF-PQ, compressed) when they do not, ``hnsw`` on request), trains on a random
sample and adds vectors chunk by chunk from memory-mapped parts, so a folder larger than RAM
never has to be loaded. The index folder remembers the model spec, so ``curate search`` can
embed a text prompt with the same model::

    IDX/index.faiss   IDX/keys.parquet (key, shard, shard_path, image_path, caption)   IDX/index.json
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from .errors import CurateError
from .fsutil import TMP_MARK, read_json, write_json
from .options import Device, Overwrite

logger = logging.getLogger(__name__)
KINDS = ("auto", "flat", "ivf", "hnsw", "pq")
FLAT_MAX_ROWS = 50_000
CHUNK_ROWS = 65_536
INDEX_NAME, KEYS_NAME, META_NAME = "index.faiss", "keys.parquet", "index.json"


def parse_size(text: str) -> int:
    """'2GB', '512M', '1.5g', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise CurateError(f"cannot read the size {text!r}", fix="write it like 512MB, 2GB or 1.5G")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def choose_kind(n: int, dim: int, budget: int, kind: str = "auto") -> str:
    """The index kind for ``n`` vectors of ``dim`` floats under a memory budget in bytes."""
    if kind not in KINDS:
        raise CurateError(f"unknown index kind {kind!r}", fix=f"use one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    raw = n * dim * 4
    if n <= FLAT_MAX_ROWS and raw <= budget:
        return "flat"
    if raw * 1.1 <= budget:
        return "ivf"
    return "pq"


def near_duplicate_pairs(matrix: np.ndarray, threshold: float, block: int = 4096) -> list[tuple[int, int]]:
    """Row pairs ``(i, j)``, ``i < j``, with inner product >= ``threshold`` (cosine, for L2-normalised rows).

    One exact faiss range search per block of queries: vectorised, no per-pair Python loop, so
    it scales to the hundreds of thousands of rows a candidate pool holds.
    """
    import faiss

    x = np.ascontiguousarray(matrix, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        return []
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    # faiss keeps results with ip > radius; step one float below so ip == threshold is kept too
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    found = []
    for s in range(0, len(x), block):
        lims, sims, ids = index.range_search(x[s:s + block], radius)
        rows = np.repeat(np.arange(s, s + len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
        ids = ids.astype(np.int64)
        keep = (ids > rows) & (sims >= np.float32(threshold))
        found.append(np.stack([rows[keep], ids[keep]], axis=1))
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return [(int(i), int(j)) for i, j in pairs]


def greedy_dedup(matrix: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Keep the best-scoring row of every group of near-duplicates (cos >= ``threshold``).

    Rows are visited best score first (ties: lower index first); a row is dropped when a row
    already kept is its near-duplicate. Returns a boolean keep mask.
    """
    n = len(scores)
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for i, j in near_duplicate_pairs(matrix, threshold):
        neighbours[i].append(j)
        neighbours[j].append(i)
    keep = np.zeros(n, dtype=bool)
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if not any(keep[j] for j in neighbours[i]):
            keep[i] = True
    return keep


def _nlist(n: int) -> int:
    return int(max(1, min(int(4 * math.sqrt(n)), n // 39 or 1)))


def _pq_m(dim: int, n: int, budget: int) -> int:
    """Bytes per vector for PQ: the largest divisor of dim that fits the budget (at most dim/2)."""
    per_vec = max(1, budget // max(n, 1) - 16)
    for m in (128, 96, 64, 48, 32, 24, 16, 12, 8, 4, 2, 1):
        if m <= dim // 2 and dim % m == 0 and m <= per_vec:
            return m
    return 1


def make_index(kind: str, n: int, dim: int, budget: int) -> tuple[Any, dict[str, Any]]:
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, 32, ip), {"M": 32, "efSearch": 64}
    nlist = _nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        return faiss.IndexIVFFlat(quantizer, dim, nlist, ip), {"nlist": nlist, "nprobe": min(nlist, 16)}
    m = _pq_m(dim, n, budget)
    nbits = 8 if n >= 256 * 39 else max(1, min(8, int(math.log2(max(n // 39, 2)))))
    idx = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, ip)
    return idx, {"nlist": nlist, "nprobe": min(nlist, 16), "m": m, "nbits": nbits}


def _training_sample(emb_dir: Path, n: int, size: int, seed: int = 0) -> np.ndarray:
    """A random sample of ``size`` rows, gathered chunk by chunk from memory-mapped parts."""
    from .embed.store import iter_chunks

    rng = np.random.default_rng(seed)
    want = np.sort(rng.choice(n, size=min(size, n), replace=False))
    out, start = [], 0
    for _, chunk in iter_chunks(emb_dir, rows=CHUNK_ROWS):
        lo, hi = np.searchsorted(want, [start, start + len(chunk)])
        if hi > lo:
            out.append(chunk[want[lo:hi] - start])
        start += len(chunk)
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def build_index(emb_dir: str | os.PathLike, out_dir: str | os.PathLike, kind: str = "auto",
                memory_budget: str | int = "2GB", overwrite: bool = False) -> Path:
    """Build a faiss index of ``emb_dir``'s image embeddings in ``out_dir``; returns ``out_dir``."""
    import faiss
    import polars as pl

    from .embed.store import count_rows, embeddings_info, iter_chunks, read_metadata
    from .log import progress_bar
    from .outdir import OutputDir

    emb_dir, out = Path(emb_dir), Path(out_dir)
    budget = parse_size(memory_budget) if isinstance(memory_budget, str) else int(memory_budget)
    n, dim = count_rows(emb_dir)
    if n == 0:
        raise CurateError("the embeddings folder holds no vectors", where=str(emb_dir))
    chosen = choose_kind(n, dim, budget, kind)
    config = {"emb_dir": str(emb_dir.resolve()), "kind": kind, "memory_budget": budget}
    with OutputDir(out, "index", config, overwrite=overwrite):
        index, params = make_index(chosen, n, dim, budget)
        if not index.is_trained:
            sample = _training_sample(emb_dir, n, max(params["nlist"] * 64, 256 * 64))
            logger.info("training %s index on %d of %d vectors", chosen, len(sample), n)
            index.train(sample)
        keys: list[str] = []
        with progress_bar("index", total=n, unit="vectors") as advance:
            for chunk_keys, chunk in iter_chunks(emb_dir, rows=CHUNK_ROWS):
                index.add(np.ascontiguousarray(chunk, dtype=np.float32))
                keys.extend(chunk_keys)
                advance(len(chunk))
        tmp = out / f"{INDEX_NAME}{TMP_MARK}{os.getpid()}"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, out / INDEX_NAME)
        meta = read_metadata(emb_dir)
        cols = [c for c in ("key", "shard", "shard_path", "image_path", "caption", "url") if c in meta.columns]
        from .embed.store import save_parquet

        save_parquet(out / KEYS_NAME, meta.select(cols).with_columns(pl.col("key").cast(pl.Utf8)))
        info = embeddings_info(emb_dir)
        write_json(out / META_NAME, {"model": info.get("model"), "kind": chosen, "dim": dim, "count": n,
                                     "params": params, "emb_dir": str(emb_dir.resolve()),
                                     "memory_budget": budget})
    logger.info("%s index of %d vectors (dim %d) -> %s", chosen, n, dim, out)
    return out


class SearchIndex:
    """A built index folder: ``search(vectors, k)`` -> (keys per query, scores [Q, k])."""

    def __init__(self, folder: Path, index: Any, meta: dict[str, Any], table: Any):
        self.folder = folder
        self.index = index
        self.meta = meta
        self.table = table
        self.keys: list[str] = table["key"].to_list()

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SearchIndex:
        import faiss
        import polars as pl

        folder = Path(folder)
        for name in (INDEX_NAME, KEYS_NAME, META_NAME):
            if not (folder / name).exists():
                raise CurateError(f"not an index folder (no {name})", where=str(folder),
                                  fix="build one with `curate index EMB --out IDX`")
        index = faiss.read_index(str(folder / INDEX_NAME))
        meta = read_json(folder / META_NAME)
        table = pl.read_parquet(folder / KEYS_NAME)
        if table.height != index.ntotal:
            raise CurateError(f"{KEYS_NAME} has {table.height} rows but the index holds {index.ntotal}",
                              where=str(folder / KEYS_NAME), fix="rebuild the index")
        params = meta.get("params", {})
        if "nprobe" in params:
            faiss.extract_index_ivf(index).nprobe = params["nprobe"]
        if "efSearch" in params:
            index.hnsw.efSearch = max(params["efSearch"], 16)
        return cls(folder, index, meta, table)

    @property
    def model(self) -> str | None:
        return self.meta.get("model")

    def search(self, vectors: np.ndarray, k: int = 20) -> tuple[list[list[str]], np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if q.shape[1] != self.index.d:
            raise CurateError(f"query vectors have dimension {q.shape[1]}, the index has {self.index.d}",
                              where=str(self.folder), fix="embed the query with the model the index was built from")
        k = max(1, min(int(k), self.index.ntotal))
        scores, ids = self.index.search(q, k)
        keys = [[self.keys[i] for i in row if i >= 0] for row in ids]
        return keys, scores

    def rows(self, keys: list[str]) -> list[dict[str, Any]]:
        """Metadata rows (shard_path, image_path, caption ...) for keys, in the given order."""
        pos = {k: i for i, k in enumerate(self.keys)}
        return [self.table.row(pos[k], named=True) for k in keys]


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
index_app = typer.Typer(add_completion=False)
search_app = typer.Typer(add_completion=False)


@index_app.command()
def index_cmd(
    emb: Annotated[Path, typer.Argument(help="Embeddings folder (curate embed / clip-retrieval inference).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to write.")],
    kind: Annotated[str, typer.Option("--kind", help="auto, flat (exact), ivf, hnsw or pq (compressed).")] = "auto",
    memory_budget: Annotated[str, typer.Option("--memory-budget", help="RAM the index may use, e.g. 2GB.")] = "2GB",
    overwrite: Overwrite = False,
) -> None:
    """Build a faiss inner-product index over an embeddings folder.

    auto picks exact flat search for up to 50k vectors, IVF when the vectors fit the memory
    budget, IVF-PQ when they do not. Vectors are added in chunks from memory-mapped files.

    Example: curate index emb --out idx --kind auto --memory-budget 2GB
    """
    from .log import console
    from .paths import must_exist

    must_exist(emb, fix="pass a folder made by `curate embed` or `clip-retrieval inference`")
    folder = build_index(emb, out, kind=kind, memory_budget=memory_budget, overwrite=overwrite)
    meta = read_json(folder / META_NAME)
    console.print(f"{meta['kind']} index of {meta['count']} vectors (dim {meta['dim']}) -> {folder}")


@search_app.command()
def search_cmd(
    index: Annotated[Path, typer.Argument(help="Index folder (curate index).")],
    text: Annotated[str | None, typer.Option("--text", "-t", help="Text prompt to search for.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Or an image file to search with.")] = None,
    k: Annotated[int, typer.Option("-k", help="How many results.")] = 20,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model spec (default: the one the index remembers).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per result instead of TSV.")] = False,
    device: Device = "auto",
) -> None:
    """Search an index with a text prompt (or an image); prints rank, score, key, path.

    Example: curate search idx --text "a photo of a striped heart" -k 20
    """
    import json

    from .embed.backends import load_model
    from .paths import must_exist

    if (text is None) == (image is None):
        raise CurateError("give exactly one of --text or --image", fix='e.g. --text "a photo of a striped heart"')
    must_exist(index, fix="pass a folder made by `curate index`")
    if image is not None:
        must_exist(image, "--image")
    idx = SearchIndex.load(index)
    spec = model or idx.model
    if not spec:
        raise CurateError("the index does not name its model", where=str(index), fix="pass --model SPEC")
    enc = load_model(spec, device)
    if text is not None:
        q = enc.encode_texts([text])
    else:
        try:  # decoded as `curate embed` decodes the indexed images (near the model's input size)
            q = enc.encode_images([enc.open_image(Path(image).read_bytes())])
        except OSError as e:
            raise CurateError(f"cannot read the image ({e})", where=str(image)) from e
    keys, scores = idx.search(q, k)
    for rank, (key, score, row) in enumerate(zip(keys[0], scores[0], idx.rows(keys[0]), strict=False), 1):
        path = f"{row['shard_path']}#{key}" if row.get("shard_path") else str(row.get("image_path") or key)
        if as_json:
            typer.echo(json.dumps({"rank": rank, "score": round(float(score), 6), "key": key, "path": path,
                                   "caption": row.get("caption")}))
        else:
            typer.echo(f"{rank}\t{score:.4f}\t{key}\t{path}")
