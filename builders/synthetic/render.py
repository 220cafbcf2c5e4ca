"""The procedural renderer: one attribute-object image from a seed, PIL + numpy only.

An image of the pair ``(attr, obj)`` shows the *target* attribute clearly; the other two
families are sampled, and every value shown is returned in the metadata
(``{"attr", "obj", "colour", "pattern", "state"}``). The sampling rule:

- **colour** — the target when it is a colour, otherwise the object's typical colour
  (``vocab.TYPICAL``) with probability ``TYPICAL_COLOUR_P`` (0.85; a world's
  ``Scale.typical_colour_p``, ``curate demo world --typical-colour-p``) and uniform over the 7 colours
  otherwise, so colour correlates with object identity as in real photos (lemons are yellow);
- **pattern** — the target when it is a pattern; otherwise ``plain`` with probability 0.8
  and a uniform pattern with 0.2, except that an ``outlined`` object is always ``plain``
  (an outline has no fill to carry a pattern);
- **state** — the target when it is a state; otherwise ``normal`` (medium size, filled,
  whole) with probability 0.8 and a uniform state with 0.2, never ``outlined`` or ``small``
  when the target is a pattern (the pattern must stay clearly visible).

How each family looks: colours are saturated fills (jittered by a few levels); patterns
are a second, light (dark on yellow) colour in stripes, dots, checks, wavy or zigzag bands
whose period follows the object's size, so even a ``small`` object shows several; states
are scale (``small`` 26-36 % of the image side, ``normal`` 48-64 %, ``large`` 78-92 %),
``broken`` (the shape cut along a jagged line and the halves pushed apart), ``outlined``
(only a thick contour in the colour) and ``glowing`` (a bright blurred halo around it).
Nuisances, all from the seed: position, rotation (+-35 degrees), a light neutral background
with a gradient, grey low-contrast clutter (lines, rings, boxes), and Gaussian noise (std 2-7 levels).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .shapes import canonical_mask
from .vocab import DEFAULT_VISIBLE, FAMILY_OF, PALETTE, PATTERNS, STATES, TYPICAL, check_attr, check_obj

DEFAULT_SIZE = 112
NOISE_TILE = 384
SCALE_RANGE = {"small": (0.26, 0.36), "normal": (0.48, 0.64), "large": (0.78, 0.92)}
COLOURS = tuple(PALETTE)
TYPICAL_COLOUR_P = 0.85


def sample_visible(attr: str, rng: np.random.Generator, obj: str | None = None,
                   typical_colour_p: float = TYPICAL_COLOUR_P) -> dict[str, str]:
    """The value of every family in an image of ``attr`` (``obj``) (rule in the module docstring;
    ``typical_colour_p``: a world's ``Scale.typical_colour_p``)."""
    family = FAMILY_OF[check_attr(attr)]
    if family == "colour":
        colour = attr
    elif obj is not None and rng.random() < typical_colour_p:
        colour = TYPICAL[obj]["colour"]
    else:
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
    if family == "state":
        state = attr
    elif rng.random() < 0.8:
        state = DEFAULT_VISIBLE["state"]
    else:
        choices = [s for s in STATES if not (family == "pattern" and s in ("outlined", "small"))]
        state = choices[int(rng.integers(len(choices)))]
    if family == "pattern":
        pattern = attr
    elif state == "outlined" or rng.random() < 0.8:
        pattern = DEFAULT_VISIBLE["pattern"]
    else:
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    return {"colour": colour, "pattern": pattern, "state": state}


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    tone = rng.uniform(165, 235) + rng.uniform(-10, 10, 3)
    a = rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(5, 20)
    # a 2x2 image of corner tones, bilinearly enlarged: a linear gradient for almost nothing
    corners = np.empty((2, 2, 3), np.uint8)
    for yi, y in enumerate((-1.0, 1.0)):
        for xi, x in enumerate((-1.0, 1.0)):
            g = amp * (math.cos(a) * x + math.sin(a) * y)
            corners[yi, xi] = [min(255, max(0, int(round(t + g)))) for t in tone]
    img = Image.fromarray(corners, "RGB").resize((size, size), Image.BILINEAR)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        g = float(tone.mean()) + (1 if rng.random() < 0.5 else -1) * rng.uniform(25, 55)
        col = tuple(min(255, max(0, int(g + t))) for t in rng.uniform(-8, 8, 3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(-0.1, 1.1, 4) * size)
        w = int(rng.integers(1, 3))
        kind = int(rng.integers(3))
        if kind == 0:
            d.line([(x0, y0), (x1, y1)], fill=col, width=w)
        else:
            r = rng.uniform(0.03, 0.12) * size
            box = [x0 - r, y0 - r, x0 + r, y0 + r]
            (d.ellipse if kind == 1 else d.rectangle)(box, outline=col, width=w)
    return img


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (float32), shared by every image of one size."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


@lru_cache(maxsize=16)
def _noise_tile(sigma: int) -> np.ndarray:
    """A fixed Gaussian noise tile (int16, std ``sigma``); images take a seeded crop of it
    (much cheaper than drawing fresh noise for every image)."""
    normal = np.random.default_rng(12345).standard_normal((NOISE_TILE, NOISE_TILE, 3), dtype=np.float32)
    tile = np.round(normal * sigma).astype(np.int16)
    tile.setflags(write=False)
    return tile


def _shift(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = a[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    return out


def _break(m: np.ndarray, cx: float, cy: float, px: float, rng: np.random.Generator) -> np.ndarray:
    """Cut the mask along a jagged line through its centre and push the halves apart."""
    size = m.shape[0]
    a = rng.uniform(0, math.pi)
    nx, ny = -math.sin(a), math.cos(a)  # normal of the cut
    yy, xx = _grid(size)
    along = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
    across = (xx - cx) * nx + (yy - cy) * ny
    tooth = px * 0.09
    jag = tooth * (2 * np.abs((along / (2 * tooth)) % 1.0 - 0.5) - 0.5) * 2
    side = across > jag
    gap = max(2.0, px * 0.07)
    dx, dy = int(round(nx * gap)), int(round(ny * gap))
    return np.maximum(_shift(m * side, dx, dy), _shift(m * ~side, -dx, -dy))


def _pattern_field(pattern: str, size: int, cx: float, cy: float, px: float, rng: np.random.Generator) -> np.ndarray:
    """True where the pattern's second colour shows, in object-centred rotated coordinates."""
    period = float(np.clip(px / rng.uniform(5.0, 6.5), 5.0, 16.0))
    a = rng.uniform(0, math.pi)
    yy, xx = _grid(size)
    u = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a) + rng.uniform(0, period)
    v = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a) + rng.uniform(0, period)
    if pattern == "striped":
        return (u % period) < period * 0.45
    if pattern == "dotted":
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        return du * du + dv * dv < (period * 0.27) ** 2
    if pattern == "checkered":
        return ((np.floor(u / period) + np.floor(v / period)) % 2) == 1
    if pattern == "wavy":
        return ((u + period * 0.45 * np.sin(2 * math.pi * v / (period * 2.2))) % period) < period * 0.45
    if pattern == "zigzag":
        tri = 2 * np.abs((v / (period * 1.6)) % 1.0 - 0.5)
        return ((u + period * 0.9 * tri) % period) < period * 0.45
    return np.zeros((size, size), bool)


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float = 12) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, int(round(c + j)))) for c, j in zip(rgb, rng.uniform(-amount, amount, 3), strict=True))
    return r, g, b


