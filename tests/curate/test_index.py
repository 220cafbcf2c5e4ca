"""faiss index building (all kinds, chunked, memory-mapped) and search, via API and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curate.errors import CurateError

CURATE = str(Path(sys.executable).with_name("curate"))


def write_emb_folder(folder: Path, n_parts=3, rows=400, dim=32, seed=0, model="mini:/nowhere") -> tuple[list[str], np.ndarray]:
    """An embeddings folder in the layout `curate embed` writes, from random unit vectors."""
    import polars as pl

    from curate.embed.store import part_paths, save_npy, save_parquet
    from curate.fsutil import write_json

    rng = np.random.default_rng(seed)
    keys, mats = [], []
    for p in range(n_parts):
        m = rng.standard_normal((rows, dim)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        k = [f"p{p}_{i:05d}" for i in range(rows)]
        emb, meta = part_paths(folder, str(p))
        save_npy(emb, m)
        save_parquet(meta, pl.DataFrame({"image_path": k, "caption": [""] * rows, "key": k,
                                         "shard": [f"s{p}.tar"] * rows, "shard_path": [f"/data/s{p}.tar"] * rows}))
        keys += k
        mats.append(m)
    write_json(folder / "embeddings.json", {"model": model, "dim": dim})
    return keys, np.concatenate(mats)


def test_choose_kind_by_size_and_budget():
    from curate.index import choose_kind, parse_size

    assert parse_size("2GB") == 2 << 30 and parse_size("512m") == 512 << 20 and parse_size("1000") == 1000
    assert choose_kind(10_000, 512, parse_size("2GB")) == "flat"
    assert choose_kind(500_000, 512, parse_size("2GB")) == "ivf"
    assert choose_kind(5_000_000, 512, parse_size("2GB")) == "pq"
    assert choose_kind(10_000, 512, parse_size("1MB")) == "pq"
    assert choose_kind(10, 4, 10**9, "hnsw") == "hnsw"
    with pytest.raises(CurateError, match="unknown index kind"):
        choose_kind(10, 4, 10, "annoy")
    with pytest.raises(CurateError, match="cannot read the size"):
        parse_size("lots")


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "pq"])
def test_build_and_search_every_kind(tmp_path, kind, monkeypatch):
    import curate.index as ix

    monkeypatch.setattr(ix, "CHUNK_ROWS", 128)  # several chunks per part: exercises chunked adds
    keys, mat = write_emb_folder(tmp_path / "emb")
    out = ix.build_index(tmp_path / "emb", tmp_path / f"idx-{kind}", kind=kind)
    idx = ix.SearchIndex.load(out)
    assert idx.meta["kind"] == kind and idx.index.ntotal == len(keys) and idx.model == "mini:/nowhere"
    queries = mat[[5, 450, 1100]]
    found, scores = idx.search(queries, k=5)
    assert scores.shape == (3, 5)
    hits = sum(f[0] == keys[i] for f, i in zip(found, [5, 450, 1100], strict=True))
    if kind == "pq":  # compressed: the true vector must still be among the top 5
        assert sum(keys[i] in f for f, i in zip(found, [5, 450, 1100], strict=True)) >= 2
    else:
        assert hits == 3
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    assert idx.rows([found[0][0]])[0]["shard_path"].startswith("/data/s")


def test_auto_is_exact_for_small_and_budget_forces_pq(tmp_path):
    from curate.index import SearchIndex, build_index

    write_emb_folder(tmp_path / "emb", n_parts=2, rows=300)
    assert SearchIndex.load(build_index(tmp_path / "emb", tmp_path / "a")).meta["kind"] == "flat"
    small = SearchIndex.load(build_index(tmp_path / "emb", tmp_path / "b", memory_budget="20KB"))
    assert small.meta["kind"] == "pq"
    assert (tmp_path / "b" / "index.faiss").stat().st_size < (tmp_path / "a" / "index.faiss").stat().st_size


def test_index_refuses_bad_folders(tmp_path):
    import polars as pl

    from curate.index import SearchIndex, build_index

    write_emb_folder(tmp_path / "emb", n_parts=2, rows=50)
    meta = tmp_path / "emb" / "metadata" / "metadata_1.parquet"
    pl.read_parquet(meta).head(10).write_parquet(meta)
    with pytest.raises(CurateError, match="metadata_1.parquet"):
        build_index(tmp_path / "emb", tmp_path / "idx")
    with pytest.raises(CurateError, match="no img_emb/ folder"):
        build_index(tmp_path / "nothing", tmp_path / "idx2")
    with pytest.raises(CurateError, match="not an index folder"):
        SearchIndex.load(tmp_path / "emb")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``curate ARGV`` in this process: (exit code, stdout, stderr)."""
    from curate.cli import main

    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_embed_index_search_text(tmp_path, tiny_mini_spec, capsys):
    """End to end on a tiny random mini-CLIP: the caption's own text finds its image's caption row. `curate
    embed` runs as its own process; index and search run the CLI in this process (no model import each)."""
    from test_embed import make_shards

    spec = tiny_mini_spec  # the session's tiny random mini-CLIP
    make_shards(tmp_path / "shards", n_shards=1, per_shard=8)
    r = subprocess.run([CURATE, "embed", str(tmp_path / "shards"), "-m", spec, "--out", str(tmp_path / "emb"),
                        "--workers", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code, _, err = _cli(capsys, "index", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"))
    assert code == 0, err
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["model"] == spec
    code, out, err = _cli(capsys, "search", str(tmp_path / "idx"), "--text", "a photo of a red square", "-k", "3",
                          "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [x["rank"] for x in rows] == [1, 2, 3]
    assert rows[0]["path"].endswith(f"part-000000.tar#{rows[0]['key']}")
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    code, _, err = _cli(capsys, "search", str(tmp_path / "idx"))
    assert code == 2 and "--text" in err


def test_greedy_dedup_matches_the_numpy_greedy_pass_and_pairs_are_exact():
    from curate.index import greedy_dedup, near_duplicate_pairs

    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 16)).astype(np.float32)
    x = np.concatenate([base, base[:30] + 0.05 * rng.normal(size=(30, 16)).astype(np.float32)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    scores = rng.random(len(x))
    for thr in (0.9, 0.95, 0.99):
        order = np.argsort(-scores, kind="stable")  # the reference: keep unless a kept row is within thr
        ref = np.zeros(len(x), bool)
        kept: list[int] = []
        for i in order:
            if kept and float((x[kept] @ x[i]).max()) >= thr:
                continue
            kept.append(int(i))
            ref[i] = True
        assert np.array_equal(greedy_dedup(x, scores, thr), ref)
        sims = x @ x.T
        want = [(i, j) for i in range(len(x)) for j in range(i + 1, len(x)) if sims[i, j] >= thr]
        assert near_duplicate_pairs(x, thr, block=7) == want
    assert near_duplicate_pairs(np.zeros((0, 4), np.float32), 0.9) == []
