"""The demo MLLM: a small LLaVA-style model built from the demo world, as the mini-CLIP stands in for CLIP.

Why it exists: InstructCIR embeds with an instruction-tuned multimodal LLM; with no network there
are no such weights, yet its two training stages should be shown to learn offline. This builds
a ``LlavaForConditionalGeneration`` folder that ``--mllm hf:PATH`` loads unchanged
(:mod:`training.cir.mllm`), in three cheap phases on CPU, each through ``training.loop.fit``:

1. **vision tower**: a transformers ``CLIPVisionModel`` (a small ViT, ``grid`` x ``grid`` patches)
   distilled from the demo mini-CLIP's CNN: its patch tokens regress the CNN's last feature map
   (average-pooled to the same grid) and its class token the mini-CLIP's image embedding (cosine
   losses, through two linear heads that are then dropped). LLaVA takes a CLIP-style ViT, not a
   CNN, so the mini-CLIP's tower enters as a ViT that imitates it;
2. **language model + projector** (the vision tower frozen): a LLaMA-style causal LM of a few
   layers over a word-level tokenizer of the world's vocabulary (the caption corpus' words seen
   ``min_count`` times, the world's attribute and object names, the prompts' words), trained
   with next-token loss on the world's caption corpus and, LLaVA-style, on its captioned train
   images (``<image>`` + "Describe this image." -> the caption, loss on the answer only), and on
   **one-word instruction data** (``one_word``): a train image with InstructCIR's gallery prompt
   ("Describe this image in one word:") -> its object's name, or its attribute, and its caption
   with the caption prompt ("... Describe this sentence in one word:") -> the same words.

The one-word data stands in for what a real MLLM's instruction tuning provides: a LLaVA-style
model answers "Describe this image in one word:" with the object, and InstructCIR's (and E5-V's)
last-token embedding relies on exactly that ability, the hidden state before the answer holding
the answer. Without it the demo LM (captions only) ignored the image when answering and its
last-token embeddings were near-constant (pairwise cosine 0.999), so InfoNCE started at chance
and stage 1 did not move in its budget. The data is made from the world's train split only (the
images' truth: ``attr``, ``obj``, ``caption``); never from the triplets, whose edit prompt
(``Modify this image with ...``) is left for stage 2 to teach.

Saved with ``save_pretrained`` (safetensors) with a ``LlavaProcessor``: the tokenizer (a
``PreTrainedTokenizerFast`` with ``<image>`` and a Phi-3.5-style chat template) and a CLIP image
processor normalising as the mini-CLIP does. Cached under ``curate.paths.cache_dir()/demo-mllm/
<fingerprint of world.json, the mini-CLIP's weights and this config>/`` so the demo builds it once.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.fingerprint import fingerprint
from curate.fsutil import read_json, write_json
from curate.paths import cache_dir
from curate.world import MAKE_ONE, TRAIN, WORLD_JSON, World, is_world, meta_path, split_dir

from .mini_clip import MEAN, STD, load_mini, load_split
from .publish import publish_folder

logger = logging.getLogger(__name__)
REPORT = "report.json"
DESCRIBE = "Describe this image."
# generic instruction words (the demo triplets' edit texts are made of them and the world's names)
INSTRUCTION_WORDS = ("make it instead of change the from to replace with into keep but rather than a an and "
                     "swap turn same colour color pattern state shape object image photo this that one word")


@dataclass
class DemoMllmConfig:
    vision_hidden: int = 128
    vision_layers: int = 2
    grid: int = 4                # image tokens per side: patch = the mini-CLIP's image_size // grid
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    min_count: int = 2           # a corpus word needs this many occurrences to get a token
    corpus_captions: int = 60_000
    distill_epochs: int = 6
    lm_epochs: int = 5           # passes over the train image rows (describe + one-word), a text batch beside each
    one_word: bool = True        # instruction data: image / caption + one-word prompt -> its word
    batch_size: int = 64
    lr: float = 2e-3
    max_seconds: float = 900.0   # safety net per phase on a busy machine
    threads: int = 2
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DemoMllmConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------
# tokenizer and model
# ------------------------------------------------------------------------------------------
def pre_tokenizer() -> Any:
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                    pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="isolated")])


def words_of(texts: list[str], min_count: int, always: list[str]) -> list[str]:
    """The vocabulary: words of ``texts`` seen ``min_count`` times (lower-cased) plus ``always``."""
    pre = pre_tokenizer()
    counts: Counter = Counter()
    for t in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(t.lower()))
    keep = {w for w, c in counts.items() if c >= min_count}
    for t in always:
        keep.update(w for w, _ in pre.pre_tokenize_str(t.lower()))
    return sorted(keep)


def make_tokenizer(words: list[str]) -> Any:
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    from ..cir.random_llava import CHAT_TEMPLATE, SPECIALS

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", additional_special_tokens=SPECIALS[4:], padding_side="left")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(cfg: DemoMllmConfig, image_size: int, tok: Any) -> Any:
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    if image_size % cfg.grid:
        raise CurateError(f"the mini-CLIP's image size {image_size} is not a multiple of grid {cfg.grid}")
    heads = max(1, cfg.heads)
    llava = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                                       num_hidden_layers=cfg.vision_layers, num_attention_heads=heads,
                                       image_size=image_size, patch_size=image_size // cfg.grid),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden,
                                num_hidden_layers=cfg.layers, num_attention_heads=heads, num_key_value_heads=heads,
                                max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                tie_word_embeddings=False),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=cfg.grid ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=False)
    torch.manual_seed(cfg.seed)
    return LlavaForConditionalGeneration(llava)


def make_processor(tok: Any, image_size: int, grid: int) -> Any:
    from transformers import CLIPImageProcessor, LlavaProcessor

    from ..cir.random_llava import CHAT_TEMPLATE

    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                                image_mean=[MEAN] * 3, image_std=[STD] * 3, resample=2)  # bilinear, as the mini-CLIP
    return LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=image_size // grid,
                          vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                          num_additional_image_tokens=1)


# ------------------------------------------------------------------------------------------
# phase 1: the vision tower imitates the mini-CLIP's CNN
# ------------------------------------------------------------------------------------------
def pixels(images: Any) -> Any:
    """uint8 [N, 3, S, S] -> the mini-CLIP's normalised input (what the image processor also gives)."""
    return (images.float() / 255.0 - MEAN) / STD


