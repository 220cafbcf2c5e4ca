"""The build's decode check (filters.check_image) decodes a JPEG at 1/8 scale: it keeps only whether the
image decodes, and refuses what the full-size decode refuses."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from builders.imagenet_ao.filters import check_image
from curate.images import open_rgb


def jpeg(w: int, h: int) -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_the_build_decode_check_reads_a_jpeg_at_one_eighth_and_refuses_what_full_size_refuses():
    data = jpeg(1024, 768)
    assert check_image(data, 64) == (True, "", 1024, 768)           # the header's size, not the draft's
    assert check_image(data, 800)[0] is False                        # min_resolution on the real size
    ok, reason, _, _ = check_image(data[: len(data) // 2], 64)
    assert not ok and reason.startswith("undecodable")
    with pytest.raises(OSError):
        open_rgb(data[: len(data) // 2])                             # as the full decode refuses it
