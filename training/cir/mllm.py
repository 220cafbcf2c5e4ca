"""The InstructCIR-style MLLM embedder: a local LLaVA-style transformers folder as a CIR model.

Follows zhwl2117/InstructCIR (evaluation code; its training code is not public) and arXiv
2412.05756: a query is the reference image with the prompt ``<image>Modify this image with
"{edit}", describe modified image in one word:``, a gallery item the image with ``<image>\\n
Describe this image in one word:``, each put through the model's chat template (generation
prompt added), padded on the left so the last position is the last real token; the embedding is
the last layer's hidden state there, L2-normalised. Training is InfoNCE at temperature 0.05 with
in-batch negatives, in two stages through ``training.loop.fit``:

1. ``--stage1 SHARDS``: image-caption alignment on captioned shards (``KEY.jpg`` + ``KEY.txt`` or a
   ``caption`` in ``KEY.json``): the image (gallery prompt) against its caption with the text
   prompt ``{caption}\\n Describe this sentence in one word:`` (our choice, the paper's
   "joint embedding space" stage);
2. our triplet shards (``shards/train-*.tar``: ``ref.jpg``, ``tgt.jpg``, ``json``): query against target.

What trains (``--tune``): ``last:N`` (the last N decoder layers and the final norm), ``projector``
(the multimodal projector), ``all`` (language model + projector; the vision tower stays frozen) or
``lora`` (peft LoRA on the attention projections, when peft is installed). Checkpoints hold only
the trained parameters, so a 4B model's checkpoint is the size of what was tuned. On CUDA the
model loads in bf16 (trained parameters kept fp32 for Adam; fit() autocasts to bf16) and
``--grad-checkpointing`` trades compute for memory.

Load any LLaVA-style checkpoint saved with ``save_pretrained`` (``LlavaForConditionalGeneration``
+ ``AutoProcessor``, e.g. llava-hf/llava-1.5-7b-hf or a Phi-3.5 LLaVA converted to that class):
``--mllm hf:/path/to/folder``. :mod:`training.cir.random_llava` writes a tiny random one for
offline runs, whose numbers mean nothing.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.errors import CurateError
from curate.executor import worker_init
from curate.fsutil import write_json
from curate.images import DEFAULT_DECODE, decode_target

from .data import Split
from .evaluate import SELECT, Retriever, evaluate_split, query_text, val_metrics

log = logging.getLogger(__name__)

QUERY_PROMPT = 'Modify this image with "{edit}", describe modified image in one word:'
GALLERY_PROMPT = "\n Describe this image in one word:"
CAPTION_PROMPT = "{caption}\n Describe this sentence in one word:"
TEMPERATURE = 0.05
MLLM_LR = 2e-5
EMBED_BATCH = 16


def mllm_folder(spec: str) -> Path:
    path = Path(spec[3:] if spec.startswith("hf:") else spec)
    if not (path / "config.json").exists():
        raise CurateError("not a transformers model folder (no config.json)", where=str(path),
                          fix="pass --mllm hf:/path/to/a LLaVA-style folder saved with save_pretrained")
    return path


def check_processor(processor: Any, config: Any, folder: Path) -> None:
    """The prompts need a chat template and an image token the model knows: one error naming what is missing."""
    tok = getattr(processor, "tokenizer", processor)
    missing = []
    if not (getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)):
        missing.append("a chat template (chat_template.jinja, or 'chat_template' in the processor or tokenizer config)")
    image_token = getattr(processor, "image_token", None) or "<image>"
    token_id = tok.convert_tokens_to_ids(image_token) if hasattr(tok, "convert_tokens_to_ids") else None
    want = getattr(config, "image_token_id", getattr(config, "image_token_index", None))
    if token_id is None or token_id == tok.unk_token_id or (want is not None and token_id != want):
        missing.append(f"an image token ({image_token!r} is not in the tokenizer's vocabulary as the model's "
                       f"image_token_index {want})")
    if missing:
        raise CurateError("the MLLM folder lacks " + " and ".join(missing), where=str(folder),
                          fix="save the model's LlavaProcessor (tokenizer with its image token and chat template) "
                              "beside the weights with save_pretrained")


@dataclass
class TuneSpec:
    kind: str   # last | projector | all | lora
    layers: int = 0

    @classmethod
    def parse(cls, text: str) -> TuneSpec:
        kind, _, n = text.partition(":")
        if kind == "last" and n.isdigit() and int(n) > 0:
            return cls("last", int(n))
        if kind in ("projector", "all", "lora") and not n:
            return cls(kind)
        raise CurateError(f"unknown --tune {text!r}", fix="use last:N (e.g. last:2), projector, all or lora")


class MllmEmbedder(nn.Module):
    """A LLaVA-style model as a retrieval embedder (see the module docstring)."""

    def __init__(self, folder: str | Path, device: str = "cpu", tune: str = "last:2", dtype: Any = None,
                 grad_checkpointing: bool = False, temperature: float = TEMPERATURE):
        super().__init__()
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.folder = mllm_folder(str(folder))
        try:
            self.processor = AutoProcessor.from_pretrained(self.folder, use_fast=False)  # as saved
            model = LlavaForConditionalGeneration.from_pretrained(self.folder, dtype=dtype or torch.float32)
        except (OSError, ValueError, KeyError) as e:
            raise CurateError(f"cannot load a LLaVA-style model ({type(e).__name__}: {str(e)[:200]})",
                              where=str(self.folder),
                              fix="the folder needs LlavaForConditionalGeneration weights + a processor "
                                  "(tokenizer with <image>, image processor), saved with save_pretrained") from e
        check_processor(self.processor, model.config, self.folder)
        self.processor.tokenizer.padding_side = "left"
        self.temperature = temperature
        self.tune = TuneSpec.parse(tune)
        self.model = _apply_tune(model, self.tune)
        if grad_checkpointing:
            self.model.gradient_checkpointing_enable()
            self.model.config.use_cache = False
        self.to(device)

    # -- prompts -------------------------------------------------------------------------------
    def prompt(self, text: str, image: bool) -> str:
        """``text`` after an image placeholder (when ``image``), through the model's chat template."""
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def query_prompt(self, edit: str) -> str:
        return self.prompt(QUERY_PROMPT.format(edit=edit), image=True)

    def gallery_prompt(self) -> str:
        return self.prompt(GALLERY_PROMPT, image=True)

    def caption_prompt(self, caption: str) -> str:
        return self.prompt(CAPTION_PROMPT.format(caption=caption), image=False)

    @property
    def decode_size(self) -> int | None:
        """The short side a decoded image must keep for the image processor's resize (its ``shortest_edge``,
        or the larger of ``height`` / ``width``): JPEGs decode at a DCT scale covering it (None: unknown)."""
        size = getattr(getattr(self.processor, "image_processor", None), "size", None)
        if isinstance(size, int):
            return size
        get = getattr(size, "get", None)
        side = (get("shortest_edge") or max(get("height") or 0, get("width") or 0)) if get else 0
        return int(side) or None

    # -- embedding -----------------------------------------------------------------------------
    def inputs(self, images: list[Any] | None, prompts: list[str]) -> dict[str, Any]:
        enc = self.processor(images=images or None, text=prompts, return_tensors="pt", padding=True)
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "pixel_values")}

    def embed_inputs(self, inputs: dict[str, Any]) -> torch.Tensor:
        device = next(self.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        out = self.model(**inputs, output_hidden_states=True, use_cache=False)
        return F.normalize(out.hidden_states[-1][:, -1, :].float(), dim=-1)

    def forward(self, query: dict[str, Any], target: dict[str, Any]) -> torch.Tensor:
        """InfoNCE logits of every query against every target in the batch (temperature 0.05 by default)."""
        return self.embed_inputs(query) @ self.embed_inputs(target).T / self.temperature

    @torch.no_grad()
    def embed(self, images: list[Any] | None, prompts: list[str]) -> np.ndarray:
        was = self.training
        self.eval()
        try:
            return self.embed_inputs(self.inputs(images, prompts)).cpu().numpy()
        finally:
            self.train(was)

    # -- checkpoints hold the trained parameters only -------------------------------------------
    def trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        keep = self.trainable_names()
        return OrderedDict((k, v) for k, v in super().state_dict(*args, **kwargs).items() if k in keep)

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        keep = self.trainable_names()
        if strict and set(state) != keep:
            raise RuntimeError(f"trained parameters differ: missing {sorted(keep - set(state))[:3]}, "
                               f"unexpected {sorted(set(state) - keep)[:3]}")
        return super().load_state_dict(state, strict=False, assign=assign)


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.endswith("layers") and "language_model" in name:
            return name, mod
    raise CurateError("cannot find the language model's decoder layers", fix="use --tune projector, all or lora")


def _apply_tune(model: nn.Module, tune: TuneSpec) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    if tune.kind == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as e:
            raise CurateError("--tune lora needs the peft package", fix="pip install peft, or use --tune last:N") from e
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                 target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    elif tune.kind == "last":
        name, layers = _decoder_layers(model)
        for layer in list(layers)[-tune.layers:]:
            layer.requires_grad_(True)
        norm = model.get_submodule(name.rsplit(".", 1)[0]).get_submodule("norm") if "." in name else None
        if norm is not None:
            norm.requires_grad_(True)
    elif tune.kind in ("projector", "all"):
        for name, mod in model.named_modules():
            if name.endswith("multi_modal_projector") or (tune.kind == "all" and name.endswith("language_model")):
                mod.requires_grad_(True)
    trained = [p for p in model.parameters() if p.requires_grad]
    if not trained:
        raise CurateError(f"--tune {tune.kind} selects no parameters of this model", fix="use another --tune")
    for p in trained:
        p.data = p.data.float()  # Adam state in fp32 even when the model loads in bf16
    return model


# -- data ---------------------------------------------------------------------------------------
def _image(data: bytes, size: int | None = None) -> Any:
    """``curate.images.open_rgb``: a JPEG decodes at the DCT scale that still covers ``size``."""
    from curate.images import open_rgb

    return open_rgb(data, size)


def decode_captioned(sample: dict[str, Any], size: int | None = None) -> tuple[Any, str] | None:
    """Stage 1: (image, caption) from ``KEY.jpg`` + ``KEY.txt`` / ``KEY.json["caption"]``; None skips."""
    from curate.shards import image_of

    img = image_of(sample)
    caption = sample.get("txt", b"").decode("utf-8", "replace").strip() if sample.get("txt") else ""
    if not caption and sample.get("json"):
        try:
            caption = str(json.loads(sample["json"]).get("caption") or "")
        except ValueError:
            caption = ""
    if not img or not caption:
        return None
    try:
        return _image(img[1], size), caption
    except OSError:
        return None


def decode_triplet(sample: dict[str, Any], size: int | None = None) -> tuple[Any, Any, str] | None:
    """Stage 2: (reference image, target image, edit text) from a triplet shard sample; None skips."""
    try:
        meta = json.loads(sample["json"])
        if meta.get("reference") == meta.get("target"):
            return None
        return _image(sample["ref.jpg"], size), _image(sample["tgt.jpg"], size), str(meta["edit_text"])
    except (KeyError, ValueError, OSError):
        return None


def make_batches(emb: MllmEmbedder, dataset: Any, stage: int, batch_size: int, steps: int | None, device: str):
    """``batches(epoch)`` for fit over a ShardDataset; the processor runs in the DataLoader workers."""
    from torch.utils.data import DataLoader

    cuda = device.startswith("cuda")

    def collate(items: list[tuple]) -> tuple[dict[str, Any], dict[str, Any]]:
        if stage == 1:
            images = [im for im, _ in items]
            return (emb.inputs(images, [emb.gallery_prompt()] * len(items)),
                    emb.inputs(None, [emb.caption_prompt(c) for _, c in items]))
        return (emb.inputs([r for r, _, _ in items], [emb.query_prompt(t) for _, _, t in items]),
                emb.inputs([t for _, t, _ in items], [emb.gallery_prompt()] * len(items)))

    def batches(epoch: int) -> Iterator[Any]:
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=2 if cuda else 0,
                            pin_memory=cuda, drop_last=True, worker_init_fn=worker_init())
        for i, batch in enumerate(loader):
            if steps is not None and i >= steps:
                break
            yield batch

    return batches


