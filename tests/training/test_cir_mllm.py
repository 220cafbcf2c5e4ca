"""The InstructCIR-style MLLM embedder on a tiny randomly initialised LLaVA folder built here.

It runs the real transformers loading, chat template, <image> expansion, left padding, last-token
embedding and two-stage training through fit(); its numbers mean nothing (random weights).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cir_data import shared_tiny_triplets

from curate.errors import CurateError
from curate.shards import ShardWriter
from training.cir.mllm import GALLERY_PROMPT, MllmEmbedder, TuneSpec
from training.cir.random_llava import save_random_llava


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> str:
    return save_random_llava(tmp_path_factory.mktemp("llava") / "tiny-llava")


def test_prompts_padding_and_last_token_embedding(llava):
    emb = MllmEmbedder(llava, "cpu", tune="last:1")
    q = emb.query_prompt("make it blue")
    assert q == '<|user|>\n<image>Modify this image with "make it blue", describe modified image in one word:<|end|>\n' \
                "<|assistant|>\n"
    assert emb.gallery_prompt().startswith("<|user|>\n<image>" + GALLERY_PROMPT)
    images = [Image.new("RGB", (40, 30), (200, 0, 0)), Image.new("RGB", (30, 40), (0, 0, 200))]
    prompts = [emb.query_prompt("blue"), emb.query_prompt("a much longer edit text than the other one")]
    inputs = emb.inputs(images, prompts)
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][:, -1].all()  # padded on the left
    vecs = emb.embed(images, prompts)
    assert vecs.shape == (2, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    with torch.no_grad():
        out = emb.model(**inputs, output_hidden_states=True)
    manual = torch.nn.functional.normalize(out.hidden_states[-1][:, -1, :], dim=-1).numpy()
    assert np.allclose(vecs, manual, atol=1e-5)


def test_tune_selects_parameters_and_checkpoints_hold_only_them(llava):
    emb = MllmEmbedder(llava, "cpu", tune="last:1")
    names = emb.trainable_names()
    assert names and all("language_model.layers.1." in n or n.endswith("language_model.norm.weight") for n in names)
    assert set(emb.state_dict()) == names
    proj = MllmEmbedder(llava, "cpu", tune="projector")
    assert all("multi_modal_projector" in n for n in proj.trainable_names())
    with pytest.raises(CurateError, match="unknown --tune"):
        TuneSpec.parse("first:2")


@pytest.mark.skipif(importlib.util.find_spec("peft") is not None, reason="peft is installed")
def test_lora_without_peft_is_a_clear_error(llava):
    with pytest.raises(CurateError, match="needs the peft package"):
        MllmEmbedder(llava, "cpu", tune="lora")


def test_not_a_model_folder(tmp_path):
    with pytest.raises(CurateError, match="no config.json"):
        MllmEmbedder(f"hf:{tmp_path}", "cpu")


def test_folder_without_chat_template_or_image_token(llava, tmp_path):
    import shutil

    src = Path(llava.removeprefix("hf:"))
    no_template = tmp_path / "no-template"
    shutil.copytree(src, no_template)
    (no_template / "chat_template.jinja").unlink()
    with pytest.raises(CurateError, match="lacks a chat template") as e:
        MllmEmbedder(f"hf:{no_template}", "cpu")
    assert "lacks a chat template (chat_template.jinja, or 'chat_template' in the processor or tokenizer config) —" \
        in str(e.value)  # and nothing else missing
    no_image = tmp_path / "no-image-token"
    shutil.copytree(src, no_image)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (no_image / name).write_text((no_image / name).read_text().replace("<image>", "<img>"))
    with pytest.raises(CurateError, match="lacks an image token .'<image>' is not in the tokenizer"):
        MllmEmbedder(f"hf:{no_image}", "cpu")
    (no_image / "chat_template.jinja").unlink()
    with pytest.raises(CurateError, match="lacks a chat template .* and an image token"):
        MllmEmbedder(f"hf:{no_image}", "cpu")
    assert (src / "chat_template.jinja").exists()  # the source folder is untouched


def captioned_shards(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    with ShardWriter(folder, prefix="cap", maxcount=50) as w:
        for i in range(16):
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            img = Image.new("RGB", (32, 32), color)
            import io

            buf = io.BytesIO()
            img.save(buf, format="JPEG")
            w.write({"__key__": f"c{i:03d}", "jpg": buf.getvalue(), "txt": f"a photo of colour {i % 4}"})
    return folder


@pytest.mark.slow
def test_two_stage_training_and_eval(llava, tiny_clip_spec, tmp_path, tmp_path_factory):
    from training.cir.benchmark import evaluate_cir
    from training.cir.train import CirTrainConfig, RunOptions, train_cir

    trip = shared_tiny_triplets(tmp_path_factory, tiny_clip_spec)
    run = tmp_path / "run"
    res = train_cir(CirTrainConfig(triplets=str(trip), out=str(run), model="mllm", mllm=llava,
                                   stage1=str(captioned_shards(tmp_path / "cap")), steps=2, epochs=1, batch_size=4,
                                   tune="last:1"), RunOptions(device="cpu"))
    assert res["training"]["stage1"]["steps"] == 2 and res["training"]["steps"] == 2
    assert all(np.isfinite(x) for x in res["training"]["first_loss"] + res["training"]["last_loss"])
    assert (run / "stage1" / "checkpoints" / "latest").exists() and (run / "stage2" / "best").is_dir()
    from safetensors.torch import load_file

    saved = load_file(str(run / "stage2" / "best" / "model.safetensors"))
    assert saved and all("layers.1." in k or k.endswith("norm.weight") for k in saved)
    assert {"ours test", "cirr test1", "circo test"} <= set(res["test"]["MLLM embedder"])
    report = evaluate_cir(str(run), trip, "cirr", "test", out=tmp_path / "ev", device="cpu")
    assert report["method"] == "MLLM embedder"
    assert 0.0 <= report["results"][0]["metrics"]["recall_at1"] <= 1.0
    assert json.loads((tmp_path / "ev" / "recall_submission_test1.json").read_text())["metric"] == "recall"