def teacher_targets(mini: Path, images: Any, grid: int, batch: int = 256) -> tuple[Any, Any]:
    """The mini-CLIP's image embeddings [N, D] and its feature map average-pooled to grid x grid [N, grid², C]."""
    import torch
    import torch.nn.functional as F

    enc = load_mini(f"mini:{mini}", mini, "cpu")
    pooled, tokens = [], []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            p, t = enc.tokens(pixels(images[i:i + batch]))
            side = int(round(t.shape[1] ** 0.5))
            fmap = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
            pooled.append(p)
            tokens.append(F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2))
    return torch.cat(pooled), torch.cat(tokens)


def distill_vision(model: Any, images: Any, mini: Path, cfg: DemoMllmConfig, run: Path) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ..loop import FitConfig, fit, index_batches

    pooled, tokens = teacher_targets(mini, images, cfg.grid)
    tower = model.model.vision_tower

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = tower
            self.tok_head = nn.Linear(cfg.vision_hidden, tokens.shape[2])
            self.cls_head = nn.Linear(cfg.vision_hidden, pooled.shape[1])

    student = Student()

    def loss(m: Any, idx: Any) -> tuple[Any, int]:
        h = m.tower(pixels(images[idx]), output_hidden_states=True).hidden_states[-1]
        tok = 1 - F.cosine_similarity(m.tok_head(h[:, 1:]), tokens[idx], dim=-1).mean()
        cls = 1 - F.cosine_similarity(m.cls_head(m.tower.vision_model.post_layernorm(h[:, 0])), pooled[idx]).mean()
        return tok + cls, len(idx)

    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches, steps = index_batches(images.shape[0], cfg.batch_size, gen)
    res = fit(student, opt, loss, batches, run,
              FitConfig(epochs=cfg.distill_epochs, seed=cfg.seed, device="cpu", resume=True,
                        max_seconds=cfg.max_seconds, desc="demo-mllm: vision tower"),
              generators={"sampler": gen}, steps_per_epoch=steps, what="the demo MLLM's vision tower")
    return phase_summary(res)



def phase_summary(res: Any) -> dict[str, Any]:
    return {"steps": res.steps, "seconds": round(res.seconds, 1), "stopped_by_time_limit": res.stopped_early,
            "first_loss": round(float(np.mean(res.first_losses)), 4) if res.first_losses else None,
            "last_loss": round(float(np.mean(res.last_losses)), 4) if res.last_losses else None,
            "epoch_losses": [h["loss"] for h in res.history]}


# ------------------------------------------------------------------------------------------
# phase 2: the language model (captions) and the projector (captioned images), LLaVA-style
# ------------------------------------------------------------------------------------------
def chat_head(tok: Any, text: str, n_image: int) -> list[int]:
    """Token ids of ``text`` as a user turn through the chat template (generation prompt added), after
    ``n_image`` image tokens when ``n_image`` > 0: the ids the MLLM embedder's prompts tokenise to."""
    content = ([{"type": "image"}] if n_image else []) + [{"type": "text", "text": text}]
    prompt = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return tok(prompt.replace("<image>", "<image>" * n_image), add_special_tokens=False)["input_ids"]


