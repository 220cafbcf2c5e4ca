"""Shared fixtures: an isolated cache/FiftyOne database per session, a tiny dataset folder, the demo world,
a tiny random CLIP, and the uninterrupted build and embed runs the slow end-to-end tests compare with."""

from __future__ import annotations

import fcntl
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from build_helpers import relaxed_toml

_SESSION_TMP = None


def pytest_configure(config):
    import tempfile

    global _SESSION_TMP
    _SESSION_TMP = Path(tempfile.mkdtemp(prefix="curate-tests-"))
    # pytest-xdist workers inherit the controller's environment (set here before they start), so the
    # cache (the demo mini-CLIP, trained once under a lock) is one per test run; FiftyOne's database is
    # one per worker, so two workers never see each other's datasets.
    os.environ.setdefault("CURATE_CACHE", str(_SESSION_TMP / "cache"))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["FIFTYONE_DATABASE_DIR"] = str(_SESSION_TMP / "fiftyone-db")
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


_SHARED_BUILDS = {"small_world", "small_build", "small_build_embeddings", "ao_with_triplets"}


def pytest_collection_modifyitems(session, config, items):
    """The order in which `make test` hands whole files to its two workers (``--dist loadfile
    --no-loadscope-reorder`` keeps this order): the files with the most end-to-end (``slow``) tests first,
    then the others by number of tests, so what is handed out last is short and neither worker waits long
    for the other at the end (xdist's own order, most tests first, put the few-test, costly end-to-end
    files last). The second file handed out is the costliest one that needs no shared build, so the second
    worker has work while the first makes the demo world. Every test still runs; only the order changes."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)

    def cost(name: str) -> tuple[int, int]:
        its = files[name]
        return -sum(1 for it in its if it.get_closest_marker("slow")), -len(its)

    order = sorted(files, key=cost)
    needs_build = [any(_SHARED_BUILDS & set(getattr(it, "fixturenames", ())) for it in files[f]) for f in order]
    if len(order) > 2 and needs_build[0] and needs_build[1]:
        free = next((i for i in range(2, len(order)) if not needs_build[i]), None)
        if free is not None:
            order.insert(1, order.pop(free))
    items[:] = [it for f in order for it in files[f]]


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_tiny_dataset(tmp_path / "tiny-ds")


# -- session fixtures shared by the pytest-xdist workers ------------------------------------------
# `make test` runs the suite in two processes (pytest-xdist). A session fixture would be made once per
# worker; the expensive ones are made once per test run instead: in a folder beside the workers' own
# temp folders, under a file lock, the first worker makes it and the others read what it recorded.
@contextmanager
def shared_once(tmp_path_factory, name: str) -> Iterator[Path]:
    """Hold the run-wide lock of ``name`` and yield its folder (shared by every xdist worker)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / f"shared-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """The demo world at scale ``small`` (about 15 s to materialise; made once per test run)."""
    from builders.synthetic.world import ensure_world

    with shared_once(tmp_path_factory, "world") as folder:
        return ensure_world(folder / "small", scale="small", seed=0, workers=1)  # loads it when complete


@pytest.fixture(scope="session")
def tiny_clip_spec(tmp_path_factory) -> str:
    """A randomly initialised tiny open_clip model saved as a real checkpoint; returns its spec."""
    from curate.embed.random_models import TINY_OPEN_CLIP, save_random_open_clip

    with shared_once(tmp_path_factory, "tinyclip") as folder:
        made = folder / "spec.txt"
        if not made.exists():
            made.write_text(save_random_open_clip(folder, arch="tiny-test-clip", config=TINY_OPEN_CLIP))
        return made.read_text()


@pytest.fixture(scope="session")
def tiny_mini_spec(tmp_path_factory, small_world) -> str:
    """An untrained mini-CLIP (``training.models.mini_clip.save_random_mini``) whose vocabulary holds the
    small world's and the tiny dataset's words; returns its ``mini:`` spec. The end-to-end tests that run
    many ``curate`` processes use it: it loads in the time of ``import torch``, where the tiny open_clip
    model's process also imports transformers and torchvision (a build: 7.6 s instead of 14.2 s). The
    open_clip loading path keeps its own tests (``tiny_clip_spec``)."""
    from training.models.mini_clip import save_random_mini

    with shared_once(tmp_path_factory, "tinymini") as folder:
        made = folder / "spec.txt"
        if not made.exists():
            words = [(small_world.path / "world.json").read_text(), " ".join(COLORS), "circle square star",
                     "a photo of the an itap my with on in"]
            made.write_text(save_random_mini(folder / "model", words))
        return made.read_text()


# -- shared end-to-end runs ------------------------------------------------------------------------
# The slow end-to-end tests (SIGKILL anywhere, the Ray cluster) compare their outputs with an
# uninterrupted local run of the same command; that run is made once per session and shared.
@dataclass
class CommandRun:
    """An uninterrupted ``curate`` run: its arguments (without ``--out``), output folder and duration."""

    args: list[str]
    out: Path
    seconds: float




def run_curate(args: list[str], out: Path) -> float:
    """Run ``curate ARGS --out OUT`` to completion (asserting success); returns its wall seconds."""
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    r = subprocess.run([str(Path(sys.executable).with_name("curate")), *args, "--out", str(out)],
                       capture_output=True, text=True, env={**os.environ, "CURATE_NO_PROGRESS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return time.perf_counter() - t0


def _shared_run(tmp_path_factory, name: str, make) -> CommandRun:
    """``make(folder) -> CommandRun`` once per test run; the other workers read the recorded run."""
    with shared_once(tmp_path_factory, name) as folder:
        record = folder / "run.json"
        if record.exists():
            d = json.loads(record.read_text())
            return CommandRun(d["args"], Path(d["out"]), d["seconds"])
        run = make(folder)
        record.write_text(json.dumps({**asdict(run), "out": str(run.out)}))
        return run


@pytest.fixture(scope="session")
def small_build(tmp_path_factory, small_world, tiny_mini_spec) -> CommandRun:
    """``curate build imagenet-ao`` on the small world with the tiny random mini-CLIP (8 pairs, CZSL and
    imagefolder exports, one worker), run once per test run."""

    def make(root: Path) -> CommandRun:
        (root / "build.toml").write_text(relaxed_toml())
        wj = small_world.path / "world.json"
        args = ["build", "imagenet-ao", "--objects", str(wj), "--attributes", str(wj), "--captions",
                str(small_world.path / "captions"), "--pool", str(small_world.path / "pool" / "images"),
                "--generator", "demo", "--model", tiny_mini_spec, "--config", str(root / "build.toml"),
                "--workers", "1"]
        out = root / "ref" / "out"
        return CommandRun(args, out, run_curate(args, out))

    return _shared_run(tmp_path_factory, "small-build", make)


@pytest.fixture(scope="session")
def small_build_embeddings(tmp_path_factory, small_build, tiny_mini_spec) -> CommandRun:
    """``curate embed`` of the small build's pool shards with the tiny random mini-CLIP, once per test run."""

    def make(root: Path) -> CommandRun:
        args = ["embed", str(small_build.out / "pool" / "shards"), "--model", tiny_mini_spec, "--workers", "1"]
        out = root / "out"
        return CommandRun(args, out, run_curate(args, out))

    return _shared_run(tmp_path_factory, "small-build-embeddings", make)


@pytest.fixture(scope="session")
def ao_with_triplets(tmp_path_factory, small_world, tiny_mini_spec) -> Path:
    """A small dataset and its triplets (build_helpers.build_ao_with_triplets) with the untrained mini-CLIP,
    made once per test run; the tests that read outputs (datasets.load_dataset, official loaders, zero-shot
    reference) share it."""
    from build_helpers import build_ao_with_triplets

    with shared_once(tmp_path_factory, "ao") as folder:
        return build_ao_with_triplets(folder, small_world, tiny_mini_spec)
