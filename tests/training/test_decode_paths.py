"""The training side of --decode: images by key, the TRIDENT backbone and the token cache, the triplet
miner's model features and the study's scratch and fine-tune inputs decode at the size the encoder needs (a
JPEG at a DCT scale that still covers it), and the cache folder tells the modes apart."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from curate.images import open_rgb
from training.data.features import token_cache_dir
from training.data.images import ImageStore
from training.trident.backbone import Backbone


def _jpeg(w: int, h: int) -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_image_store_reads_bytes_and_opens_at_a_size(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_jpeg(1024, 768))
    store = ImageStore(tmp_path, folder=folder)
    assert store.read("a.jpg") == (folder / "a.jpg").read_bytes()
    assert store.open("a.jpg").size == (1024, 768)
    assert store.open("a.jpg", 224).size == (512, 384)           # 1/2: 768 // 4 = 192 would be below 224
    assert store.open("a.jpg", 100, fit="long").size == (128, 96)


def test_backbone_decodes_so_the_padded_square_covers_the_resize(tiny_clip_spec):
    fast, exact = Backbone(tiny_clip_spec, "cpu"), Backbone(tiny_clip_spec, "cpu", decode="exact")
    size = fast.encoder.decode_size
    assert size and fast.decode == "fast"
    data = _jpeg(16 * size, 4 * size)                             # long side 16x the input, short side 4x
    im = fast.open_image(data)
    assert im.size == (2 * size, size // 2)                        # 1/8: the long side still >= size
    assert exact.open_image(data).size == (16 * size, 4 * size)
    a, b = fast.pixels(data), exact.pixels(data)
    assert a.shape == b.shape
    assert float((a - b).abs().mean()) < 0.1
    assert np.array_equal(np.asarray(open_rgb(data)), np.asarray(exact.open_image(data)))


def test_token_cache_folder_depends_on_the_decode(tmp_path, tiny_clip_spec):
    store = ImageStore(tmp_path, folder=tmp_path)
    keys = ["a.jpg", "b.jpg"]
    exact = token_cache_dir(tiny_clip_spec, store, keys, "exact")
    assert exact == token_cache_dir(tiny_clip_spec, store, keys)   # the folder caches had before the choice
    assert token_cache_dir(tiny_clip_spec, store, keys, "fast") != exact


def test_cir_images_decode_at_a_size_except_crops_and_the_cache_tells_modes_apart(tmp_path, tiny_clip_spec):
    from training.cir.data import ImageSource
    from training.cir.features import FeatureBank

    (tmp_path / "a.jpg").write_bytes(_jpeg(1024, 768))
    (tmp_path / "b.jpg").write_bytes(_jpeg(1024, 768))
    src = ImageSource(files={"a": tmp_path / "a.jpg", "b": tmp_path / "b.jpg"}, crops={"b": (0.0, 0.0, 400.0, 300.0)})
    got = dict(src.load(["a", "b"], size=224))
    assert got["a"].size == (512, 384)
    assert got["b"].size == (680, 680)                             # the crop box is in full-size pixels: full decode
    assert dict(src.load(["a"]))["a"].size == (1024, 768)
    fast = FeatureBank(tiny_clip_spec, "cpu", cache_dir=tmp_path / "c")
    exact = FeatureBank(tiny_clip_spec, "cpu", cache_dir=tmp_path / "c", decode="exact")
    assert fast.image_cache.path != exact.image_cache.path
    assert exact.image_cache.path.name.startswith("images-") and "fast" not in exact.image_cache.path.name
    assert fast.images(["a"], src)["a"].shape == exact.images(["a"], src)["a"].shape


def test_trident_runs_record_their_decode_and_older_runs_read_as_exact():
    import pytest

    from curate.errors import CurateError
    from training.trident.config import TridentConfig, preset

    assert preset("demo").decode == "fast"
    assert preset("demo", decode="exact").decode == "exact"
    with pytest.raises(CurateError, match="--decode"):
        preset("demo", decode="quick")
    old = {k: v for k, v in preset("demo").to_dict().items() if k != "decode"}   # a run.json from before
    assert TridentConfig.from_dict(old).decode == "exact"                      # its token features were exact


def _spy_open_rgb(monkeypatch, module) -> list[tuple]:
    """Wrap ``module.open_rgb``: each call's (size, fit, decoded size)."""
    calls: list[tuple] = []
    real = module.open_rgb

    def spy(data, size=None, fit="short"):
        im = real(data, size, fit)
        calls.append((size, fit, im.size))
        return im

    monkeypatch.setattr(module, "open_rgb", spy)
    return calls


