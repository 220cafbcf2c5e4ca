"""A tiny, randomly initialised text-to-image pipeline saved as a real diffusers folder.

The same folder layout as SDXL-Turbo's or Stable Diffusion's (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), so ``--generator diffusers:DIR``
runs the real loading and sampling code offline, in seconds on CPU. Its images are noise:
it exists to exercise the generator path where no weights can be downloaded.

    python -m builders.imagenet_ao.random_diffusers /tmp/tiny-sd
    curate build imagenet-ao ... --generator 'diffusers:/tmp/tiny-sd?size=64'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _byte_vocab() -> dict[str, int]:
    """A byte-level BPE vocabulary without merges: every byte symbol, alone and word-final."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(vocab)}


def save_random_text_to_image(out_dir: str | Path, seed: int = 0, width: int = 32) -> Path:
    """Write a Stable-Diffusion-style pipeline (UNet, VAE, CLIP text encoder) with ``width``-wide layers."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok_dir = out / "_tokenizer_src"
    tok_dir.mkdir(exist_ok=True)
    vocab = _byte_vocab()
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width, num_attention_heads=2,
        num_hidden_layers=1, projection_dim=width, max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(width, 2 * width),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width, attention_head_dim=2, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(width, width), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    for p in tok_dir.iterdir():
        p.unlink()
    tok_dir.rmdir()
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m builders.imagenet_ao.random_diffusers OUT_DIR")
    print(save_random_text_to_image(sys.argv[1]))
