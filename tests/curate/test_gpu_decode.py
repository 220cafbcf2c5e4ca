"""curate.embed.gpu_decode: the GPU decode path's recipe, geometry and fallbacks, run on the CPU
(torchvision's decode_jpeg takes the same batches on device="cpu"; no GPU is needed to check them)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curate.embed.gpu_decode import Recipe, TensorDecoder, gpu_decoder, tensor_recipe
from curate.images import open_rgb


@pytest.fixture(autouse=True, scope="module")
def _needs_torchvision():
    """Skipped without torchvision; imported here, not at collection (a worker that never runs this file
    does not pay for open_clip's import)."""
    pytest.importorskip("torchvision")


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def _bytes(im: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def transform():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.image_transform(224, is_train=False)


def test_open_clip_preprocessing_is_a_plain_recipe(transform):
    r = tensor_recipe(transform)
    assert r == Recipe(224, (224, 224), tuple(transform.transforms[-1].mean), tuple(transform.transforms[-1].std),
                       "bicubic")
    from torchvision import transforms as T

    assert tensor_recipe(T.Compose([T.RandomResizedCrop(224), T.ToTensor()])) is None
    assert tensor_recipe(None) is None


def test_tensor_decode_matches_the_cpu_preprocessing(transform):
    dec = TensorDecoder(tensor_recipe(transform), "cpu", lambda d: transform(open_rgb(d)))
    images = [_bytes(_photo(640, 480, 1)), _bytes(_photo(300, 500, 2))]
    pixels, errors = dec(images)
    assert errors == [None, None] and tuple(pixels.shape) == (2, 3, 224, 224)
    for got, data in zip(pixels, images, strict=True):
        want = transform(open_rgb(data))
        assert float((got - want).abs().mean()) < 0.03      # normalised units: about 2/255 of a pixel


def test_non_jpeg_falls_back_and_broken_images_are_errors(transform):
    calls = []

    def cpu(data: bytes):
        calls.append(data)
        return transform(open_rgb(data))

    dec = TensorDecoder(tensor_recipe(transform), "cpu", cpu)
    png = _bytes(_photo(320, 240), "PNG")
    good = _bytes(_photo(320, 240, 3))
    truncated = good[: len(good) // 2]
    pixels, errors = dec([png, truncated, good, b"not an image"])
    assert errors[0] is None and errors[2] is None
    assert errors[1] and errors[3]                             # counted, never a half image
    assert pixels.shape[0] == 2
    assert png in calls                                        # decoded on the CPU, as before
    assert float((pixels[0] - transform(open_rgb(png))).abs().max()) == 0.0


def test_no_gpu_decoder_off_cuda(transform):
    class Enc:
        device = "cpu"

    Enc.transform = transform
    assert gpu_decoder(Enc(), "fast") is None
