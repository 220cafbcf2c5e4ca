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
    image = to_rgb(image)
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
        return encode_jpeg(im, quality)


def to_rgb(image: Any) -> Any:
    """Any PIL image as 8-bit RGB, the way every stage sees pixels.

    - EXIF orientation is applied (a phone photo stored sideways is seen upright);
    - animations keep their first frame;
    - 16/32-bit greyscale (``I;16``, ``I``) is scaled to 8 bits by its range, not clipped
      (``convert("RGB")`` would turn a 16-bit PNG almost white);
    - transparency is flattened on white, as :func:`encode_jpeg` does.
    """
    import numpy as np
    from PIL import Image, ImageOps

    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, BACKGROUND)
        image.paste(rgba, mask=rgba.split()[-1])
    return image if image.mode == "RGB" else image.convert("RGB")


def open_rgb(data: bytes) -> Any:
    """Decode image bytes to an 8-bit RGB PIL image (see :func:`to_rgb`); raises on undecodable data."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        out = to_rgb(im)  # a new, loaded image (exif_transpose copies), independent of the file
        out.load()
        return out
