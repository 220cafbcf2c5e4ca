"""Image bytes: the one JPEG encoder and the one decoder every stage uses.

Decoding for a model (:func:`open_rgb` with ``size``): a model sees 224 or 336 px, a pool's
photos are 512-2,000 px, and a full-size JPEG decode is most of the CPU work of feeding it.
libjpeg can decode straight to 1/2, 1/4 or 1/8 scale in the DCT domain (PIL's
``Image.draft``); the decoder picks the smallest of those scales whose image still covers
``size`` (the final resize only ever shrinks) and the model's own resize and crop follow.
``--decode exact`` (:data:`DECODE_MODES`) keeps the full-size decode, bit for bit as before.
PNG, WebP, GIF and every non-JPEG have no DCT scale: they decode as always.
"""

from __future__ import annotations

import io
from typing import Any

JPEG_QUALITY = 90
"""Quality of encoded images (PIL's scale): visually lossless for dataset images, about half
the size of 95. JPEG input is never re-encoded."""

BACKGROUND = (255, 255, 255)

DECODE_MODES = ("fast", "exact")
DEFAULT_DECODE = "fast"
"""``fast``: JPEGs decoded at the smallest DCT scale that still covers what the model needs;
``exact``: every image decoded at full size (bit-exact preprocessing)."""
DCT_SCALES = (8, 4, 2)


def check_decode(mode: str) -> str:
    """``mode`` if it is one of :data:`DECODE_MODES`, else a CurateError naming them."""
    if mode not in DECODE_MODES:
        from .errors import CurateError

        raise CurateError(f"unknown --decode {mode!r}", fix=f"use one of {', '.join(DECODE_MODES)}")
    return mode


def decode_target(size: int | None, mode: str = DEFAULT_DECODE) -> int | None:
    """The ``size`` to pass to :func:`open_rgb` under ``mode``: None (full size) for ``exact``."""
    return None if check_decode(mode) == "exact" else size


def dct_scale(width: int, height: int, size: int | None, fit: str = "short") -> int:
    """The largest of 8, 4, 2 (else 1) by which a ``width`` x ``height`` image can shrink and keep
    its ``fit`` side (short or long) at least ``size`` px: never below the target."""
    if not size or size < 1:
        return 1
    side = min(width, height) if fit == "short" else max(width, height)
    return next((s for s in DCT_SCALES if side // s >= size), 1)


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


def thumbnail(data: bytes, size: int) -> Any:
    """A thumbnail of image bytes: shrunk to fit ``size`` x ``size`` (aspect kept, never upscaled),
    a JPEG decoded straight at the smallest DCT scale whose long side still covers ``size``
    (:func:`open_rgb` with ``fit="long"``); EXIF orientation applied, as everywhere."""
    image = open_rgb(data, size, fit="long")
    image.thumbnail((size, size))
    return image


def open_rgb(data: bytes, size: int | None = None, fit: str = "short") -> Any:
    """Decode image bytes to an 8-bit RGB PIL image (see :func:`to_rgb`); raises on undecodable data.

    ``size``: what the caller's resize needs, the least its ``fit`` side (``short``: a
    shortest-side resize and crop; ``long``: a pad to a square) may be. A JPEG at least twice
    that is decoded at 1/2, 1/4 or 1/8 scale (:func:`dct_scale`), never below ``size``, never
    above full size; anything else, and ``size=None``, decodes at full size. EXIF orientation,
    CMYK, greyscale and PIL's decompression-bomb check (on the header's size, before decoding)
    are the same either way.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if size and im.format == "JPEG":
            scale = dct_scale(im.width, im.height, size, fit)
            if scale > 1:  # a request Pillow's draft() maps to exactly this scale
                im.draft(im.mode, (im.width // scale, im.height // scale))
        out = to_rgb(im)  # a new, loaded image (exif_transpose copies), independent of the file
        out.load()
        return out
