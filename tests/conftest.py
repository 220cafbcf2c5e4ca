"""Shared fixtures: an isolated cache/FiftyOne database per session, and a tiny dataset folder."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

_SESSION_TMP = None


def pytest_configure(config):
    import tempfile

    global _SESSION_TMP
    _SESSION_TMP = Path(tempfile.mkdtemp(prefix="curate-tests-"))
    os.environ.setdefault("CURATE_CACHE", str(_SESSION_TMP / "cache"))
    os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(_SESSION_TMP / "fiftyone-db"))
    for k, v in {"FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_VALIDATION": "false",
                 "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1",
                 "TOKENIZERS_PARALLELISM": "false", "CURATE_NO_PROGRESS": "1"}.items():
        os.environ.setdefault(k, v)


def _jpeg(color: tuple[int, int, int], size: int = 64, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), dtype=np.uint8) + np.array(color, dtype=np.uint8)
    arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


COLORS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 180, 30), "yellow": (220, 220, 40)}


def make_tiny_dataset(root: Path, objects=("circle", "square", "star"), attrs=tuple(COLORS), per_pair: int = 3) -> Path:
    """A dataset folder in the layout of curate/dataset.py: shards + manifest + dataset.json."""
    import polars as pl

    from curate.fsutil import write_json
    from curate.manifest import write_manifest
    from curate.shards import ShardWriter

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    with ShardWriter(root / "shards", prefix="tiny", maxcount=20) as w:
        i = 0
        for obj in objects:
            for attr in attrs:
                for j in range(per_pair):
                    key = f"{attr}_{obj}_{j:03d}"
                    meta = {"key": key, "attr": attr, "obj": obj, "pair": f"{attr} {obj}", "source": "fixture",
                            "caption": f"a photo of a {attr} {obj}"}
                    shard = w.write({"__key__": key, "jpg": _jpeg(COLORS.get(attr, (128, 128, 128)), seed=i),
                                     "json": meta})
                    split = ["train", "val", "test"][i % 3]
                    rows.append({**meta, "shard": shard, "split": split, "score_comp": 0.2 + 0.01 * j,
                                 "width": 64, "height": 64})
                    i += 1
    write_manifest(pl.DataFrame(rows), root)
    write_json(root / "dataset.json", {"name": root.name, "builder": "fixture", "counts": {"samples": len(rows)}})
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_tiny_dataset(tmp_path / "tiny-ds")


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """The demo world at scale ``small`` (about 15 s to materialise; shared by the session)."""
    from builders.synthetic.world import ensure_world

    return ensure_world(tmp_path_factory.mktemp("world") / "small", scale="small", seed=0, workers=1)


@pytest.fixture(scope="session")
def tiny_clip_spec(tmp_path_factory) -> str:
    """A randomly initialised tiny open_clip model saved as a real checkpoint; returns its spec."""
    from curate.embed.random_models import TINY_OPEN_CLIP, save_random_open_clip

    return save_random_open_clip(tmp_path_factory.mktemp("tinyclip"), arch="tiny-test-clip", config=TINY_OPEN_CLIP)