def render_sample(attr: str, obj: str, seed: int, size: int = DEFAULT_SIZE,
                  typical_colour_p: float = TYPICAL_COLOUR_P) -> tuple[Image.Image, dict[str, str]]:
    """Render ``(attr, obj)`` from ``seed``; returns the RGB image and every visible attribute."""
    check_obj(obj)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, 0xC0FFEE])
    vis = sample_visible(attr, rng, obj, typical_colour_p)
    bg = _background(size, rng)
    state = vis["state"]
    lo, hi = SCALE_RANGE.get(state, SCALE_RANGE["normal"])
    px = max(8, int(round(rng.uniform(lo, hi) * size)))
    margin = px / 2 * 0.92
    cx = rng.uniform(min(margin, size / 2), max(size - margin, size / 2))
    cy = rng.uniform(min(margin, size / 2), max(size - margin, size / 2))
    angle = rng.uniform(-35, 35)
    shape = canonical_mask(obj).resize((px, px), Image.BILINEAR).rotate(angle, Image.BILINEAR)
    mask = Image.new("L", (size, size), 0)
    mask.paste(shape, (int(round(cx - px / 2)), int(round(cy - px / 2))))
    if state == "broken":
        m = _break(np.asarray(mask, np.float32), cx, cy, px, rng)
        mask = Image.fromarray(m.astype(np.uint8), "L")
    elif state == "outlined":
        k = max(3, int(round(size / 28))) * 2 + 1
        mask = ImageChops.subtract(mask, mask.filter(ImageFilter.MinFilter(k)))

    colour = _jitter(PALETTE[vis["colour"]], rng)
    if state == "glowing":
        halo = mask.filter(ImageFilter.MaxFilter(5)).filter(ImageFilter.GaussianBlur(px * 0.11))
        halo = halo.point([min(255, int(v * 1.6)) for v in range(256)])
        glow = tuple(int(c * 0.35 + w * 0.65) for c, w in zip(colour, (255, 250, 215), strict=True))
        bg = Image.composite(Image.new("RGB", (size, size), glow), bg, halo)
    fill = Image.new("RGB", (size, size), colour)
    if vis["pattern"] != "plain":
        second = (45, 40, 40) if vis["colour"] == "yellow" else (245, 245, 240)
        field = _pattern_field(vis["pattern"], size, cx, cy, px, rng)
        fill = Image.composite(Image.new("RGB", (size, size), second), fill,
                               Image.fromarray(field.astype(np.uint8) * 255, "L"))
    img = np.asarray(Image.composite(fill, bg, mask), np.int16)
    sigma = int(rng.integers(2, 8))
    if size <= NOISE_TILE:
        ox, oy = (int(v) for v in rng.integers(0, NOISE_TILE - size + 1, 2))
        noise = _noise_tile(sigma)[oy:oy + size, ox:ox + size]
    else:
        noise = (rng.standard_normal(img.shape, dtype=np.float32) * sigma).astype(np.int16)
    out = Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8), "RGB")
    return out, {"attr": attr, "obj": obj, **vis}


def render(attr: str, obj: str, seed: int, size: int = DEFAULT_SIZE) -> Image.Image:
    """The image of ``attr obj`` for ``seed`` (deterministic; see the module docstring)."""
    return render_sample(attr, obj, seed, size)[0]
