"""The demo MLLM (`curate model build-mllm`): built from a tiny world and a mini-CLIP, read by the MLLM loader, cached."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_mini_clip import fast_config, make_world
from typer.testing import CliRunner

from curate.errors import CurateError


@pytest.fixture(scope="module")
def world_and_mini(tmp_path_factory) -> tuple[Path, Path]:
    from training.models.mini_clip import ensure_mini_clip

    world = make_world(tmp_path_factory.mktemp("world"), per_pair=8)
    return world, ensure_mini_clip(world, config=fast_config(epochs=1), out=world.parent / "mini")


def test_build_mllm_makes_a_folder_the_loader_reads_and_caches_it(world_and_mini, tmp_path, monkeypatch):
    from training.cir.mllm import MllmEmbedder
    from training.cli import model_app
    from training.models.demo_mllm import DemoMllmConfig, cache_key, read_report

    world, mini = world_and_mini
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    args = ["build-mllm", "--world", str(world), "--mini", str(mini)]
    first = CliRunner().invoke(model_app, args)
    assert first.exit_code == 0, first.output
    spec = first.output.strip().splitlines()[-1]
    folder = Path(spec.removeprefix("hf:"))
    assert spec.startswith("hf:") and folder.parent == tmp_path / "cache" / "demo-mllm"
    report = read_report(folder)
    assert report["image_tokens"] == 16 and report["vocabulary"] > 8
    for phase in ("vision", "language"):
        assert report[phase]["steps"] > 0 and math.isfinite(report[phase]["last_loss"])
    assert report["vision"]["epoch_losses"][-1] < report["vision"]["epoch_losses"][0]  # the ViT imitates the CNN

    emb = MllmEmbedder(spec, "cpu", tune="last:1")  # the existing loader, unchanged
    query = emb.query_prompt("make it blue")
    assert "red" in emb.processor.tokenizer.get_vocab() and query.startswith("<|user|>\n<image>")
    images = [Image.new("RGB", (48, 48), (210, 40, 40)), Image.new("RGB", (48, 48), (40, 60, 210))]
    ids = emb.inputs(images, [query, emb.gallery_prompt()])["input_ids"]
    assert (ids == emb.model.config.image_token_index).sum(1).tolist() == [16, 16]
    vecs = emb.embed(images, [query, emb.gallery_prompt()])
    assert vecs.shape == (2, 128) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)

    mtime = (folder / "report.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = CliRunner().invoke(model_app, args)
    assert again.exit_code == 0 and again.output.strip().splitlines()[-1] == spec  # the cache hit
    assert time.perf_counter() - t0 < 2 and (folder / "report.json").stat().st_mtime_ns == mtime
    assert cache_key(world, mini, DemoMllmConfig(seed=1)) != folder.name == cache_key(world, mini, DemoMllmConfig())
    assert cache_key(world, mini, DemoMllmConfig(threads=1)) == folder.name  # threads do not change the weights


def test_bad_inputs(world_and_mini, tmp_path):
    from training.models.demo_mllm import ensure_demo_mllm

    world, mini = world_and_mini
    with pytest.raises(CurateError, match="not a demo world"):
        ensure_demo_mllm(tmp_path, mini=mini, out=tmp_path / "m")
    with pytest.raises(CurateError, match="not a mini-CLIP folder"):
        ensure_demo_mllm(world, mini=tmp_path, out=tmp_path / "m")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    with pytest.raises(CurateError, match="not a complete demo MLLM folder"):
        ensure_demo_mllm(world, mini=mini, out=tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"
