"""Similarity blocks for the benchmark metrics, bounded in memory for any gallery size.

The official metrics (``training.metrics.cir``) take a dense ``[queries, gallery]`` similarity.
For the benchmarks' own galleries (CIRR 2.3k images, CIRCO 123k, FashionIQ ~4k per category)
that fits: :func:`similarity_blocks` yields it as one block and the metric functions run
unchanged. For a gallery too large for ``Q x M`` floats, queries go in chunks: faiss finds each
query's exact top ``k`` (inner product, brute force, the gallery streamed in chunks, so a
memory-mapped gallery never has to be loaded whole), and the block holds only the columns that can
matter: the union of the chunk's top ``k`` and each query's required images (reference,
target, ground truths, CIRR group). Every metric used here only looks at the first 50 ranks
(Recall@50 after removing the reference needs 51) or at required images, whose relative order
the reduction keeps, so the numbers are the dense ones (up to float rounding between faiss and
BLAS on exact ties).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

DENSE_BUDGET = 64_000_000  # floats in one dense similarity block (256 MB)
QUERY_CHUNK = 1024
GALLERY_CHUNK = 131_072
TOPK_MARGIN = 8  # extra candidates against float differences between faiss and BLAS near rank k


@dataclass
class Block:
    rows: slice          # which queries
    cols: np.ndarray     # which gallery positions, ascending
    similarity: np.ndarray  # float32 [rows, cols]


def exact_topk(queries: np.ndarray, gallery: np.ndarray, k: int,
               gallery_chunk: int = GALLERY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top ``k`` of every query: (scores, gallery positions), best first.

    faiss brute force per gallery chunk, merged in a heap: memory is one chunk plus ``Q x k``.
    """
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = int(min(k, len(gallery)))
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    for start in range(0, len(gallery), gallery_chunk):
        g = np.ascontiguousarray(gallery[start:start + gallery_chunk], dtype=np.float32)
        scores, ids = faiss.knn(q, g, min(k, len(g)), metric=faiss.METRIC_INNER_PRODUCT)
        if scores.shape[1] < k:  # a short last chunk: pad so the heap sees k columns
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.where(ids >= 0, ids + start, -1))
    heap.finalize()
    return heap.D, heap.I


def similarity_blocks(queries: np.ndarray, gallery: np.ndarray, required: Sequence[np.ndarray], k: int,
                      budget: int | None = None, query_chunk: int | None = None) -> Iterator[Block]:
    """Dense ``queries @ gallery.T`` in one block when it fits ``budget`` floats (default
    ``DENSE_BUDGET``), else reduced blocks of ``query_chunk`` queries (default ``QUERY_CHUNK``)."""
    budget = DENSE_BUDGET if budget is None else budget
    query_chunk = QUERY_CHUNK if query_chunk is None else query_chunk
    n_q, n_g = len(queries), len(gallery)
    if n_q * n_g <= budget:
        g = np.asarray(gallery, dtype=np.float32)
        yield Block(slice(0, n_q), np.arange(n_g), np.asarray(queries, dtype=np.float32) @ g.T)
        return
    for start in range(0, n_q, query_chunk):
        stop = min(n_q, start + query_chunk)
        q = np.ascontiguousarray(queries[start:stop], dtype=np.float32)
        _, top = exact_topk(q, gallery, k + TOPK_MARGIN)
        parts = [top.ravel(), *(np.asarray(required[i], dtype=np.int64) for i in range(start, stop))]
        cols = np.unique(np.concatenate(parts))
        cols = cols[cols >= 0]
        sub = np.ascontiguousarray(gallery[cols], dtype=np.float32)
        yield Block(slice(start, stop), cols, q @ sub.T)


def frac32(hits: int, n: int) -> float:
    """CLIP4Cir's ``(torch.sum(labels[:, :k]) / len(labels)).item()`` (a float32 division), as
    ``training.metrics.cir`` computes it: used to merge block results into the dense number."""
    return float(np.float32(hits) / np.float32(n))


def hits_of(fraction: float, n: int) -> int:
    """Back from a float32 fraction of ``n`` (< 2**24) to the integer count it was made from."""
    return int(round(fraction * n))
