"""The demo mini-CLIP: trains on a tiny world of coloured shapes, learns, caches, loads as mini:PATH."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curate.errors import CurateError

CURATE = str(Path(sys.executable).with_name("curate"))
COLOURS = {"red": (210, 40, 40), "blue": (40, 60, 210), "green": (40, 170, 60)}
SHAPES = ("circle", "square", "triangle")
RARE = [("red", "triangle"), ("blue", "circle"), ("green", "square")]


def shape_jpeg(colour: str, shape: str, rng: np.random.Generator, size: int = 48) -> bytes:
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in rng.integers(150, 230, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = tuple(int(np.clip(c + rng.integers(-20, 20), 0, 255)) for c in COLOURS[colour])
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_world(root: Path, per_pair: int = 24, seed: int = 0) -> Path:
    """A miniature demo world in the contract layout: world.json + train/heldout/rare shards."""
    from curate.fsutil import write_json
    from curate.shards import write_shard

    rng = np.random.default_rng(seed)
    pairs = [(a, o) for a in COLOURS for o in SHAPES]
    common = [p for p in pairs if p not in RARE]

    def samples(split: str, chosen: list, n: int) -> list[dict]:
        out = []
        for a, o in chosen:
            for i in range(n):
                key = f"{split}_{a}_{o}_{i:03d}"
                out.append({"__key__": key, "jpg": shape_jpeg(a, o, rng), "txt": f"a photo of a {a} {o}",
                            "json": {"key": key, "attr": a, "obj": o, "pair": f"{a} {o}", "split": split}})
        return out

    write_shard(root / "train" / "train-000000.tar", samples("train", common, per_pair))
    write_shard(root / "heldout" / "heldout-000000.tar", samples("heldout", common, 6))
    write_shard(root / "rare" / "rare-000000.tar", samples("rare", RARE, 6))
    write_json(root / "world.json", {
        "objects": [{"name": o, "plural": o + "s"} for o in SHAPES],
        "attributes": [{"name": a, "family": "colour"} for a in COLOURS],
        "families": {"colour": list(COLOURS)}, "rare_pairs": [list(p) for p in RARE],
        "common_pairs": [list(p) for p in common], "scale": "test", "seed": seed, "image_size": 48})
    return root


def fast_config(**kw):
    from training.models.mini_clip import MiniClipConfig

    return MiniClipConfig(**{"image_size": 32, "width": 8, "word_dim": 32, "embed_dim": 32, "epochs": 12,
                             "batch_size": 36, "lr": 5e-3, "max_seconds": 120, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    from training.models.mini_clip import ensure_mini_clip

    world = make_world(tmp_path_factory.mktemp("world"))
    return world, ensure_mini_clip(world, config=fast_config())


def test_trains_learns_and_reports_common_vs_rare(trained):
    from training.models.mini_clip import read_report

    world, folder = trained
    for name in ("model.safetensors", "config.json", "vocab.json", "report.json"):
        assert (folder / name).is_file()
    rep = read_report(folder)
    assert rep["training"]["train_images"] == 6 * 24
    assert rep["training"]["final_loss"] < rep["training"]["first_loss"]
    common, rare = rep["sets"]["common (heldout)"], rep["sets"]["rare"]
    assert common["images"] == 36 and rare["images"] == 18
    assert rep["gap_common_minus_rare"]["obj_top1_simple"] == round(common["obj_top1_simple"] - rare["obj_top1_simple"], 4)
    # colour and shape are easy: the model must do far better than chance (1/3) on common pairs
    assert common["attr_top1_simple"] >= 0.8, rep
    assert common["obj_top1_simple"] >= 0.6, rep
    for key in ("obj_top1_openai80", "attr_top5_openai80", "obj_top5_simple"):
        assert 0.0 <= rare[key] <= 1.0 and key in common


def test_loads_as_mini_spec_and_encodes(trained):
    from curate.embed.backends import load_model
    from curate.embed.zeroshot import SIMPLE_TEMPLATES, class_text_embeddings

    _, folder = trained
    enc = load_model(f"mini:{folder}")
    from PIL import Image

    rng = np.random.default_rng(5)
    imgs = [Image.open(io.BytesIO(shape_jpeg(c, "square", rng))) for c in COLOURS]
    emb = enc.encode_images(imgs, batch_size=2)
    assert emb.shape == (3, enc.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cls = class_text_embeddings(enc, list(COLOURS), SIMPLE_TEMPLATES)
    assert (np.argmax(emb @ cls.T, axis=1) == np.arange(3)).sum() >= 2
    # unknown words are dropped, never an error
    assert enc.encode_texts(["zzz qqq", "a photo of a red origami circle"]).shape == (2, enc.dim)


def test_cache_is_reused_and_keyed_by_world(trained, tmp_path):
    from curate.paths import mini_clip_cache_dir
    from training.models.mini_clip import ensure_mini_clip, fingerprint

    world, folder = trained
    assert folder.parent == mini_clip_cache_dir() and folder.name == fingerprint(world, fast_config())
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_mini_clip(world, config=fast_config()) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == before
    other = make_world(tmp_path / "w2", per_pair=2, seed=1)
    assert fingerprint(other, fast_config()) != folder.name


def test_bad_inputs(tmp_path, trained):
    from curate.embed.backends import load_model
    from training.models.mini_clip import ensure_mini_clip

    with pytest.raises(CurateError, match="no world.json"):
        ensure_mini_clip(tmp_path)
    with pytest.raises(CurateError, match="mini-CLIP folder not found"):
        load_model(f"mini:{tmp_path / 'nope'}")
    _, folder = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.json"):
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CurateError, match="not a readable model file"):
        load_model(f"mini:{broken}")


@pytest.mark.slow
def test_cli_train_mini_and_embed_with_it(tmp_path, trained):
    world, _ = trained
    out = tmp_path / "mini"
    r = subprocess.run([CURATE, "model", "train-mini", "--world", str(world), "--out", str(out), "--epochs", "2",
                        "--max-seconds", "30"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(str(out)) and "rare" in r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["training"]["epochs_done"] <= 2
    emb = tmp_path / "emb"
    r = subprocess.run([CURATE, "embed", str(world / "rare"), "-m", f"mini:{out}", "--out", str(emb)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((emb / "embeddings.json").read_text())["counts"]["images"] == 18
