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
    # the one-word instruction data: each train image's object and attribute, from the train split
    assert report["language"]["one_word_rows"] == {"split": "train", "images": 2 * report["train_images"],
                                                   "captions": 2 * report["train_images"]}
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


def test_one_word_instructions_are_the_train_images_words_in_the_embedders_prompts(world_and_mini):
    """The instruction rows tokenise exactly as MllmEmbedder's gallery and caption prompts (same chat
    template, same image-token expansion), the answer (the only labelled part) is the image's object or
    attribute word, and nothing but the train split feeds the build."""
    from types import SimpleNamespace

    from training.cir.mllm import CAPTION_PROMPT, GALLERY_PROMPT, MllmEmbedder
    from training.models import demo_mllm as dm

    world, mini = world_and_mini
    data = dm.load_split(world / "train", 32, "test")
    tok = dm.make_tokenizer(dm.words_of(data.captions, 1, [*data.attrs, *data.objs, GALLERY_PROMPT, CAPTION_PROMPT]))
    proc = dm.make_processor(tok, 32, 4)
    image_rows, text_rows, which = dm.encode_instructions(tok, data.captions, data.attrs, data.objs, 16)
    assert len(image_rows) == len(text_rows) == len(which) == 2 * len(data.captions)
    emb = SimpleNamespace(processor=proc)
    gallery = proc(images=[Image.new("RGB", (32, 32))], text=[MllmEmbedder.prompt(emb, GALLERY_PROMPT, True)],
                   return_tensors="pt")["input_ids"][0].tolist()
    for k in (0, 1, len(which) - 1):
        i = which[k]
        (ids, labels), (tids, tlabels) = image_rows[k], text_rows[k]
        head = labels.index(next(x for x in labels if x != -100))
        assert ids[:head] == gallery
        answer = tok.decode(ids[head:], skip_special_tokens=True).strip()
        assert answer == (data.objs[i] if k % 2 == 0 else data.attrs[i])
        caption = tok(MllmEmbedder.prompt(emb, CAPTION_PROMPT.format(caption=data.captions[i]), False),
                      add_special_tokens=False)["input_ids"]
        assert tids[:len(caption)] == caption and set(tlabels[:len(caption)]) == {-100}
        assert tok.decode(tids[len(caption):], skip_special_tokens=True).strip() == answer

    seen: dict = {"splits": []}

    def spy_split(folder, *a, **k):
        seen["splits"].append(Path(folder).name)
        return dm.load_split.__wrapped__(folder, *a, **k)

    def spy_language(model, tok, data, corpus, cfg, run):
        seen["data"] = data
        return {}

    spy_split.__wrapped__ = dm.load_split
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dm, "load_split", spy_split)
        mp.setattr(dm, "distill_vision", lambda *a, **k: {})
        mp.setattr(dm, "train_language", spy_language)
        dm.build(world, mini, dm.DemoMllmConfig(), world.parent / "spy-out", world.parent / "spy-run")
    assert seen["splits"] == ["train"] and seen["data"].objs == data.objs and seen["data"].attrs == data.attrs
