"""Embedding backends, the embeddings store and `curate embed` on tiny real models and shards."""

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
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 180, 30), "yellow": (220, 220, 40)}


def jpeg(colour, size=40, seed=0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(np.zeros((size, size, 3)) + np.array(colour) + rng.integers(-15, 15, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_shards(folder: Path, n_shards=2, per_shard=5, broken=()) -> list[str]:
    """Shards of coloured squares with txt captions; keys in ``broken`` get bytes that are not an image."""
    from curate.shards import write_shard

    keys = []
    for s in range(n_shards):
        samples = []
        for i in range(per_shard):
            colour = list(COLOURS)[(s * per_shard + i) % len(COLOURS)]
            key = f"s{s}_{i:03d}_{colour}"
            img = b"not a jpeg at all" if key in broken else jpeg(COLOURS[colour], seed=i)
            samples.append({"__key__": key, "jpg": img, "txt": f"a photo of a {colour} square",
                            "json": {"key": key, "attr": colour}})
            keys.append(key)
        write_shard(folder / f"part-{s:06d}.tar", samples)
    return keys


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory) -> str:
    from curate.embed.random_models import TINY_OPEN_CLIP, save_random_open_clip

    return save_random_open_clip(tmp_path_factory.mktemp("oc"), arch="tiny-test", config=TINY_OPEN_CLIP)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> str:
    from curate.embed.random_models import save_random_hf_clip

    return save_random_hf_clip(tmp_path_factory.mktemp("hf"))


def _images():
    from PIL import Image

    return [Image.open(io.BytesIO(jpeg(c, seed=i))) for i, c in enumerate(COLOURS.values())]


@pytest.mark.parametrize("which", ["tiny_open_clip", "tiny_hf"])
def test_backend_encodes_normalised_float32(which, request):
    from curate.embed.backends import load_model

    spec = request.getfixturevalue(which)
    enc = load_model(spec, device="auto")
    imgs = enc.encode_images(_images(), batch_size=3)
    txt = enc.encode_texts(["a photo of a red square", "blue", "a green thing"], batch_size=2)
    assert imgs.dtype == np.float32 and imgs.shape == (4, enc.dim) and txt.shape == (3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(imgs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    # batching must not change the result
    np.testing.assert_allclose(enc.encode_images(_images(), batch_size=1), imgs, atol=1e-5)
    assert enc.spec == spec and enc.device == "cpu"


def test_open_clip_safetensors_checkpoint_matches_pt(tmp_path):
    from curate.embed.backends import load_model
    from curate.embed.random_models import TINY_OPEN_CLIP, save_random_open_clip

    a = load_model(save_random_open_clip(tmp_path / "a", "tiny-test", TINY_OPEN_CLIP, seed=3))
    b = load_model(save_random_open_clip(tmp_path / "b", "tiny-test", TINY_OPEN_CLIP, seed=3, safetensors=True))
    np.testing.assert_allclose(a.encode_texts(["x y"]), b.encode_texts(["x y"]), atol=1e-6)


@pytest.mark.parametrize("spec", ["clip:ViT-B-32", "ViT-B-32", "open_clip:", "foo:bar", ""])
def test_unknown_model_spec_lists_valid_forms(spec):
    from curate.embed.backends import load_model

    with pytest.raises(CurateError) as e:
        load_model(spec)
    msg = e.value.message
    for form in ("open_clip:ARCH/PRETRAINED", "open_clip:ARCH//path/to/checkpoint.pt", "hf:/path", "mini:PATH"):
        assert form in msg


def test_unknown_arch_and_tag_and_uncached_weights(tmp_path, monkeypatch):
    from curate.embed.backends import load_model

    with pytest.raises(CurateError, match="unknown open_clip architecture 'ViT-B-33'.*ViT-B-32"):
        load_model("open_clip:ViT-B-33/openai")
    with pytest.raises(CurateError, match="no pretrained tag 'nope'.*laion2b_s34b_b79k"):
        load_model("open_clip:ViT-B-32/nope")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CurateError, match="not in the local cache"):
        load_model("open_clip:ViT-B-32/laion2b_s34b_b79k")


def test_checkpoint_not_a_model_or_truncated(tmp_path, tiny_open_clip):
    import torch

    from curate.embed.backends import load_model

    arch_json = Path(tiny_open_clip.split("/", 1)[1]).with_suffix(".json")
    for name, data in {"junk.pt": b"this is not a checkpoint", "junk.safetensors": b"\x00" * 64}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CurateError, match="not a readable model checkpoint") as e:
            load_model(f"open_clip:ViT-B-32/{tmp_path / name}")
        assert name in e.value.message
    good = Path(tiny_open_clip.split("/", 1)[1])
    cut = tmp_path / "cut" / "tiny-test.pt"
    cut.parent.mkdir()
    (cut.parent / "tiny-test.json").write_text(arch_json.read_text())
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CurateError, match="not a readable model checkpoint"):
        load_model(f"open_clip:tiny-test/{cut}")
    # a real tensor file of the wrong model
    torch.save({"w": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CurateError, match="does not fit open_clip ViT-B-32"):
        load_model(f"open_clip:ViT-B-32/{tmp_path / 'other.pt'}")
    # a pickled non-tensor object is refused by weights_only loading
    import argparse

    torch.save({"cfg": argparse.Namespace(lr=1)}, tmp_path / "pickle.pt")
    with pytest.raises(CurateError, match="not a readable model checkpoint"):
        load_model(f"open_clip:ViT-B-32/{tmp_path / 'pickle.pt'}")
    with pytest.raises(CurateError, match="checkpoint file not found"):
        load_model(f"open_clip:ViT-B-32/{tmp_path / 'missing.pt'}")
    with pytest.raises(CurateError, match="no config.json"):
        load_model(f"hf:{tmp_path}")


def test_embed_shards_layout_bad_images_and_resume(tmp_path, tiny_open_clip):
    import polars as pl

    from curate.embed.stage import EmbedConfig, embed_shards
    from curate.embed.store import read_embeddings, read_metadata

    keys = make_shards(tmp_path / "shards", broken={"s1_002_yellow"})
    out = tmp_path / "emb"
    info = embed_shards(tmp_path / "shards", out, EmbedConfig(model=tiny_open_clip, batch_size=3), workers=1)
    assert info["counts"] == {"shards": 2, "images": 9, "texts": 9, "bad_images": 1, "unreadable_shards": 0}
    assert info["bad_keys"] == ["s1_002_yellow"]
    assert json.loads((out / "embeddings.json").read_text())["dim"] == 32
    for sub, name in (("img_emb", "img_emb_0.npy"), ("text_emb", "text_emb_1.npy"), ("metadata", "metadata_1.parquet")):
        assert (out / sub / name).exists()
    meta = pl.read_parquet(out / "metadata" / "metadata_0.parquet")
    assert {"key", "shard", "caption", "image_path"} <= set(meta.columns)
    assert meta["caption"][0].startswith("a photo of a")
    k, m = read_embeddings(out)
    assert k == [x for x in keys if x != "s1_002_yellow"]
    assert m.shape == (9, 32) and m.dtype == np.float32
    tk, tm = read_embeddings(out, kind="text")
    assert tk == k
    # same colour -> identical captions -> identical text vectors
    same = [i for i, key in enumerate(tk) if key.endswith("_red")]
    np.testing.assert_allclose(tm[same[0]], tm[same[1]], atol=1e-6)
    assert read_metadata(out).height == 9
    # rerun resumes: nothing recomputed, same bytes
    before = (out / "img_emb" / "img_emb_0.npy").stat().st_mtime_ns
    info2 = embed_shards(tmp_path / "shards", out, EmbedConfig(model=tiny_open_clip, batch_size=3), workers=1)
    assert info2["counts"] == info["counts"]
    assert (out / "img_emb" / "img_emb_0.npy").stat().st_mtime_ns == before


def test_mismatched_rows_refused_naming_the_file(tmp_path, tiny_open_clip):
    import polars as pl

    from curate.embed.stage import EmbedConfig, embed_shards
    from curate.embed.store import iter_chunks, read_embeddings

    make_shards(tmp_path / "shards", n_shards=2, per_shard=3)
    out = tmp_path / "emb"
    embed_shards(tmp_path / "shards", out, EmbedConfig(model=tiny_open_clip, captions=False), workers=1)
    meta = out / "metadata" / "metadata_1.parquet"
    pl.read_parquet(meta).head(2).write_parquet(meta)
    with pytest.raises(CurateError, match="img_emb_1.npy has 3 rows but metadata_1.parquet has 2"):
        read_embeddings(out)
    with pytest.raises(CurateError, match="metadata_1.parquet"):
        list(iter_chunks(out))


@pytest.mark.slow
def test_cli_embed_two_workers_and_errors(tmp_path, tiny_open_clip):
    make_shards(tmp_path / "shards", n_shards=2, per_shard=4)
    out = tmp_path / "emb"
    r = subprocess.run([CURATE, "embed", str(tmp_path / "shards"), "--model", tiny_open_clip, "--out", str(out),
                        "--workers", "2", "--no-captions"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (out / "text_emb").exists()
    from curate.embed.store import read_embeddings

    assert len(read_embeddings(out)[0]) == 8
    r = subprocess.run([CURATE, "embed", str(tmp_path / "shards"), "--model", "resnet50", "--out",
                        str(tmp_path / "e2")], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown model spec" in r.stderr and "mini:PATH" in r.stderr
    r = subprocess.run([CURATE, "model", "list"], capture_output=True, text=True)
    assert r.returncode == 0 and "hf:/path/to/CLIPModel-folder" in r.stdout


CLIP_RETRIEVAL_INFERENCE = """
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from clip_retrieval.clip_inference.main import main
main(input_dataset=sys.argv[2], output_folder=sys.argv[3], input_format="webdataset", clip_model=sys.argv[4],
     batch_size=4, num_prepro_workers=1, enable_text=True, enable_metadata=True, use_jit=False,
     enable_wandb=False, output_partition_count=None)
"""


@pytest.mark.slow
def test_clip_retrieval_interop_both_directions(tmp_path, tiny_open_clip):
    """clip-retrieval inference output is read by us; `clip-retrieval index` consumes ours."""
    from curate.embed.backends import load_model
    from curate.embed.stage import EmbedConfig, embed_shards
    from curate.embed.store import read_embeddings

    keys = make_shards(tmp_path / "shards", n_shards=1, per_shard=6)
    ckpt = tiny_open_clip.split("/", 1)[1]
    cr_out = tmp_path / "cr"
    # clip-retrieval's own inference code; the custom tiny architecture is registered first
    r = subprocess.run([sys.executable, "-c", CLIP_RETRIEVAL_INFERENCE, str(Path(ckpt).with_suffix(".json")),
                        str(tmp_path / "shards" / "part-000000.tar"), str(cr_out), tiny_open_clip],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    k, m = read_embeddings(cr_out)
    assert sorted(k) == sorted(keys)
    tk, tm = read_embeddings(cr_out, kind="text")
    assert tk == k
    # the same model through our backend gives the same vectors as clip-retrieval's
    enc = load_model(tiny_open_clip)
    from PIL import Image

    ours = enc.encode_images([Image.open(io.BytesIO(jpeg(COLOURS[x.rsplit("_", 1)[1]], seed=int(x.split("_")[1]))))
                              for x in k])
    np.testing.assert_allclose(ours, m, atol=2e-3)  # clip-retrieval stores float16
    np.testing.assert_allclose(enc.encode_texts([f"a photo of a {x.rsplit('_', 1)[1]} square" for x in k]), tm, atol=2e-3)
    # our index builds from clip-retrieval's folder (no embeddings.json: the model is given at search time)
    from curate.index import SearchIndex, build_index

    idx_ours = SearchIndex.load(build_index(cr_out, tmp_path / "idx-from-cr"))
    assert idx_ours.model is None
    found, scores = idx_ours.search(np.asarray(m[:2]), k=3)  # same-colour images are near-duplicates here
    assert all(key in f for key, f in zip(k[:2], found, strict=True))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-3)
    # and `clip-retrieval index` builds an index from our folder
    out = tmp_path / "ours"
    embed_shards(tmp_path / "shards", out, EmbedConfig(model=tiny_open_clip), workers=1)
    idx = tmp_path / "cr-index"
    r = subprocess.run([str(Path(sys.executable).with_name("clip-retrieval")), "index", "--embeddings_folder", str(out),
                        "--index_folder", str(idx), "--max_index_memory_usage", "16M",
                        "--current_memory_available", "1G", "--nb_cores", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    import faiss

    index = faiss.read_index(str(idx / "image.index"))
    assert index.ntotal == 6 and (idx / "text.index").exists() and (idx / "metadata" / "metadata_0.parquet").exists()


def test_keys_from_url_or_image_path_when_no_key_column(tmp_path):
    import polars as pl

    from curate.embed.store import part_paths, read_embeddings, save_npy, save_parquet

    emb, meta = part_paths(tmp_path, "0")
    save_npy(emb, np.eye(3, 4, dtype=np.float32))
    save_parquet(meta, pl.DataFrame({"url": ["http://x.org/a/cat01.jpg?s=1", "http://x.org/dog.png", "http://x.org/e"]}))
    emb1, meta1 = part_paths(tmp_path, "1")
    save_npy(emb1, 2 * np.eye(2, 4, dtype=np.float32))  # not normalised: read back normalised
    save_parquet(meta1, pl.DataFrame({"image_path": ["/data/imgs/000123.jpg", "relative/b.webp"],
                                      "caption": ["a", "b"]}))
    keys, m = read_embeddings(tmp_path)
    assert keys == ["cat01", "dog", "e", "000123", "b"]
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0)
