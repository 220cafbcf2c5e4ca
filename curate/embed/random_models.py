"""Randomly initialised CLIP models saved in the real on-disk formats, built offline.

Why: benchmarks (speed does not depend on the weights) and offline smoke checks of the
open_clip and transformers loading paths need real checkpoint files, and no weights can be
downloaded here. Each function returns the model spec that loads what it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_random_open_clip(out_dir: str | Path, arch: str = "ViT-B-32", config: dict[str, Any] | None = None,
                          seed: int = 0, safetensors: bool = False) -> str:
    """Write ``out_dir/<arch>.pt`` (+ ``<arch>.json`` for a custom ``config``); returns its spec."""
    import open_clip
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config is not None:
        cfg_path = out / f"{arch}.json"
        cfg_path.write_text(json.dumps(config))
        open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    if safetensors:
        from safetensors.torch import save_file

        path = out / f"{arch}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        path = out / f"{arch}.pt"
        torch.save(model.state_dict(), path)
    return f"open_clip:{arch}/{path.resolve()}"


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level base vocabulary (256 symbols, each also with the end-of-word mark)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def save_random_hf_clip(out_dir: str | Path, seed: int = 0, image_size: int = 32, dim: int = 32) -> str:
    """A tiny transformers CLIPModel + CLIPTokenizer (byte-level, no merges) + image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _byte_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    cfg = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": dim, "intermediate_size": 2 * dim,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={"hidden_size": dim, "intermediate_size": 2 * dim, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": 8},
        projection_dim=dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    model.save_pretrained(str(out))
    proc = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(str(out))
    return f"hf:{out.resolve()}"
