"""The padding colour is a property of the encoder (``Encoder.pad_color``, from its preprocessing's
normalisation mean), not a list of backend names: a new backend gets its own colour, not grey, and
the existing ones keep the colours they had (so TRIDENT's features and metrics are unchanged)."""

from __future__ import annotations

from typing import Any

import pytest

from curate.embed.backends import Encoder

OPENAI_MEAN_255 = (122, 116, 104)  # int(255 * (0.48145466, 0.4578275, 0.40821073)): what open_clip and hf had


class SepiaEncoder(Encoder):
    """A new backend whose preprocessing subtracts its own mean."""

    spec = "sepia:x"
    dim = 4

    @property
    def image_mean(self) -> tuple[float, float, float]:
        return 0.2, 0.4, 0.6

    def preprocess(self, image: Any) -> Any:
        import numpy as np
        import torch

        arr = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr - np.array(self.image_mean, dtype=np.float32)).permute(2, 0, 1)

    def _forward_images(self, batch: Any) -> Any:
        return batch.mean(dim=(2, 3)).repeat(1, 2)[:, :4]

    def _forward_texts(self, texts: list[str]) -> Any:
        import torch

        return torch.ones(len(texts), 4)

    def tokens(self, batch: Any) -> tuple[Any, Any]:
        flat = batch.flatten(2).transpose(1, 2)
        return flat.mean(1), flat


def load_sepia(spec: str, rest: str, device: str) -> SepiaEncoder:
    return SepiaEncoder()


def test_a_new_backend_pads_with_its_own_mean(monkeypatch):
    from PIL import Image

    from curate.embed import backends
    from training.trident.backbone import Backbone, pad_square

    monkeypatch.setitem(backends.LOADERS, "sepia", f"{__name__}:load_sepia")
    bb = Backbone("sepia:x")
    assert bb.fill == bb.encoder.pad_color == (51, 102, 153)  # not grey (127, 127, 127)
    padded = pad_square(Image.new("RGB", (20, 10), (255, 255, 255)), bb.fill)
    assert padded.size == (20, 20) and padded.getpixel((0, 0)) == (51, 102, 153)
    assert bb.dims()["local_dim"] == 3


def test_a_backend_that_does_not_say_its_mean_cannot_be_made():
    class NoMean(SepiaEncoder):
        image_mean = Encoder.image_mean  # the abstract one: the backend did not say

    with pytest.raises(TypeError, match="image_mean"):
        NoMean()


def test_the_existing_backends_keep_their_colours(tmp_path, tiny_clip_spec):
    from curate.embed.backends import load_model
    from curate.embed.random_models import save_random_hf_clip

    assert load_model(tiny_clip_spec, "cpu").pad_color == OPENAI_MEAN_255
    assert load_model(save_random_hf_clip(tmp_path / "hf"), "cpu").pad_color == OPENAI_MEAN_255


def test_the_mini_clip_keeps_grey(tmp_path):
    from training.models.mini_clip import MEAN, MiniClipEncoder

    assert MEAN == 0.5
    enc = MiniClipEncoder.__new__(MiniClipEncoder)  # the property needs no weights
    assert enc.pad_color == (127, 127, 127)
