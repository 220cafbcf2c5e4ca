
"""The demo's stand-in for a text-to-image model (DALL-E, SDXL-Turbo): the procedural renderer.

``DemoGenerator().generate("striped", "heart", n=8, seed=0)`` renders eight images of a
striped heart. Builders call it where a real pipeline would prompt a diffusion model, so the
"generate candidates, then filter with CLIP" path runs offline with the same code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from curate.images import encode_jpeg

from .render import DEFAULT_SIZE, render_sample
from .vocab import FAMILY_OF, check_attr, check_obj, slug

GENERATOR_STREAM = 0x6E6


def image_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (world seed, stream, indices): stable and well mixed."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class DemoGenerator:
    """Renders ``n`` images of ``attr obj``; ``size`` in pixels, JPEG ``quality``."""

    size: int = DEFAULT_SIZE
    quality: int = 90
    name: str = "demo-renderer"

    def generate(self, attr: str, obj: str, n: int, seed: int = 0) -> list[tuple[str, bytes, dict[str, Any]]]:
        """``n`` samples ``(key, jpeg_bytes, meta)``; the same arguments always give the same bytes."""
        check_attr(attr)
        check_obj(obj)
        from .vocab import ATTRIBUTE_NAMES, OBJECT_NAMES

        ai, oi = ATTRIBUTE_NAMES.index(attr), OBJECT_NAMES.index(obj)
        out = []
        for j in range(n):
            s = image_seed(seed, GENERATOR_STREAM, ai, oi, j)
            img, vis = render_sample(attr, obj, s, self.size)
            key = f"gen_{attr}_{slug(obj)}_{seed}_{j:05d}".replace("-_", "_")
            meta = {**vis, "key": key, "pair": f"{attr} {obj}", "family": FAMILY_OF[attr], "seed": s,
                    "prompt": f"a photo of a {attr} {obj}", "source": self.name, "width": self.size,
                    "height": self.size}
            out.append((key, encode_jpeg(img, self.quality), meta))
        return out
