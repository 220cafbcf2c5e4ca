"""The training side of --decode: images by key, the TRIDENT backbone and the token cache decode at the
size the encoder needs (a JPEG at a DCT scale that still covers it), and the cache folder tells the modes apart."""

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