def mllm_loss(model: Any, batch: tuple[dict[str, Any], dict[str, Any]]) -> tuple[Any, int]:
    logits = model(*batch)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels), int(logits.shape[0])


# -- retrieval ----------------------------------------------------------------------------------
class MllmRetriever(Retriever):
    label = "MLLM embedder"

    def __init__(self, emb: MllmEmbedder, batch: int = EMBED_BATCH, decode: str = DEFAULT_DECODE):
        self.emb = emb
        self.batch = batch
        self.size = decode_target(emb.decode_size, decode)  # what images decode at (--decode)

    @classmethod
    def from_run(cls, run: Path, info: dict[str, Any], device: str, decode: str = DEFAULT_DECODE) -> MllmRetriever:
        from training.loop import MODEL_FILE, latest_checkpoint, load_model_weights

        emb = MllmEmbedder(info["mllm"], device, info["tune"], dtype=_dtype(device, "auto"))
        stage = run / info.get("weights", "stage2")
        best = stage / "best" / MODEL_FILE
        latest = latest_checkpoint(stage)
        path = best if best.exists() else (latest / MODEL_FILE if latest else None)
        if path is None:
            raise CurateError("the MLLM run has no trained weights", where=str(stage), fix="train or --resume it")
        load_model_weights(emb, path, what=f"the MLLM embedder of {info['mllm']} (--tune {info['tune']})")
        return cls(emb, decode=decode)

    def encode(self, split: Split) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        gallery_names = list(dict.fromkeys([*split.index, *(n for q in split.queries for n in q.gallery)]))
        feats = self._images(gallery_names, split)
        rows = self._queries(split)  # query position -> vector, for the references that have an image
        by_query = {id(split.queries[i]): v for i, v in rows.items()}
        split.restrict(set(feats) | {split.queries[i].reference for i in rows})
        dim = next(iter(feats.values())).shape[0] if feats else 0
        qv = np.stack([by_query[id(q)] for q in split.queries]) if split.queries else np.zeros((0, dim), np.float32)
        return qv, feats

    def _images(self, names: list[str], split: Split) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        chunk: list[tuple[str, Any]] = []
        for item in split.images.load(names, self.size):
            chunk.append(item)
            if len(chunk) == self.batch:
                out.update(self._embed_gallery(chunk))
                chunk = []
        if chunk:
            out.update(self._embed_gallery(chunk))
        return out

    def _embed_gallery(self, chunk: list[tuple[str, Any]]) -> dict[str, np.ndarray]:
        vecs = self.emb.embed([im for _, im in chunk], [self.emb.gallery_prompt()] * len(chunk))
        return {n: v for (n, _), v in zip(chunk, vecs, strict=True)}

    def _queries(self, split: Split) -> dict[int, np.ndarray]:
        by_ref: dict[str, list[int]] = {}
        for i, q in enumerate(split.queries):
            by_ref.setdefault(q.reference, []).append(i)
        rows: dict[int, np.ndarray] = {}
        pending: list[tuple[int, Any]] = []
        for name, img in split.images.load(list(by_ref), self.size):
            pending += [(i, img) for i in by_ref[name]]
            while len(pending) >= self.batch:
                rows.update(self._embed_queries(pending[:self.batch], split))
                pending = pending[self.batch:]
        if pending:
            rows.update(self._embed_queries(pending, split))
        return rows

    def _embed_queries(self, items: list[tuple[int, Any]], split: Split) -> dict[int, np.ndarray]:
        prompts = [self.emb.query_prompt(query_text(split, split.queries[i])) for i, _ in items]
        vecs = self.emb.embed([im for _, im in items], prompts)
        return {i: v for (i, _), v in zip(items, vecs, strict=True)}


