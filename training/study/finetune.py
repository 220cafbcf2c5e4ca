"""Full fine-tuning of a CLIP image tower on the in-distribution training images (object labels):
the tower and a head initialised from the zero-shot class text embeddings are trained together
through ``training.loop.fit``; the model is then scored like a probe (object logits per seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.images import DEFAULT_DECODE

from ..zeroshot import EvalSet

EPOCHS = 4
LR = 3e-4
BATCH = 64


def _sources(s: EvalSet) -> list[Any]:
    return list(s.images) if s.images is not None else list(s.files or [])


def _batch(encoder: Any, sources: list[Any], decode: str = DEFAULT_DECODE) -> Any:
    """Images (bytes or files) -> the encoder's preprocessed batch on its device, each decoded at the size
    its preprocessing needs (``Encoder.pixels``: a JPEG at the smallest DCT scale that covers
    ``decode_size``; ``decode="exact"``: full size)."""
    import torch

    return torch.stack([encoder.pixels(x if isinstance(x, bytes | bytearray) else Path(x).read_bytes(), decode)
                        for x in sources]).to(encoder.device)


def finetune(spec: str, device: str, train: EvalSet, labels: np.ndarray, objects: list[str], seed: int,
             run: Path, epochs: int = EPOCHS, decode: str = DEFAULT_DECODE) -> Any:
    """A fresh copy of ``spec``'s model, its image tower fine-tuned; returns ``(encoder, head)``.
    ``decode``: how the training images are decoded (:func:`_batch`)."""
    import torch
    import torch.nn.functional as F

    from curate.embed.backends import load_model
    from curate.embed.zeroshot import OPENAI_IMAGENET_TEMPLATES, class_text_embeddings

    from ..loop import FitConfig, fit, index_batches, seed_everything

    seed_everything(seed)
    enc = load_model(spec, device)  # not the shared cached model: its weights change
    tower = getattr(getattr(enc, "model", None), "visual", None)
    if tower is None:
        raise CurateError(f"cannot fine-tune {spec}: no image tower at model.visual",
                          fix="fine-tuning supports mini: and open_clip: models")
    head = torch.nn.Linear(enc.dim, len(objects)).to(enc.device)
    with torch.no_grad():  # the zero-shot classifier as the starting head
        head.weight.copy_(torch.from_numpy(class_text_embeddings(enc, objects, OPENAI_IMAGENET_TEMPLATES)))
        head.bias.zero_()
    scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32, device=enc.device))

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower, self.head, self.scale = tower, head, scale

        def forward(self, x: Any) -> Any:
            return self.scale.exp().clamp(max=100) * self.head(F.normalize(enc._forward_images(x).float(), dim=-1))

    model = Classifier().train()
    sources = _sources(train)
    y = torch.from_numpy(labels.astype(np.int64))
    n = len(y)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    batches, steps = index_batches(n, BATCH, gen)

    def loss(m: Any, idx: Any) -> tuple[Any, int]:
        x = _batch(enc, [sources[i] for i in idx.tolist()], decode)
        return F.cross_entropy(m(x), y[idx].to(x.device)), len(idx)

    fit(model, opt, loss, batches, run, FitConfig(epochs=epochs, seed=seed, device=enc.device, resume=True,
                                                  desc=f"fine-tune seed {seed}"),
        generators={"sampler": gen}, steps_per_epoch=steps, what="the fine-tuned tower")
    return model.eval(), enc


def logits(model: Any, enc: Any, s: EvalSet, batch: int = 128, decode: str = DEFAULT_DECODE) -> np.ndarray:
    import torch

    sources = _sources(s)
    out = []
    with torch.no_grad():
        for i in range(0, len(sources), batch):
            out.append(model(_batch(enc, sources[i:i + batch], decode)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)