def test_triplet_model_features_decode_at_the_encoders_size(monkeypatch, tiny_clip_spec):
    import curate.embed.backends as backends
    from builders.triplets import source
    from curate.embed.backends import load_model

    size = load_model(tiny_clip_spec, device="cpu").decode_size
    data = _jpeg(8 * size, 4 * size)                               # short side 4x the encoder's input
    monkeypatch.setattr(source, "iter_images", lambda shard_of, keys: ((k, data) for k in keys))
    calls = _spy_open_rgb(monkeypatch, backends)

    class Shards:
        def shard_of(self) -> dict[str, str]:
            return {}

    fast = source._model_features(Shards(), ["a", "b"], tiny_clip_spec, "cpu")
    assert calls == [(size, "short", (2 * size, size))] * 2           # 1/4: the short side still covers size
    calls.clear()
    exact = source._model_features(Shards(), ["a"], tiny_clip_spec, "cpu", decode="exact")
    assert calls == [(None, "short", (8 * size, 4 * size))]
    assert fast.keys == ["a", "b"] and exact.keys == ["a"]
    assert fast.matrix.shape[1] == exact.matrix.shape[1]
    assert float(fast.matrix[0] @ exact.matrix[0]) > 0.9


def test_study_scratch_pixels_decode_so_both_sides_cover_the_squash(monkeypatch):
    from types import SimpleNamespace

    import curate.images
    from training.models.mini_clip import DECODE_MARGIN
    from training.study.scratch import SIZE, pixels

    data = _jpeg(1024, 768)
    calls = _spy_open_rgb(monkeypatch, curate.images)
    fast = pixels(SimpleNamespace(images=[data], files=None))
    target = DECODE_MARGIN * SIZE                                      # 256: 768 // 2 covers it, 768 // 4 does not
    assert calls == [(target, "short", (512, 384))]
    calls.clear()
    exact = pixels(SimpleNamespace(images=[data], files=None), decode="exact")
    assert calls == [(None, "short", (1024, 768))]
    assert fast.shape == exact.shape == (1, 3, SIZE, SIZE)
    assert float((fast.float() - exact.float()).abs().mean()) < 4      # of 255


def test_study_finetune_batches_decode_at_the_encoders_size(monkeypatch, tiny_clip_spec, tmp_path):
    import curate.embed.backends as backends
    from curate.embed.backends import load_model
    from training.study.finetune import _batch

    enc = load_model(tiny_clip_spec, device="cpu")
    size = enc.decode_size
    data = _jpeg(8 * size, 4 * size)
    (tmp_path / "a.jpg").write_bytes(data)
    calls = _spy_open_rgb(monkeypatch, backends)
    fast = _batch(enc, [data, tmp_path / "a.jpg"])                    # bytes, or a file
    assert calls == [(size, "short", (2 * size, size))] * 2
    calls.clear()
    exact = _batch(enc, [data], decode="exact")
    assert calls == [(None, "short", (8 * size, 4 * size))]
    assert fast.shape[1:] == exact.shape[1:]
    assert float((fast[:1] - exact).abs().mean()) < 0.1


def test_czsl_zero_shot_decodes_so_the_padded_square_covers_the_resize(monkeypatch, tmp_path, tiny_clip_spec):
    """`curate eval czsl --zero-shot` decodes as TRIDENT's backbone does (long side covers the resize: the image
    is padded to a square first), at full size with ``--decode exact``, and records the mode."""
    from trident_helpers import make_czsl_root

    import curate.embed.backends as backends
    from curate.embed.backends import load_model
    from training.trident.results import evaluate_zero_shot

    root = make_czsl_root(tmp_path / "root")
    size = load_model(tiny_clip_spec, device="cpu").decode_size
    calls = _spy_open_rgb(monkeypatch, backends)
    fast = evaluate_zero_shot(tiny_clip_spec, root, "test", False, "cpu", feasibility="none")
    assert fast["decode"] == "fast" and calls and {c[:2] for c in calls} == {(size, "long")}
    calls.clear()
    exact = evaluate_zero_shot(tiny_clip_spec, root, "test", False, "cpu", feasibility="none", decode="exact")
    assert exact["decode"] == "exact" and {c[:2] for c in calls} == {(None, "long")}
    assert len(calls) == len([c for c in calls if c[2] == (32, 32)])   # the 32 px images, never upscaled

