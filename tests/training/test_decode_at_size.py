"""The MLLM CIR path decodes JPEGs near its image processor's size (issue 26); --decode exact keeps
the full-size decode."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
from PIL import Image


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_mllm_decodes_near_the_processors_size_and_exact_at_full_size():
    from transformers import CLIPImageProcessor

    from training.cir.mllm import MllmEmbedder, MllmRetriever, decode_triplet

    proc = SimpleNamespace(image_processor=CLIPImageProcessor(size={"shortest_edge": 48},
                                                              crop_size={"height": 48, "width": 48}))
    size = MllmEmbedder.decode_size.fget(SimpleNamespace(processor=proc))
    assert size == 48
    squash = SimpleNamespace(image_processor=SimpleNamespace(size={"height": 40, "width": 60}))
    assert MllmEmbedder.decode_size.fget(SimpleNamespace(processor=squash)) == 60
    assert MllmEmbedder.decode_size.fget(SimpleNamespace(processor=SimpleNamespace())) is None
    sample = {"json": json.dumps({"reference": "a", "target": "b", "edit_text": "make it red"}).encode(),
              "ref.jpg": _jpeg(400, 300), "tgt.jpg": _jpeg(300, 400)}
    ref, tgt, text = decode_triplet(sample, size)
    assert (ref.size, tgt.size, text) == ((100, 75), (75, 100), "make it red")  # 1/4: short side 75 >= 48
    assert decode_triplet(sample)[0].size == (400, 300)
    emb = SimpleNamespace(decode_size=48)
    assert MllmRetriever(emb).size == 48 and MllmRetriever(emb, decode="exact").size is None
