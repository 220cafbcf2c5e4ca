"""Image bytes: the one JPEG encoder every stage uses."""

from __future__ import annotations

import io
from typing import Any

JPEG_QUALITY = 90
"""Quality of encoded images (PIL's scale): visually lossless for dataset images, about half
the size of 95. JPEG input is never re-encoded."""

BACKGROUND = (255, 255, 255)


def encode_jpeg(image: Any, quality: int = JPEG_QUALITY) -> bytes:
    """A PIL image as JPEG bytes.

    Transparency (RGBA, LA, palette with alpha) is flattened on white, deterministically, so
    a logo on a transparent background does not turn black; other modes become RGB.
    """
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, BACKGROUND)
        image.paste(rgba, mask=rgba.split()[-1])
    elif image.mode != "RGB":
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def to_jpeg(data: bytes, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes pass through unchanged; anything else PIL reads becomes a JPEG (the first
    frame of an animation)."""
    if data[:3] == b"\xff\xd8\xff":
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        return encode_jpeg(im, quality)
