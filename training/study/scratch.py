"""A supervised baseline with no pretraining: the mini-CLIP's CNN image tower with an object-class head,
trained from scratch on the training images' object labels (no captions) through ``training.loop.fit``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curate.images import DEFAULT_DECODE, decode_target

from ..models.mini_clip import DECODE_MARGIN
from ..zeroshot import EvalSet

SIZE = 64
EPOCHS = 12


def pixels(s: EvalSet, size: int = SIZE, decode: str = DEFAULT_DECODE) -> Any:
    """A set's images as a uint8 tensor ``[N, 3, size, size]`` (decoded once).

    Each image is squashed to ``size`` x ``size``, so a JPEG decodes at the smallest DCT scale whose
    short side (hence both sides) still covers :data:`DECODE_MARGIN` x ``size``, the margin the
    mini-CLIP, whose CNN tower this is, decodes its own training images with (``decode="exact"``:
    full size; ``curate.images.DECODE_MODES``)."""
    import torch
    from PIL import Image

    from curate.images import open_rgb

    target = decode_target(DECODE_MARGIN * size, decode)
    sources = list(s.images) if s.images is not None else [Path(f).read_bytes() for f in s.files or []]
    arr = [np.asarray(open_rgb(b, target, fit="short").resize((size, size), Image.BILINEAR), dtype=np.uint8)
           for b in sources]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()


def train_scratch(images: Any, labels: np.ndarray, n_classes: int, seed: int, run: Path,
                  epochs: int = EPOCHS, threads: int = 2) -> Any:
    """The trained classifier (``model(x) -> [N, C]`` logits) for ``images`` (uint8) and object ``labels``."""
    import torch
    import torch.nn.functional as F

    from ..loop import FitConfig, fit, index_batches, seed_everything
    from ..models.mini_clip import MEAN, STD, CosineWarmup, MiniClipConfig, build_model

    torch.set_num_threads(max(1, threads))
    seed_everything(seed)
    cfg = MiniClipConfig(image_size=SIZE, embed_dim=n_classes, seed=seed)
    model = build_model(cfg, vocab_size=2).visual  # its projection is the class head
    y = torch.from_numpy(labels.astype(np.int64))
    n = len(y)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    batches, steps = index_batches(n, 128, gen)

    def loss(m: Any, idx: Any) -> tuple[Any, int]:
        x = images[idx].float() / 255.0
        if torch.rand((), generator=gen) < 0.5:  # flips: the only augmentation
            x = x.flip(3)
        return F.cross_entropy(m((x - MEAN) / STD), y[idx]), len(idx)

    fit(model, opt, loss, batches, run, FitConfig(epochs=epochs, seed=seed, device="cpu", resume=True,
                                                  desc=f"scratch classifier seed {seed}"),
        scheduler=CosineWarmup(opt, cfg.lr, steps * epochs), scheduler_per="step", generators={"sampler": gen},
        steps_per_epoch=steps, what="the scratch classifier")
    model.eval()
    return model


def logits(model: Any, images: Any, batch: int = 256) -> np.ndarray:
    import torch

    from ..models.mini_clip import MEAN, STD

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(model((images[i:i + batch].float() / 255.0 - MEAN) / STD).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

