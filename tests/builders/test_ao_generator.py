"""`--generator diffusers:PATH`: a real diffusers pipeline folder (tiny, random, made here) end to end.

The folder has the layout of SDXL-Turbo's (model_index.json + unet/vae/text_encoder/tokenizer/
scheduler, safetensors); diffusers loads and samples it exactly as it would the real one.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from build_helpers import relaxed_toml

CURATE = str(Path(sys.executable).with_name("curate"))


@pytest.fixture(autouse=True, scope="module")
def _needs_diffusers():
    """Skipped without diffusers; imported here, not at collection (its import takes seconds)."""
    pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from builders.imagenet_ao.random_diffusers import save_random_text_to_image

    return save_random_text_to_image(tmp_path_factory.mktemp("tiny-sd") / "pipe", seed=0)


def _size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


def test_diffusers_generator_is_seeded_and_sized(tiny_pipeline):
    from builders.imagenet_ao.generators import load_generator

    gen = load_generator(f"diffusers:{tiny_pipeline}?size=32&batch=1", device="cpu")
    a = gen.generate("red", "circle", 3, seed=7)
    b = gen.generate("red", "circle", 3, seed=7)
    assert [x[1] for x in a] == [x[1] for x in b]  # same seed, same bytes
    assert [x[0] for x in a] == ["red_circle_7", "red_circle_8", "red_circle_9"]
    assert len({x[1] for x in a}) == 3  # each image its own seed
    c = gen.generate("red", "circle", 2, seed=8)
    assert c[0][1] == a[1][1]  # image i of a pair has seed pair_seed + i, whatever the first seed
    assert all(_size(x[1]) == (32, 32) for x in a)
    meta = a[0][2]
    assert (meta["generator"], meta["seed"], meta["steps"], meta["guidance"], meta["model"]) == (
        "diffusers", 7, 1, 0.0, "pipe")
    batched = load_generator(f"diffusers:{tiny_pipeline}?size=32&batch=3", device="cpu").generate("red", "circle",
                                                                                                     3, seed=7)
    assert [x[0] for x in batched] == [x[0] for x in a] and all(_size(x[1]) == (32, 32) for x in batched)


def test_diffusers_spec_and_device_errors(tiny_pipeline, tmp_path):
    from builders.imagenet_ao.generators import load_generator
    from curate.errors import CurateError

    with pytest.raises(CurateError, match="model_index.json"):
        load_generator(f"diffusers:{tmp_path}")
    with pytest.raises(CurateError, match="unknown diffusers option 'stepz'"):
        load_generator(f"diffusers:{tiny_pipeline}?stepz=2")
    with pytest.raises(CurateError, match="steps=x"):
        load_generator(f"diffusers:{tiny_pipeline}?steps=x")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(CurateError, match="CUDA is not available"):
            load_generator(f"diffusers:{tiny_pipeline}", device="cuda")


RELAXED = relaxed_toml(max_pairs=2, common_pairs=1, retrieve_k=None, min_shards_per_split=2, device="cpu",
                       export=["czsl"])


@pytest.mark.slow
def test_build_with_diffusers_generator_end_to_end(tmp_path, small_world, tiny_mini_spec, tiny_pipeline, capsys):
    """`curate build imagenet-ao --generator diffusers:PATH`: the pipeline on the device the config names,
    every image seeded; two builds with the same --seed give the same generated shards. The build scores
    with the session's untrained mini-CLIP (``tiny_mini_spec``): the generator is what is tested here, and
    the tiny open_clip model's process would also import transformers' and open_clip's libraries."""
    cfg = tmp_path / "build.toml"
    cfg.write_text(RELAXED)
    wj = small_world.path / "world.json"
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["build", "imagenet-ao", "--objects", str(wj), "--attributes", str(wj), "--captions",
            str(small_world.path / "captions"), "--generator", f"diffusers:{tiny_pipeline}?size=48", "--model",
            tiny_mini_spec, "--config", str(cfg), "--seed", "3", "--workers", "2"]
    # a: the `curate` command in a process of its own; b: curate's main in this process (diffusers is
    # imported here already), so the two builds still load and sample the pipeline in different processes
    r = subprocess.run([CURATE, *args, "--out", str(a)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "CURATE_NO_PROGRESS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    from curate.cli import main

    code = 0
    try:
        main(["-q", *args, "--out", str(b)])
    except SystemExit as e:
        code = int(e.code or 0)
    assert code == 0, capsys.readouterr().err[-3000:]
    shards = sorted((a / "generated" / "shards").glob("gen-*.tar"))
    assert shards
    for s in shards:
        assert (b / "generated" / "shards" / s.name).read_bytes() == s.read_bytes()
    from curate.shards import iter_shard

    metas = [json.loads(x["json"]) for s in shards for x in iter_shard(s)]
    assert {m["generator"] for m in metas} == {"diffusers"} and {m["model"] for m in metas} == {"pipe"}
    assert {(m["width"], m["height"]) for m in metas} == {(48, 48)}
    info = json.loads((a / "dataset.json").read_text())
    assert info["config"]["generator"].startswith("diffusers:") and info["config"]["device"] == "cpu"
    assert info["config"]["seed"] == 3
    m = pl.read_parquet(a / "manifest.parquet")
    assert set(m["source"]) == {"generator"} and m.height > 0
    assert (a / "generated" / "shards" / "README.md").exists()
