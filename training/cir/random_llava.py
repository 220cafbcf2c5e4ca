"""A tiny randomly initialised LLaVA-style folder, built offline (no download), for smoke runs.

Why: the MLLM embedder (:mod:`training.cir.mllm`) loads real LLaVA-style checkpoints with
transformers (``LlavaForConditionalGeneration`` + ``AutoProcessor``); with no weights on the
machine, tests and benchmarks still need a real folder in that format to run the real loading,
prompting (chat template, ``<image>`` expansion, left padding) and training code. This writes
one: a 2-layer CLIP vision tower, a 2-layer LLaMA text model, a character-level tokenizer with a
chat template (Phi-3.5 style tags) and a CLIP image processor. Its numbers mean nothing.

    .venv/bin/python -m training.cir.random_llava OUT_DIR     # prints the spec hf:OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def save_random_llava(out_dir: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2,
                      image_size: int = 32, patch: int = 8) -> str:
    """Write the folder; returns its spec ``hf:/abs/path``."""
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for c in [*range(32, 127), 10]:
        vocab.setdefault(chr(c), len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", additional_special_tokens=SPECIALS[4:], padding_side="left")
    tok.chat_template = CHAT_TEMPLATE
    n_patches = (image_size // patch) ** 2
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                       num_attention_heads=2, image_size=image_size, patch_size=patch),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                                num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                                max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=vocab["<image>"], image_seq_length=n_patches, vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                                             crop_size={"height": image_size, "width": image_size}),
                          tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                          chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1)
    proc.save_pretrained(out)
    return f"hf:{out.resolve()}"


if __name__ == "__main__":
    print(save_random_llava(sys.argv[1] if len(sys.argv) > 1 else "tiny-llava"))