def answer_rows(tok: Any, head: list[int], answers: list[str]) -> list[tuple[list[int], list[int]]]:
    """``head`` + each answer ``ANSWER<|end|>``, loss on the answer only."""
    out = []
    for a in answers:
        answer = tok(a + "<|end|>", add_special_tokens=False)["input_ids"]
        out.append((head + answer, [-100] * len(head) + answer))
    return out


def encode_texts(tok: Any, captions: list[str], images: list[str], n_image: int) -> tuple[list, list]:
    """Token ids and labels: corpus captions (``<s> caption </s>``, loss on all) and captioned images
    (the chat prompt with ``n_image`` image tokens, loss on the answer ``caption<|end|>`` only)."""
    text = [[tok.bos_token_id, *tok(c, add_special_tokens=False)["input_ids"], tok.eos_token_id] for c in captions]
    return [(t, t) for t in text], answer_rows(tok, chat_head(tok, DESCRIBE, n_image), images)


def one_word_answers(attrs: list[str], objs: list[str]) -> list[tuple[int, str]]:
    """The one-word instruction data of the train images: (image row, answer) with the object's name
    and, where the image names one, its attribute (the world's truth of a train-split image)."""
    return [(i, w) for i, (a, o) in enumerate(zip(attrs, objs, strict=True)) for w in (o, a) if w]


def encode_instructions(tok: Any, captions: list[str], attrs: list[str], objs: list[str],
                        n_image: int) -> tuple[list, list, list[int]]:
    """What a real MLLM's instruction tuning gives (see the module docstring), from the train images:
    the image with InstructCIR's gallery prompt -> its object or attribute word, and its caption with
    the caption prompt -> the same words. Returns (image rows, caption rows, each image row's image)."""
    from ..cir.mllm import CAPTION_PROMPT, GALLERY_PROMPT

    pairs = one_word_answers(attrs, objs)
    image_rows = answer_rows(tok, chat_head(tok, GALLERY_PROMPT, n_image), [w for _, w in pairs])
    text_rows = [row for i, w in pairs
                 for row in answer_rows(tok, chat_head(tok, CAPTION_PROMPT.format(caption=captions[i]), 0), [w])]
    return image_rows, text_rows, [i for i, _ in pairs]


def pad_batch(rows: list[tuple[list[int], list[int]]], pad: int) -> dict[str, Any]:
    import torch

    n = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_language(model: Any, tok: Any, data: Any, corpus: list[str], cfg: DemoMllmConfig,
                   run: Path) -> dict[str, Any]:
    """Next-token loss, per step: a batch of image rows (describe -> caption; with ``cfg.one_word``
    also the gallery prompt -> object / attribute word) and as many text rows (corpus captions; with
    ``cfg.one_word`` half of them caption + caption prompt -> its word)."""
    import torch

    from ..loop import FitConfig, fit, index_batches

    n_image = cfg.grid ** 2
    text, mm = encode_texts(tok, corpus, data.captions, n_image)
    image_of = list(range(len(mm)))
    words: list = []
    if cfg.one_word:
        one_mm, words, which = encode_instructions(tok, data.captions, data.attrs, data.objs, n_image)
        mm, image_of = mm + one_mm, image_of + which
    model.model.vision_tower.requires_grad_(False)
    gen, text_gen = torch.Generator().manual_seed(cfg.seed + 1), torch.Generator().manual_seed(cfg.seed + 2)
    image_batches, steps = index_batches(len(mm), cfg.batch_size, gen)
    image_of_t = torch.tensor(image_of)

    def batches(epoch: int) -> Any:
        for idx in image_batches(epoch):
            n_words = len(idx) // 2 if words else 0
            yield (idx, torch.randint(len(text), (len(idx) - n_words,), generator=text_gen),
                   torch.randint(max(1, len(words)), (n_words,), generator=text_gen))

    def loss(m: Any, batch: Any) -> tuple[Any, int]:
        idx, tidx, widx = batch
        with_images = m(**pad_batch([mm[i] for i in idx.tolist()], tok.pad_token_id),
                        pixel_values=pixels(data.images[image_of_t[idx]]))
        rows = [text[i] for i in tidx.tolist()] + [words[i] for i in widx.tolist()]
        text_only = m(**pad_batch(rows, tok.pad_token_id))
        return with_images.loss + text_only.loss, len(idx)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)
    res = fit(model, opt, loss, batches, run,
              FitConfig(epochs=cfg.lm_epochs, seed=cfg.seed, device="cpu", resume=True,
                        max_seconds=cfg.max_seconds, desc="demo-mllm: language model"),
              generators={"sampler": gen, "corpus": text_gen}, steps_per_epoch=steps,
              what="the demo MLLM's language model")
    return {**phase_summary(res), "one_word_rows": {"split": TRAIN, "images": len(mm) - len(data.captions),
                                                    "captions": len(words)}}