# -- training -----------------------------------------------------------------------------------
def _dtype(device: str, precision: str) -> Any:
    if not device.startswith("cuda") or precision == "fp32":
        return torch.float32
    return torch.float16 if precision == "fp16" else torch.bfloat16


def train_mllm(cfg: Any, opts: Any, out: Path) -> dict[str, Any]:
    from curate.options import resolve_device
    from training.data import ShardDataset
    from training.loop import init_distributed

    from .data import about_data, folder_splits, read_ours
    from .report import fit_summary, write_report

    folder = Path(cfg.triplets)
    device = resolve_device(opts.device)
    dist = init_distributed(device)
    if dist.world_size > 1 and device.startswith("cuda"):
        device = f"cuda:{dist.local_rank}"
    emb = MllmEmbedder(cfg.mllm, device, cfg.tune, dtype=_dtype(device, opts.precision),
                       grad_checkpointing=cfg.grad_checkpointing, temperature=cfg.temperature)
    info = {"model": "mllm", "mllm": str(emb.folder.resolve()), "tune": cfg.tune, "weights": "stage2",
            "triplets": str(folder.resolve()), "trained_parameters": sum(p.numel() for p in emb.parameters()
                                                                       if p.requires_grad)}
    if dist.main:
        write_json(out / "run.json", info)
    training: dict[str, Any] = {}
    size = decode_target(emb.decode_size, cfg.decode)  # JPEGs decode near the processor's size (--decode)
    if cfg.stage1:
        ds1 = ShardDataset(cfg.stage1, decode=partial(decode_captioned, size=size), shuffle=256, seed=cfg.seed)
        res1 = _fit_stage(emb, make_batches(emb, ds1, 1, cfg.batch_size, cfg.steps, device), out / "stage1",
                          cfg, opts, device, cfg.stage1_epochs, None, "stage 1 (image-caption)")
        training["stage1"] = fit_summary(res1)
    shards = sorted((folder / "shards").glob("train-*.tar"))
    if not shards:
        raise CurateError("no triplet shards (shards/train-*.tar)", where=str(folder),
                          fix="export them: curate triplets ... --format shards,...")
    ds2 = ShardDataset(shards, decode=partial(decode_triplet, size=size), shuffle=256, seed=cfg.seed)
    val = read_ours(folder, cfg.val_split, cfg.include_rejected)

    def evaluate(model: Any, epoch: int) -> dict[str, Any]:
        return val_metrics(evaluate_split(MllmRetriever(getattr(model, "module", model), decode=cfg.decode), val))

    res2 = _fit_stage(emb, make_batches(emb, ds2, 2, cfg.batch_size, cfg.steps, device), out / "stage2", cfg, opts,
                      device, cfg.epochs, evaluate if val.queries else None, "stage 2 (triplets)")
    training.update(fit_summary(res2))
    if not dist.main:
        return {}
    best = MllmRetriever.from_run(out, info, device, cfg.decode)
    results = {"run": info, "training": training, "seed": cfg.seed, "data": about_data(folder),
               "test": {"MLLM embedder": {}}}
    for split in folder_splits(folder, cfg.test_split, cfg.include_rejected):
        sub = out / "eval" / f"{split.format}-{split.split}"
        results["test"]["MLLM embedder"][split.name] = evaluate_split(best, split, sub).to_dict()
    write_json(out / "results.json", results)
    write_report(out, results)
    return results


def _fit_stage(emb: MllmEmbedder, batches: Any, run: Path, cfg: Any, opts: Any, device: str, epochs: int,
               evaluate: Any, desc: str) -> Any:
    from training.loop import FitConfig, fit

    optimizer = torch.optim.AdamW([p for p in emb.parameters() if p.requires_grad], lr=cfg.lr or MLLM_LR,
                                  weight_decay=cfg.weight_decay)
    fc = FitConfig(epochs=epochs, seed=cfg.seed, device=device, precision=opts.precision, resume=opts.resume,
                   max_seconds=opts.max_seconds, select=SELECT if evaluate else None, desc=desc, unit="pairs")
    return fit(emb, optimizer, mllm_loss, batches, run, fc, evaluate=evaluate, steps_per_epoch=cfg.steps,
               what=f"the MLLM embedder (--tune {cfg.tune})")
