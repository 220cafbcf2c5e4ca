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


def test_a_checkpoint_of_a_known_architecture_is_checked_without_importing_open_clip(tmp_path):
    """`curate embed` checks the model before its workers start: for ARCH//checkpoint with a shipped or
    beside-the-checkpoint ARCH.json that check no longer imports open_clip (~5 s the workers waited for);
    an unknown architecture still gets open_clip's own list in the error."""
    (tmp_path / "clip.pt").write_bytes(b"")
    (tmp_path / "Mine-1.json").write_text("{}")
    code = ("import sys; from curate.embed.backends import check_model_available as c; "
            f"c('open_clip:ViT-B-32//{tmp_path}/clip.pt'); c('open_clip:Mine-1//{tmp_path}/clip.pt'); "
            "print('open_clip' in sys.modules, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["False", "False"], r.stderr
    from curate.embed.backends import check_model_available

    with pytest.raises(CurateError, match="unknown open_clip architecture 'ViT-B-33'.*ViT-B-32"):
        check_model_available(f"open_clip:ViT-B-33//{tmp_path}/clip.pt")


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
def test_cli_embed_two_workers_and_errors(tmp_path, tiny_mini_spec, capsys):
    """Two worker processes of a tiny random mini-CLIP (each imports torch, not open_clip's libraries);
    the refusal and `curate model list` run the CLI in this process."""
    from curate.cli import main

    make_shards(tmp_path / "shards", n_shards=2, per_shard=4)
    out = tmp_path / "emb"
    r = subprocess.run([CURATE, "embed", str(tmp_path / "shards"), "--model", tiny_mini_spec, "--out", str(out),
                        "--workers", "2", "--no-captions"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (out / "text_emb").exists()
    from curate.embed.store import read_embeddings

    assert len(read_embeddings(out)[0]) == 8
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["embed", str(tmp_path / "shards"), "--model", "resnet50", "--out", str(tmp_path / "e2")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown model spec" in err and "mini:PATH" in err
    with pytest.raises(SystemExit) as e:
        main(["model", "list"])
    assert e.value.code == 0 and "hf:/path/to/CLIPModel-folder" in capsys.readouterr().out


def clip_retrieval_inference(arch_json: Path, shard: Path, out: Path, spec: str) -> None:
    """clip-retrieval's own inference code, in this process (open_clip is imported here already); the
    custom tiny architecture is registered first."""
    import open_clip
    from clip_retrieval.clip_inference.main import main

    open_clip.add_model_config(str(arch_json))
    main(input_dataset=str(shard), output_folder=str(out), input_format="webdataset", clip_model=spec,
         batch_size=4, num_prepro_workers=1, enable_text=True, enable_metadata=True, use_jit=False,
         enable_wandb=False, output_partition_count=None)


@pytest.mark.slow
@pytest.mark.system
def test_clip_retrieval_interop_both_directions(tmp_path, tiny_open_clip):
    """clip-retrieval inference output is read by us; `clip-retrieval index` consumes ours."""
    from curate.embed.backends import load_model
    from curate.embed.stage import EmbedConfig, embed_shards
    from curate.embed.store import read_embeddings

    keys = make_shards(tmp_path / "shards", n_shards=1, per_shard=6)
    ckpt = tiny_open_clip.split("/", 1)[1]
    cr_out = tmp_path / "cr"
    clip_retrieval_inference(Path(ckpt).with_suffix(".json"), tmp_path / "shards" / "part-000000.tar", cr_out,
                             tiny_open_clip)
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
    # and `clip-retrieval index` builds an index from our folder: its clip_index module run as a script (the
    # same function and arguments as the `clip-retrieval index` command, without the command's imports of
    # every other subcommand: the web back end, the front end, the filter, end2end)
    out = tmp_path / "ours"
    embed_shards(tmp_path / "shards", out, EmbedConfig(model=tiny_open_clip), workers=1)
    idx = tmp_path / "cr-index"
    r = subprocess.run([sys.executable, "-m", "clip_retrieval.clip_index", "--embeddings_folder", str(out),
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


# -- the fed (GPU) path ---------------------------------------------------------------------------
def _hostile_shards(folder: Path) -> None:
    """Two shards with an undecodable image, and one with samples that have no image (first, in the
    middle with a bad sidecar, last), a bad JSON sidecar and a caption that is not a string."""
    from curate.shards import write_shard

    make_shards(folder, n_shards=2, per_shard=7, broken={"s0_002_green"})
    write_shard(folder / "part-000002.tar", [
        {"__key__": "noimg", "txt": "a caption without an image"},
        {"__key__": "empty", "jpg": b"", "json": b"{bad"},
        {"__key__": "badjson", "jpg": jpeg(COLOURS["green"], seed=5), "json": b"{bad"},
        {"__key__": "intcaption", "jpg": jpeg(COLOURS["blue"], seed=6), "json": {"caption": 7}},
        {"__key__": "ok", "jpg": jpeg(COLOURS["red"], seed=7), "json": {"caption": "a red square"}},
        {"__key__": "last", "txt": "no image at the end"},
    ])


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes (the ledger aside)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".curate" not in p.relative_to(folder).parts}


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row cosine; rows that are zero in both (text rows of samples without a caption) agree."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.sum(a * b, 1) / np.maximum(na * nb, 1e-30)
    return float(np.min(np.where(both_zero, 1.0, cos)))


def test_fed_path_on_cpu_equals_the_in_process_path(tmp_path, tiny_open_clip):
    """The GPU path's machinery (a DataLoader over iter_shard, 2 decode worker processes, re-batching
    after bad images, results fetched in flight), run on CPU with autocast disabled, gives the
    in-process path's outputs: the same keys, captions, bad keys and counts, and the same vectors."""
    from curate.embed.stage import EmbedConfig, embed_shards
    from curate.embed.store import read_embeddings

    _hostile_shards(tmp_path / "shards")
    ref = embed_shards(tmp_path / "shards", tmp_path / "ref",
                       EmbedConfig(model=tiny_open_clip, batch_size=3, decode_workers=0), workers=1)
    fed = embed_shards(tmp_path / "shards", tmp_path / "fed",
                       EmbedConfig(model=tiny_open_clip, batch_size=3, decode_workers=2, precision="fp32"), workers=1)
    assert fed == ref
    assert ref["bad_keys"] == ["s0_002_green", "noimg", "empty", "last"]
    assert ref["counts"] == {"shards": 3, "images": 16, "texts": 14, "bad_images": 4, "unreadable_shards": 0}
    assert ref["skipped"] == {"caption is not a string (int)": 1, "invalid JSON sidecar (JSONDecodeError)": 1,
                              "no image field": 3, "undecodable image (UnidentifiedImageError)": 1}
    assert "precision" not in ref and "dtype" not in ref  # the CPU default writes what it always wrote
    for kind in ("img", "text"):
        k1, m1 = read_embeddings(tmp_path / "ref", kind)
        k2, m2 = read_embeddings(tmp_path / "fed", kind)
        assert k1 == k2 and _min_cosine(m1, m2) >= 0.999
    assert _outputs(tmp_path / "fed") == _outputs(tmp_path / "ref")  # fp32 on CPU: the very same bytes


def test_autocast_precision_and_float16_storage(tmp_path, tiny_open_clip):
    from curate.embed.stage import EmbedConfig, embed_shards
    from curate.embed.store import read_embeddings

    make_shards(tmp_path / "shards", n_shards=2, per_shard=5)
    embed_shards(tmp_path / "shards", tmp_path / "ref", EmbedConfig(model=tiny_open_clip, batch_size=4), workers=1)
    out = tmp_path / "bf16"
    info = embed_shards(tmp_path / "shards", out, EmbedConfig(model=tiny_open_clip, batch_size=4, decode_workers=1,
                                                               precision="bf16", dtype="float16"), workers=1)
    assert info["precision"] == "bf16" and info["dtype"] == "float16" and info["counts"]["images"] == 10
    assert np.load(out / "img_emb" / "img_emb_0.npy").dtype == np.float16
    assert np.load(out / "text_emb" / "text_emb_1.npy").dtype == np.float16
    for kind in ("img", "text"):
        k1, m1 = read_embeddings(tmp_path / "ref", kind)
        k2, m2 = read_embeddings(out, kind)
        assert k1 == k2 and m2.dtype == np.float32
        assert _min_cosine(m1, m2) >= 0.99  # bf16 keeps 8 mantissa bits; the vectors stay the same
    # the stored dtype is part of the run: another one on the same folder is refused, not mixed in
    with pytest.raises(CurateError, match="different config"):
        embed_shards(tmp_path / "shards", out, EmbedConfig(model=tiny_open_clip), workers=1)
    for bad in ({"precision": "fp8"}, {"dtype": "int8"}):
        with pytest.raises(CurateError, match="unknown --(precision|dtype)"):
            embed_shards(tmp_path / "shards", tmp_path / "x", EmbedConfig(model=tiny_open_clip, **bad), workers=1)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_cuda_path_equals_cpu_path(tmp_path, tiny_open_clip):
    from curate.embed.stage import EmbedConfig, embed_shards
    from curate.embed.store import read_embeddings

    _hostile_shards(tmp_path / "shards")
    ref = embed_shards(tmp_path / "shards", tmp_path / "cpu", EmbedConfig(model=tiny_open_clip, device="cpu"),
                       workers=1)
    for precision in ("fp32", "fp16", "bf16"):
        out = tmp_path / precision
        info = embed_shards(tmp_path / "shards", out, EmbedConfig(model=tiny_open_clip, device="cuda:0",
                                                                   decode_workers=2, precision=precision), workers=1)
        assert info["counts"] == ref["counts"] and info["bad_keys"] == ref["bad_keys"]
        for kind in ("img", "text"):
            k1, m1 = read_embeddings(tmp_path / "cpu", kind)
            k2, m2 = read_embeddings(out, kind)
            assert k1 == k2
            assert _min_cosine(m1, m2) >= (0.999 if precision != "bf16" else 0.99), (precision, kind)


def test_devices_one_process_per_gpu_each_takes_its_own(tmp_path):
    from curate.embed.devices import claim_device, embed_devices, release_devices
    from curate.embed.stage import auto_decode_workers

    assert embed_devices("cuda", count=2) == ["cuda:0", "cuda:1"]
    assert embed_devices("auto", count=2) == ["cuda:0", "cuda:1"]
    assert embed_devices("auto", count=0) == ["cpu"] and embed_devices("cpu", count=4) == ["cpu"]
    assert embed_devices("cuda:1", count=2) == ["cuda:1"] and embed_devices("cuda:0,2", count=3) == ["cuda:0", "cuda:2"]
    for bad, count, why in (("cuda:2", 2, "has 2 GPU"), ("cuda:0,0", 2, "has 2 GPU"), ("cuda:x", 2, "not a CUDA"),
                            ("cuda", 0, "CUDA is not available")):
        with pytest.raises(CurateError, match=why):
            embed_devices(bad, count=count)
    assert auto_decode_workers(2, cuda=False, threads=1) == 0  # a thread beside each 1-thread model
    assert auto_decode_workers(1, cuda=False, threads=2) == 1  # a process beside a model on 2 cores
    assert auto_decode_workers(2, cuda=True, cores=32) == 15 and auto_decode_workers(1, cuda=True, cores=96) == 16
    assert auto_decode_workers(8, cuda=True, cores=8) == 1
    # two processes, two GPUs: each takes a different one; a third shares (by pid) and says so
    devices, locks = ["cuda:0", "cuda:1"], tmp_path / "locks"
    code = ("import sys; from curate.embed.devices import claim_device; "
            f"print(claim_device({devices!r}, {str(locks)!r}))")
    try:
        assert claim_device(devices, locks) == "cuda:0"
        assert claim_device(devices, locks) == "cuda:0"  # kept for the process's life
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert other.stdout.strip() == "cuda:1"
    finally:
        release_devices()
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert again.stdout.strip() == "cuda:0"  # a process that ends gives its GPU back


def test_loading_a_model_leaves_the_global_torch_generator_alone(tiny_mini_spec):
    """A model built then filled with saved weights draws its throw-away initial weights from a forked
    generator: a training run that loads a frozen encoder lazily (cold cache) and one that does not (warm
    cache, resumed) draw the same dropout masks and batches afterwards."""
    import torch

    from curate.embed.backends import load_model

    torch.manual_seed(7)
    before = torch.get_rng_state()
    load_model(tiny_mini_spec, device="cpu")
    assert torch.equal(torch.get_rng_state(), before)