def corpus_captions(world: Path, limit: int) -> list[str]:
    """Up to ``limit`` captions of the world's caption corpus (none when it has no corpus)."""
    import pyarrow.parquet as pq

    out: list[str] = []
    for part in World.load(world).caption_files():
        out += [c for c in pq.read_table(part, columns=["caption"]).column("caption").to_pylist() if c]
        if len(out) >= limit:
            break
    return out[:limit]


# ------------------------------------------------------------------------------------------
# build and cache
# ------------------------------------------------------------------------------------------
def build(world: Path, mini: Path, cfg: DemoMllmConfig, out: Path, run: Path) -> dict[str, Any]:
    """Build the demo MLLM into ``out`` (``run`` holds the phases' checkpoints: a killed build resumes)."""
    import torch

    from ..cir.mllm import CAPTION_PROMPT, GALLERY_PROMPT, QUERY_PROMPT
    from ..loop import seed_everything

    torch.set_num_threads(max(1, cfg.threads))
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    size = int(read_json(mini / "config.json")["image_size"])
    data = load_split(split_dir(world, TRAIN), size, "demo-mllm: load train")
    corpus = corpus_captions(world, cfg.corpus_captions) + data.captions
    w = World.load(world)
    names = [*w.objects, *w.attributes, *w.plurals.values(), QUERY_PROMPT, GALLERY_PROMPT, CAPTION_PROMPT,
             DESCRIBE, INSTRUCTION_WORDS]
    tok = make_tokenizer(words_of(corpus, cfg.min_count, names))
    model = make_model(cfg, size, tok)
    vision = distill_vision(model, data.images, mini, cfg, run / "vision")
    language = train_language(model, tok, data, corpus, cfg, run / "language")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    make_processor(tok, size, cfg.grid).save_pretrained(out)
    return {"mini_clip": str(mini.resolve()), "config": asdict(cfg), "train_images": int(data.images.shape[0]),
            "corpus_captions": len(corpus), "vocabulary": len(tok), "image_tokens": cfg.grid ** 2,
            "parameters": sum(p.numel() for p in model.parameters()), "vision": vision, "language": language,
            "seconds": round(time.perf_counter() - t0, 1)}


def cache_key(world: Path, mini: Path, cfg: DemoMllmConfig) -> str:
    what = {k: v for k, v in asdict(cfg).items() if k not in ("threads", "max_seconds")}  # not the weights
    return fingerprint(meta_path(world), mini / "model.safetensors", what)


def is_complete(folder: Path) -> bool:
    return (folder / REPORT).is_file() and (folder / "config.json").is_file()


def ensure_demo_mllm(world_dir: str | os.PathLike, config: DemoMllmConfig | None = None,
                     out: str | os.PathLike | None = None, mini: str | os.PathLike | None = None,
                     overwrite: bool = False) -> Path:
    """The demo MLLM folder for this world (built first if needed); ``mini``: the mini-CLIP folder
    (default: the world's cached demo mini-CLIP, trained if needed)."""
    from .mini_clip import ensure_mini_clip

    world = Path(world_dir)
    if not is_world(world):
        raise CurateError(f"not a demo world folder (no {WORLD_JSON})", where=str(world), fix=MAKE_ONE)
    cfg = config or DemoMllmConfig()
    mini_dir = Path(mini) if mini else ensure_mini_clip(world)
    if not (mini_dir / "model.safetensors").is_file():
        raise CurateError("not a mini-CLIP folder (no model.safetensors)", where=str(mini_dir),
                          fix="train one with `curate model train-mini --world DIR`")
    folder = Path(out) if out else cache_dir() / "demo-mllm" / cache_key(world, mini_dir, cfg)

    def build_into(tmp: Path, run: Path) -> None:
        logger.info("building the demo MLLM from %s and the mini-CLIP %s", world, mini_dir)
        report = build(world, mini_dir, cfg, tmp, run)
        report["model"] = f"hf:{folder.resolve()}"
        write_json(tmp / REPORT, report)

    if publish_folder(folder, build_into, is_complete=is_complete, overwrite=overwrite, refuse=_refuse):
        logger.info("demo MLLM ready: hf:%s", folder)
    return folder


def _refuse(folder: Path) -> None:
    raise CurateError("exists and is not a complete demo MLLM folder", where=str(folder),
                      fix="choose another --out or pass --overwrite")


def read_report(folder: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(folder) / REPORT)
