"""Object silhouettes of the demo world, drawn once per process as 256 px masks.

Each shape is drawn in unit coordinates (x right, y down, the shape inside the circle of
radius 1) so any rotation of the mask keeps it inside the canvas. Holes (a fish's eye, a
house's door, a key's ring) are drawn with 0, which keeps the silhouettes recognisable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

from PIL import Image, ImageDraw

CANON = 256
_R = CANON / 2 * 0.94  # unit radius in pixels, a margin left for antialiasing


def _p(x: float, y: float) -> tuple[float, float]:
    return (CANON / 2 + x * _R, CANON / 2 + y * _R)


def _poly(d: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill: int = 255) -> None:
    d.polygon([_p(x, y) for x, y in pts], fill=fill)


def _rect(d: ImageDraw.ImageDraw, x0: float, y0: float, x1: float, y1: float, fill: int = 255) -> None:
    d.rectangle([_p(x0, y0), _p(x1, y1)], fill=fill)


def _circle(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: int = 255) -> None:
    d.ellipse([_p(cx - r, cy - r), _p(cx + r, cy + r)], fill=fill)


def _heart(d: ImageDraw.ImageDraw) -> None:
    pts = []
    for i in range(120):
        t = 2 * math.pi * i / 120
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.5, -y / 17.5 - 0.15))
    _poly(d, pts)


def _star(d: ImageDraw.ImageDraw) -> None:
    pts = []
    for i in range(10):
        r = 0.98 if i % 2 == 0 else 0.4
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((r * math.cos(a), r * math.sin(a) + 0.08))
    _poly(d, pts)


def _lemon(d: ImageDraw.ImageDraw) -> None:
    pts = []
    tilt = math.radians(-20)
    for i in range(120):
        t = 2 * math.pi * i / 120
        c = math.cos(t)
        x = 0.7 * c + 0.22 * math.copysign(abs(c) ** 24, c)
        y = 0.5 * math.sin(t)
        pts.append((x * math.cos(tilt) - y * math.sin(tilt), x * math.sin(tilt) + y * math.cos(tilt)))
    _poly(d, pts)


def _fish(d: ImageDraw.ImageDraw) -> None:
    pts = [(-0.12 + 0.62 * math.cos(2 * math.pi * i / 80), 0.38 * math.sin(2 * math.pi * i / 80)) for i in range(80)]
    _poly(d, pts)
    _poly(d, [(0.38, 0.0), (0.95, -0.45), (0.78, 0.0), (0.95, 0.45)])
    _poly(d, [(-0.2, -0.3), (0.1, -0.58), (0.22, -0.3)])
    _circle(d, -0.45, -0.08, 0.08, 0)


def _house(d: ImageDraw.ImageDraw) -> None:
    _rect(d, -0.6, -0.08, 0.6, 0.8)
    _poly(d, [(-0.82, -0.05), (0.0, -0.78), (0.82, -0.05)])
    _rect(d, 0.32, -0.7, 0.5, -0.3)
    _rect(d, -0.15, 0.35, 0.15, 0.8, 0)
    _rect(d, 0.25, 0.12, 0.47, 0.32, 0)
    _rect(d, -0.47, 0.12, -0.25, 0.32, 0)


def _tree(d: ImageDraw.ImageDraw) -> None:
    _poly(d, [(0.0, -0.95), (-0.42, -0.4), (0.42, -0.4)])
    _poly(d, [(0.0, -0.68), (-0.62, 0.08), (0.62, 0.08)])
    _poly(d, [(0.0, -0.32), (-0.82, 0.55), (0.82, 0.55)])
    _rect(d, -0.13, 0.5, 0.13, 0.92)


def _key(d: ImageDraw.ImageDraw) -> None:
    _circle(d, -0.55, 0.0, 0.36)
    _circle(d, -0.55, 0.0, 0.17, 0)
    _rect(d, -0.25, -0.08, 0.92, 0.08)
    _rect(d, 0.52, 0.06, 0.64, 0.32)
    _rect(d, 0.74, 0.06, 0.88, 0.38)


def _umbrella(d: ImageDraw.ImageDraw) -> None:
    r = 0.88
    d.pieslice([_p(-r, -0.1 - r), _p(r, -0.1 + r)], start=180, end=360, fill=255)
    for cx in (-0.66, -0.22, 0.22, 0.66):
        _circle(d, cx, -0.1, 0.22, 0)
    _rect(d, -0.045, -1.0 + 0.02, 0.045, 0.72)
    w = max(2, int(0.09 * _R))
    d.arc([_p(-0.38, 0.5), _p(0.045, 0.9)], start=0, end=180, width=w, fill=255)


def _crescent_moon(d: ImageDraw.ImageDraw) -> None:
    _circle(d, 0.0, 0.0, 0.85)
    _circle(d, 0.4, -0.18, 0.7, 0)


def _cup(d: ImageDraw.ImageDraw) -> None:
    w = max(2, int(0.13 * _R))
    d.ellipse([_p(0.2, -0.35), _p(0.85, 0.3)], outline=255, width=w)
    _poly(d, [(-0.6, -0.55), (0.45, -0.55), (0.33, 0.52), (-0.48, 0.52)])
    d.ellipse([_p(-0.85, 0.5), _p(0.72, 0.72)], fill=255)


def _bell(d: ImageDraw.ImageDraw) -> None:
    right = []
    for i in range(40):
        y = -0.6 + 1.15 * i / 39
        right.append((0.33 + 0.4 * ((y + 0.6) / 1.15) ** 2.6, y))
    left = [(-x, y) for x, y in reversed(right)]
    _poly(d, right + left)
    _circle(d, 0.0, -0.6, 0.33)
    _rect(d, -0.82, 0.52, 0.82, 0.64)
    _circle(d, 0.0, 0.78, 0.15)
    _circle(d, 0.0, -0.98 + 0.02, 0.1)


def _paper_plane(d: ImageDraw.ImageDraw) -> None:
    nose, back, fold, keel, wing = (0.95, -0.5), (-0.95, -0.12), (-0.22, 0.18), (-0.3, 0.75), (-0.6, 0.3)
    _poly(d, [nose, back, fold])
    _poly(d, [nose, fold, keel])
    _poly(d, [nose, fold, wing])
    w = max(2, int(0.04 * _R))
    d.line([_p(*nose), _p(*fold)], fill=0, width=w)


def _arrow(d: ImageDraw.ImageDraw) -> None:
    _rect(d, -0.75, -0.08, 0.35, 0.08)
    _poly(d, [(0.97, 0.0), (0.25, -0.42), (0.25, 0.42)])
    for dx in (0.0, 0.22):
        _poly(d, [(-0.95 + dx, -0.35), (-0.8 + dx, -0.35), (-0.58 + dx, -0.06), (-0.73 + dx, -0.06)])
        _poly(d, [(-0.95 + dx, 0.35), (-0.8 + dx, 0.35), (-0.58 + dx, 0.06), (-0.73 + dx, 0.06)])


DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw], None]] = {
    "heart": _heart,
    "star": _star,
    "lemon": _lemon,
    "fish": _fish,
    "house": _house,
    "tree": _tree,
    "key": _key,
    "umbrella": _umbrella,
    "crescent moon": _crescent_moon,
    "cup": _cup,
    "bell": _bell,
    "paper plane": _paper_plane,
    "arrow": _arrow,
}


@cache
def canonical_mask(obj: str) -> Image.Image:
    """The object's 256 px 'L' mask (255 inside), cached per process."""
    img = Image.new("L", (CANON, CANON), 0)
    DRAWERS[obj](ImageDraw.Draw(img))
    return img
