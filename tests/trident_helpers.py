"""A tiny CZSL root in the standard layout, with images a small CLIP can tell apart.

Attributes are colours and objects are shapes drawn on 32 px images; train holds 6 of the 9
pairs, val/test hold seen and unseen pairs, as the CZSL splits do.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

COLOURS = {"red": (210, 40, 40), "blue": (40, 60, 210), "green": (40, 170, 60)}
SHAPES = ("circle", "square", "paper_plane")
TRAIN_PAIRS = [("red", "circle"), ("red", "square"), ("blue", "square"), ("blue", "paper_plane"),
               ("green", "circle"), ("green", "paper_plane")]
UNSEEN = [("red", "paper_plane"), ("blue", "circle"), ("green", "square")]


def draw(colour: str, shape: str, seed: int, size: int = 32) -> bytes:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    bg = tuple(int(x) for x in rng.integers(200, 256, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    o = int(rng.integers(2, 6))
    box = (o, o, size - o, size - o)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(o, size - o), (size - o, size // 2), (o, o)], fill=fill)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def make_czsl_root(root: Path, per_pair: int = 4, aux: bool = True, sep: str = " ") -> Path:
    """Write a standard-layout CZSL root; returns it."""
    from training.trident.data import write_czsl_root

    rows, images = [], {}
    seed = 0
    for a, o in TRAIN_PAIRS + UNSEEN:
        for j in range(per_pair):
            seed += 1
            kind = ("train", "train", "val", "test")[j % 4] if (a, o) in TRAIN_PAIRS else ("val", "test")[j % 2]
            rel = f"{a}_{o}/{a}_{o}_{j}.jpg"
            images[rel] = draw(a, o, seed)
            rows.append({"image": rel, "attr": a, "obj": o, "set": kind})
    write_czsl_root(root, rows, images, sep=sep)
    if aux:
        lines = [json.dumps({f"{a} {o}": ["bright", "shiny", "plain"] if a == "red" else ["dark", "matte", "plain"]})
                 for a, o in TRAIN_PAIRS]
        (root / "aux_label").mkdir(exist_ok=True)
        (root / "aux_label" / "aux_label.jsonl").write_text("\n".join(lines) + "\n")
    return root
