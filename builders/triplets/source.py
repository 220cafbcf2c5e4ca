"""Where triplets come from: a dataset folder (manifest + shards) or plain captioned shards.

``load_source`` gives one table of usable samples (key, shard path, attr, obj, caption) and
the list of manifest rows whose image is missing (listed, then skipped: bad input is data).
``image_features`` gives one L2-normalised vector per usable key, from the dataset's
``embeddings/`` folder, from a model (``--model SPEC``), or, with neither, from small colour
thumbnails (crude but real visual similarity, recorded as such in triplets.json).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from curate.embed.store import l2_normalise
from curate.errors import CurateError
from curate.images import DEFAULT_DECODE, open_rgb
from curate.log import track
from curate.shards import IMAGE_EXTS, ReadReport, image_of, iter_keys, iter_shard, list_shards, sample_meta

logger = logging.getLogger(__name__)

COLUMNS = ("key", "shard_path", "attr", "obj", "caption", "split_hint")


@dataclass
class Source:
    """Usable samples plus what was skipped on the way (with reasons)."""

    path: Path
    kind: str  # "dataset" | "shards"
    samples: pl.DataFrame
    missing: list[tuple[str, str]] = field(default_factory=list)
    rejected: int = 0

    def shard_of(self) -> dict[str, str]:
        return dict(zip(self.samples["key"].to_list(), self.samples["shard_path"].to_list(), strict=True))


def load_source(path: str | Path, include_rejected: bool = False) -> Source:
    """Read a dataset folder, or a folder/glob of captioned WebDataset shards."""
    path = Path(path)
    if (path / "manifest.parquet").exists():
        return _from_dataset(path, include_rejected)
    shards = _shard_files(path)
    if shards:
        return _from_shards(path, shards)
    raise CurateError("neither a dataset folder nor captioned shards", where=str(path),
                      fix="pass a folder made by `curate build` (manifest.parquet + shards/), "
                          "or a folder of .tar shards whose samples hold KEY.jpg + KEY.txt/KEY.json captions")


def _shard_files(path: Path) -> list[Path]:
    """Shards in ``path`` (or in ``path/shards``), or ``path`` itself: none when there are none."""
    for spec in (path, path / "shards"):
        if spec.is_dir() and any(spec.glob("*.tar")) or spec.suffix == ".tar" and spec.is_file():
            return list_shards(spec)
    return []


def _from_dataset(path: Path, include_rejected: bool) -> Source:
    from curate.dataset import Dataset

    ds = Dataset(path)
    full = ds.manifest(include_rejected=True)
    df = full if include_rejected else ds.manifest(include_rejected=False)
    rejected = full.height - df.height
    for col in ("attr", "obj", "caption", "split"):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    df = df.select(
        "key",
        (pl.lit(str(ds.shard_dir) + "/") + pl.col("shard")).alias("shard_path"),
        pl.col("attr").cast(pl.String), pl.col("obj").cast(pl.String),
        pl.col("caption").cast(pl.String), pl.col("split").cast(pl.String).alias("split_hint"),
    ).sort("key")
    present, missing = _scan_images(df)
    if missing:
        logger.warning("%d manifest row(s) have no image (e.g. %s: %s); they are skipped and listed in "
                       "missing_images.txt", len(missing), missing[0][0], missing[0][1])
    return Source(path, "dataset", df.filter(pl.col("key").is_in(list(present))), missing, rejected)


def _scan_images(df: pl.DataFrame) -> tuple[set[str], list[tuple[str, str]]]:
    """Which manifest keys really have an image member in their shard (tar headers only)."""
    present: set[str] = set()
    missing: list[tuple[str, str]] = []
    by_shard: dict[str, list[str]] = {}
    for key, shard in df.select("key", "shard_path").iter_rows():
        by_shard.setdefault(shard, []).append(key)
    for shard in track(sorted(by_shard), "scan shards", unit="shards"):
        keys = by_shard[shard]
        if not Path(shard).exists():
            missing.extend((k, f"shard {Path(shard).name} missing") for k in keys)
            continue
        seen, error = _image_members(Path(shard))
        for k in keys:
            if k not in seen:
                missing.append((k, f"no image in {Path(shard).name}" + (f" ({error})" if error else "")))
            else:
                present.add(k)
    return present, sorted(missing)


def _image_members(shard: Path) -> tuple[set[str], str | None]:
    rep = ReadReport(shard=shard.name)
    seen = {s["__key__"] for s in iter_shard(shard, rep, exts=IMAGE_EXTS) if image_of(s)}
    return seen, rep.error


def _from_shards(path: Path, shards: list[Path]) -> Source:
    """Captioned shards (KEY.jpg + KEY.txt and/or KEY.json): caption, attr and obj when present."""
    rows = []
    missing: list[tuple[str, str]] = []
    for shard in track(shards, "read shards", unit="shards"):
        rep = ReadReport(shard=shard.name)
        for s in iter_shard(shard, rep):
            meta = sample_meta(s, rep) or {}
            meta = {k: v for k, v in meta.items() if isinstance(v, str)}  # a list where text belongs: dropped
            caption = s["txt"].decode("utf-8", "replace") if "txt" in s else meta.get("caption")
            if image_of(s) is None:
                missing.append((s["__key__"], f"no image in {shard.name}"))
                continue
            rows.append({"key": s["__key__"], "shard_path": str(shard), "attr": meta.get("attr"),
                         "obj": meta.get("obj"), "caption": caption, "split_hint": meta.get("split")})
        if rep.error:
            logger.warning("%s: stopped reading after %d samples (%s)", shard.name, rep.samples, rep.error)
    if not rows:
        raise CurateError("no samples with images found in the shards", where=str(path))
    df = pl.DataFrame(rows, schema={c: pl.String for c in COLUMNS})
    dup = df.filter(pl.col("key").is_duplicated())
    if dup.height:
        raise CurateError(f"{dup['key'].n_unique()} duplicate key(s) across shards, e.g. "
                          f"{dup['key'].unique().sort().head(3).to_list()}", where=str(path),
                          fix="keys must be unique across the shards you pass")
    return Source(path, "shards", df.sort("key"), sorted(missing))


def iter_images(shard_of: dict[str, str], keys: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    """``(key, image bytes)`` for ``keys``, streaming each shard that holds them once."""
    for s in iter_keys({k: shard_of[k] for k in keys}, exts=IMAGE_EXTS):
        img = image_of(s)
        if img:
            yield s["__key__"], img[1]


# -- image features ------------------------------------------------------------------------

@dataclass
class Features:
    """Row-aligned to ``keys``; ``how`` is recorded in triplets.json."""

    keys: list[str]
    matrix: np.ndarray
    how: str

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def image_features(source: Source, model: str | None, device: str, cache_dir: Path, inputs: str | None = None,
                   refresh: bool = False, decode: str = DEFAULT_DECODE) -> Features:
    """Features of the source's samples. Computed ones (model, thumbnails) are cached in
    ``cache_dir/features/`` with ``inputs`` (the fingerprint of the images and model they came from):
    a later run reuses the rows of the keys it needs only while ``inputs`` is the same, so rejecting
    samples reuses the cache and changed images or model weights recompute it; ``refresh`` always does.
    ``decode`` (``curate.images.DECODE_MODES``): how a model's images are decoded (fast: at the size
    the encoder needs)."""
    keys = source.samples["key"].to_list()
    emb_dir = source.path / "embeddings"
    if source.kind == "dataset" and (emb_dir / "img_emb").exists() and not model:
        return _stored_features(emb_dir, keys)
    cache = cache_dir / "features"
    tag = "thumbnail" if not model else model_tag(model, decode)
    cached = None if refresh else _read_cache(cache, tag, keys, inputs)
    if cached is not None:
        return cached
    if model:
        feats = _model_features(source, keys, model, device, decode)
    else:
        logger.warning("no embeddings/ in %s and no --model: ranking targets by 8x8 colour thumbnails "
                       "(pass --model SPEC or run `curate embed` for CLIP similarity)", source.path)
        feats = _thumbnail_features(source, keys)
    _write_cache(cache, feats, inputs, keys)
    return feats


def _stored_features(emb_dir: Path, keys: list[str]) -> Features:
    from curate.embed.store import read_embeddings

    ekeys, mat = read_embeddings(emb_dir, kind="img")
    pos = {k: i for i, k in enumerate(ekeys)}
    have = [k for k in keys if k in pos]
    if len(have) < len(keys):
        logger.warning("%d sample(s) have no stored embedding and are skipped", len(keys) - len(have))
    rows = np.asarray(mat[np.array([pos[k] for k in have], dtype=np.int64)], dtype=np.float32) if have \
        else np.zeros((0, mat.shape[1]), np.float32)
    model = _stored_model(emb_dir)
    return Features(have, l2_normalise(rows), f"embeddings:{model}" if model else "embeddings")


def _stored_model(emb_dir: Path) -> str | None:
    p = emb_dir / "embeddings.json"
    try:
        return json.loads(p.read_text()).get("model") if p.exists() else None
    except ValueError:
        return None


def _decode(data: bytes):
    return open_rgb(data)


def _model_features(source: Source, keys: list[str], spec: str, device: str,
                    decode: str = DEFAULT_DECODE) -> Features:
    """The model's embeddings of ``keys``, each image decoded by the encoder at the size its preprocessing
    needs (a JPEG at the smallest DCT scale that still covers it; ``decode="exact"``: full size)."""
    from curate.embed.backends import load_model

    encoder = load_model(spec, device=device)
    out: dict[str, np.ndarray] = {}
    batch: list[tuple[str, object]] = []

    def flush() -> None:
        vecs = encoder.encode_images([im for _, im in batch])
        out.update({k: v for (k, _), v in zip(batch, vecs, strict=True)})
        batch.clear()

    for key, data in track(iter_images(source.shard_of(), keys), "embed images", total=len(keys), unit="img"):
        batch.append((key, encoder.open_image(data, decode)))
        if len(batch) >= 64:
            flush()
    if batch:
        flush()
    have = [k for k in keys if k in out]
    return Features(have, l2_normalise(np.stack([out[k] for k in have]).astype(np.float32)), model_tag(spec, decode))


def model_tag(spec: str, decode: str) -> str:
    """How a model's features were made, as the cache records it: the spec, and the decode unless exact (what
    caches made before the choice used), so features of full-size decodes are never read back as fast ones."""
    return f"model:{spec}" if decode == "exact" else f"model:{spec} decode={decode}"


def _thumbnail_features(source: Source, keys: list[str]) -> Features:
    from PIL import Image

    out: dict[str, np.ndarray] = {}
    for key, data in track(iter_images(source.shard_of(), keys), "thumbnails", total=len(keys), unit="img"):
        try:
            im = _decode(data).resize((8, 8), Image.BILINEAR)
        except OSError as e:
            logger.warning("%s: undecodable image skipped (%s)", key, e)
            continue
        v = np.asarray(im, dtype=np.float32).ravel() / 255.0
        out[key] = v - v.mean()
    have = [k for k in keys if k in out]
    mat = np.stack([out[k] for k in have]) if have else np.zeros((0, 192), np.float32)
    return Features(have, l2_normalise(mat.astype(np.float32)), "thumbnail")


def _read_cache(cache: Path, tag: str, keys: list[str], inputs: str | None) -> Features | None:
    """The cached rows of ``keys``, if the cache was made for the same images and model (``inputs``)
    and holds every one of them (a key it skipped as undecodable counts as held)."""
    meta = cache / "features.json"
    if not meta.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("how") != tag or info.get("inputs") != inputs or not set(keys) <= set(info["asked"]):
            return None
        mat = np.load(cache / "features.npy")
    except (OSError, ValueError, KeyError) as e:
        logger.warning("%s: unreadable feature cache (%s); recomputing", cache, e)
        return None
    pos = {k: i for i, k in enumerate(info["keys"])}
    have = [k for k in keys if k in pos]
    return Features(have, mat[np.array([pos[k] for k in have], dtype=np.int64)], tag)


def _write_cache(cache: Path, feats: Features, inputs: str | None, asked: list[str]) -> None:
    from curate.fsutil import atomic_open, write_json

    with atomic_open(cache / "features.npy", "wb") as f:
        np.save(f, feats.matrix, allow_pickle=False)
    write_json(cache / "features.json", {"how": feats.how, "inputs": inputs, "keys": feats.keys, "asked": asked})
