"""The frozen image side of TRIDENT: a CLIP tower's token features and LLaVA's projector.

- :class:`Backbone` wraps any ``curate.embed.backends`` encoder (``open_clip:``, ``hf:``,
  ``mini:`` specs, any size; the paper's is ViT-L/14-336) and returns its token features
  through ``Encoder.tokens`` (penultimate layer: CLS = global, patches = local). Images are
  padded to a square with the encoder's mean colour first (``Encoder.pad_color``), as
  TRIDENT does (``image_aspect_ratio: pad``), then go through the encoder's own preprocessing.
- :func:`load_projector` reads LLaVA-1.5's ``mm_projector`` weights (Linear -> ReLU ->
  Linear, 1024 -> 4096 -> 4096 for ViT-L), from LLaVA's ``mm_projector.bin`` (keys
  ``model.mm_projector.0.weight`` ...) or TRIDENT's extracted ``mm_projector.pth`` (keys
  ``0.weight`` ...), torch files read with ``weights_only=True`` or safetensors.

Images reach it through ``training.data``: an ``ImageStore`` (files or shards, by key) and the
token cache of ``training.data.features``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.images import DEFAULT_DECODE, check_decode

log = logging.getLogger(__name__)


class Backbone:
    """A frozen encoder's token features; ``spec`` names it in configs and caches."""

    def __init__(self, spec: str, device: str = "cpu", decode: str = DEFAULT_DECODE):
        from curate.embed.backends import load_model

        self.spec = spec
        self.decode = check_decode(decode)
        self.encoder = load_model(spec, device)
        self.device = self.encoder.device
        for p in getattr(getattr(self.encoder, "model", None), "parameters", lambda: [])():
            p.requires_grad_(False)
        self.fill = self.encoder.pad_color

    def preprocess(self, image: Any) -> Any:
        return self.encoder.preprocess(pad_square(image.convert("RGB"), self.fill))

    def open_image(self, data: bytes) -> Any:
        """Image bytes -> RGB image, decoded (``decode``) so its longest side covers the encoder's
        resize: the pad to a square makes that side the one the resize shrinks."""
        return self.encoder.open_image(data, self.decode, fit="long")

    def pixels(self, data: bytes) -> Any:
        """Image bytes -> padded, preprocessed CHW tensor."""
        return self.preprocess(self.open_image(data))

    def tokens(self, pixels: Any) -> tuple[Any, Any]:
        """``(global [B, Dg], local [B, T, Dl])`` float32 tensors on the backbone's device."""
        import torch

        with torch.no_grad():
            g, loc = self.encoder.tokens(pixels.to(self.device))
        return g.float(), loc.float()

    def dims(self) -> dict[str, int]:
        """Token count and widths, from one dummy image."""
        from PIL import Image

        x = self.preprocess(Image.new("RGB", (64, 64), self.fill)).unsqueeze(0)
        g, loc = self.tokens(x)
        return {"global_dim": int(g.shape[-1]), "tokens": int(loc.shape[1]), "local_dim": int(loc.shape[-1])}


def pad_square(image: Any, fill: tuple[int, ...]) -> Any:
    """TRIDENT's ``expand2square``: the image centred on a square of the mean colour."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), fill)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


# -- LLaVA's projector ------------------------------------------------------------------------------
def load_projector(path: str | Path) -> Any:
    """A frozen ``nn.Sequential(Linear, ReLU, Linear)`` with LLaVA's ``mm_projector`` weights."""
    import torch
    from torch import nn

    from curate.embed.backends import load_state_file

    path = Path(path)
    state = load_state_file(path)  # weights_only=True / safetensors, clear errors
    clean = {}
    for k, v in state.items():
        m = re.search(r"(?:^|\.)([02])\.(weight|bias)$", k)
        if m and ("mm_projector" in k or re.fullmatch(r"[02]\.(weight|bias)", k)):
            clean[f"{m.group(1)}.{m.group(2)}"] = v
    if set(clean) != {"0.weight", "0.bias", "2.weight", "2.bias"}:
        raise CurateError(f"not an mm_projector (Linear-ReLU-Linear) state dict; keys: {sorted(state)[:6]}",
                          where=str(path), fix="pass LLaVA-1.5's mm_projector.bin or TRIDENT's mm_projector.pth")
    out_dim, in_dim = clean["0.weight"].shape
    proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, clean["2.weight"].shape[0]))
    proj.load_state_dict({k: v.float() for k, v in clean.items()})
    proj.requires_grad_(False)
    return proj.eval().to(torch.float32)
