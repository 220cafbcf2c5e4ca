"""The demo mini-CLIP: a small CLIP trained on the demo world's common pairs in minutes on CPU.

Why it exists: with no network there are no pretrained CLIP weights, yet the toolkit's point
(models fail on *rare* attribute-object compositions) should be reproducible offline. This
model is trained only on captioned images of the world's common pairs (``WORLD/train``) and
then evaluated zero-shot on held-out common-pair images and on rare-pair images; the gap
between the two is the phenomenon the ImageNet-AO paper measures on real CLIPs.

- Image tower: a 4-stage CNN (conv-BN-ReLU, max-pooling) over 64 px inputs, average- and
  max-pooled, projected to the joint space. No augmentation: the world's images already vary.
- Text tower: a word-vocabulary bag of embeddings (mean) + MLP. Words never seen in the
  training captions are dropped, so the 80 ImageNet templates still work.
- Loss: symmetric InfoNCE with a learnable temperature and in-batch negatives; images of
  the same attribute-object pair in one batch are not pushed apart (multi-positive targets).

Saved as ``model.safetensors`` + ``config.json`` + ``vocab.json`` (+ ``report.json``), cached
under ``curate.paths.mini_clip_cache_dir()/<fingerprint of world.json + config>/`` so the
demo trains it once. Load it anywhere with the spec ``mini:FOLDER``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from curate.embed.backends import Encoder, apply_state
from curate.errors import CurateError
from curate.fsutil import read_json, write_json
from curate.images import DEFAULT_DECODE, decode_target, open_rgb
from curate.log import progress_bar
from curate.paths import mini_clip_cache_dir
from curate.shards import iter_shard, list_shards
from curate.world import MAKE_ONE, TRAIN, WORLD_JSON, identity, is_world, split_dir

from .publish import publish_folder

logger = logging.getLogger(__name__)
WORD = re.compile(r"[a-z]+")
MODEL_FILES = ("model.safetensors", "config.json", "vocab.json", "report.json")
MEAN, STD = 0.5, 0.25


@dataclass
class MiniClipConfig:
    image_size: int = 64
    width: int = 16          # channels of the first CNN stage (doubles per stage)
    word_dim: int = 128
    embed_dim: int = 128
    samples: int = 80_000    # images seen in training (~3 min on 2 cores); sets the epochs
    epochs: int = 0          # >0 overrides ``samples``
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_seconds: float = 600.0   # safety net on a busy machine; normally done in ~3 min on 2 free cores
    threads: int = 2
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MiniClipConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def tokenize(text: str) -> list[str]:
    return WORD.findall(text.lower())


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------
def build_model(cfg: MiniClipConfig, vocab_size: int):
    import torch
    from torch import nn

    def stage(cin: int, cout: int, pool: bool) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                   nn.ReLU(inplace=True)]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    class ImageTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = cfg.width
            self.stem = nn.Sequential(nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w),
                                      nn.ReLU(inplace=True))
            self.body = nn.Sequential(*stage(w, 2 * w, True), *stage(2 * w, 4 * w, True), *stage(4 * w, 8 * w, False))
            self.proj = nn.Linear(16 * w, cfg.embed_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.body(self.stem(x))
            return self.proj(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))

    class TextTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.EmbeddingBag(vocab_size, cfg.word_dim, mode="mean", padding_idx=0)
            self.mlp = nn.Sequential(nn.LayerNorm(cfg.word_dim), nn.Linear(cfg.word_dim, 2 * cfg.word_dim),
                                     nn.GELU(), nn.Linear(2 * cfg.word_dim, cfg.embed_dim))

        def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
            return self.mlp(self.emb(ids, offsets))

    class MiniClip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = ImageTower()
            self.text = TextTower()
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    return MiniClip()


class Vocab:
    def __init__(self, words: list[str]):
        self.words = ["<pad>"] + [w for w in words if w != "<pad>"]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_texts(cls, texts: list[str]) -> Vocab:
        return cls(sorted({w for t in texts for w in tokenize(t)}))

    def encode(self, texts: list[str]):
        """EmbeddingBag inputs: flat ids + offsets; unknown words dropped (empty -> <pad>)."""
        import torch

        ids, offsets = [], []
        for t in texts:
            offsets.append(len(ids))
            toks = [self.index[w] for w in tokenize(t) if w in self.index]
            ids.extend(toks or [0])
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


DECODE_MARGIN = 4  # a JPEG is decoded with its short side at least 4x the tower's input (MiniClipEncoder.decode_size)


def to_tensor(image: Any, size: int):
    """PIL image -> normalised float CHW tensor at ``size`` px (the tower's only preprocessing)."""
    import torch
    from PIL import Image

    im = image.convert("RGB").resize((size, size), Image.BILINEAR)
    arr = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
    return (arr.float() / 255.0 - MEAN) / STD


class MiniClipEncoder(Encoder):
    def __init__(self, spec: str, folder: Path, device: str):
        import torch
        from safetensors.torch import load_file

        for name in MODEL_FILES[:3]:
            if not (folder / name).is_file():
                raise CurateError(f"not a mini-CLIP folder (no {name})", where=str(folder),
                                  fix="train one with `curate model train-mini --world DIR`")
        self.cfg = MiniClipConfig.from_dict(read_json(folder / "config.json"))
        self.vocab = Vocab(read_json(folder / "vocab.json"))
        self.model = build_model(self.cfg, len(self.vocab.words))
        try:
            state = load_file(str(folder / "model.safetensors"))
        except Exception as e:  # noqa: BLE001 - truncated or foreign file
            raise CurateError(f"not a readable model file ({e})", where=str(folder / "model.safetensors"),
                              fix="retrain with `curate model train-mini --overwrite`") from e
        apply_state(self.model, state, folder / "model.safetensors", "the mini-CLIP config")
        self.model.eval().to(device)
        self.spec, self.device, self.dim = spec, device, self.cfg.embed_dim
        self._torch = torch

    def preprocess(self, image: Any) -> Any:
        return to_tensor(image, self.cfg.image_size)

    @property
    def decode_size(self) -> int:
        """:data:`DECODE_MARGIN` times ``image_size``: :func:`to_tensor` squashes the image to ``image_size`` with one
        bilinear resize, and a JPEG decoded at a DCT scale just above that size (a box filter) then
        resized almost 1:1 is another image to this small tower (512 px photos at 64 px: embedding
        cosine fast vs exact min 0.915 at 1x, 0.988 at 2x, 0.999 at 4x; bench/decode_accuracy.py)."""
        return DECODE_MARGIN * int(self.cfg.image_size)

    @property
    def image_mean(self) -> tuple[float, float, float]:
        """``MEAN``, what :func:`to_tensor` subtracts from every channel."""
        return MEAN, MEAN, MEAN

    def _forward_images(self, batch: Any) -> Any:
        return self.model.visual(batch)

    def _forward_texts(self, texts: list[str]) -> Any:
        ids, offsets = self.vocab.encode(texts)
        return self.model.text(ids.to(self.device), offsets.to(self.device))

    def tokens(self, batch: Any) -> tuple[Any, Any]:
        """The CNN's last spatial feature map as local tokens [B, H*W, C], its pooled embedding as global."""
        import torch

        visual = self.model.visual
        h = visual.body(visual.stem(batch.to(self.device)))
        pooled = visual.proj(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))
        return pooled, h.flatten(2).transpose(1, 2)


def load_mini(spec: str, folder: str | os.PathLike, device: str) -> MiniClipEncoder:
    """The ``mini:FOLDER`` backend (registered in ``curate.embed.backends.LOADERS``)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CurateError("mini-CLIP folder not found", where=str(folder),
                          fix="train one with `curate model train-mini --world DIR` (it prints the folder)")
    return MiniClipEncoder(spec, folder, device)


def save_model_files(folder: Path, model: Any, cfg: MiniClipConfig, vocab: Vocab) -> None:
    """``model.safetensors``, ``config.json`` and ``vocab.json`` of a mini-CLIP into ``folder`` (trained or not)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    write_json(folder / "config.json", {**asdict(cfg), "vocab_size": len(vocab.words), "kind": "curate-mini-clip"})
    write_json(folder / "vocab.json", vocab.words)


def save_random_mini(out: str | os.PathLike, words: list[str], config: MiniClipConfig | None = None,
                     seed: int = 0) -> str:
    """An untrained mini-CLIP (seeded random weights) saved as a real ``mini:`` folder; returns its spec.

    For tests and smoke runs that need a model of the demo's own kind without training one: it loads in
    the time of ``import torch`` (an open_clip model also imports transformers and torchvision, ~3x
    longer per process). ``words`` is its vocabulary (``tokenize``-d); words outside it are dropped from
    prompts, so give it the class names the run will prompt with."""
    import torch

    cfg = config or MiniClipConfig(image_size=32, width=8, word_dim=32, embed_dim=32, seed=seed)
    folder = Path(out)
    vocab = Vocab.from_texts(list(words))
    torch.manual_seed(seed)
    save_model_files(folder, build_model(cfg, len(vocab.words)), cfg, vocab)
    write_json(folder / "report.json", {"model": f"mini:{folder.resolve()}", "training": {"random": True, "seed": seed}})
    return f"mini:{folder.resolve()}"


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
@dataclass
class Split:
    images: Any            # uint8 tensor [N, 3, S, S]
    captions: list[str]
    attrs: list[str]
    objs: list[str]
    bad: int = 0


def load_split(folder: Path, size: int, desc: str, decode: str = DEFAULT_DECODE) -> Split:
    """Decode every KEY.jpg of a world split once (at a JPEG DCT scale that still covers
    ``DECODE_MARGIN * size`` unless ``decode`` is exact), resized to ``size`` (tiny: fits in RAM)."""
    import torch
    from PIL import Image

    imgs, caps, attrs, objs, bad = [], [], [], [], 0
    shards = list_shards(folder)
    with progress_bar(desc, total=len(shards), unit="shards") as advance:
        for shard in shards:
            for s in iter_shard(shard):
                meta = json.loads(s["json"]) if "json" in s else {}
                try:
                    im = open_rgb(s["jpg"], decode_target(DECODE_MARGIN * size, decode))
                    arr = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.uint8)
                except Exception:  # noqa: BLE001 - an undecodable sample is skipped, counted
                    bad += 1
                    continue
                imgs.append(arr)
                caption = s["txt"].decode("utf-8") if "txt" in s else meta.get("caption", "")
                caps.append(caption)
                attrs.append(meta.get("attr", ""))
                objs.append(meta.get("obj", ""))
            advance(1)
    if not imgs:
        raise CurateError("no decodable images", where=str(folder))
    tensor = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return Split(tensor, caps, attrs, objs, bad)


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
class CosineWarmup:
    """The mini-CLIP's learning rate: 50 warm-up steps, then a cosine to zero over ``total`` steps.

    A scheduler in ``fit()``'s sense (``step()`` after each optimizer step, ``state_dict()`` for
    checkpoints); the rate of step ``s`` is set before that step runs.
    """

    def __init__(self, optimizer: Any, lr: float, total: int):
        self.optimizer, self.lr, self.total, self.step_count = optimizer, lr, total, 0
        self._apply()

    def _apply(self) -> None:
        s = self.step_count
        lr = self.lr * min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * (s / self.total)))
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


def train(world: Path, cfg: MiniClipConfig, out: Path, run: Path | None = None) -> dict[str, Any]:
    """Train on ``world/train`` through ``training.loop.fit`` and save the model files into ``out``.

    ``run`` holds the per-epoch checkpoints: a killed training resumes there from the last
    epoch and ends with the same weights as an uninterrupted one.
    """
    import torch
    import torch.nn.functional as F

    from ..loop import FitConfig, fit, seed_everything

    torch.set_num_threads(max(1, cfg.threads))
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    data = load_split(split_dir(world, TRAIN), cfg.image_size, "mini-clip: load train")
    vocab = Vocab.from_texts(data.captions + class_words(world))
    model = build_model(cfg, len(vocab.words))
    # group id per sample: same attribute-object pair = positive (captions as fallback)
    labels = [f"{a}|{o}" if a or o else c for a, o, c in zip(data.attrs, data.objs, data.captions, strict=True)]
    group = torch.tensor([{g: i for i, g in enumerate(sorted(set(labels)))}[g] for g in labels])
    n = data.images.shape[0]
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    epochs = cfg.epochs or max(1, math.ceil(cfg.samples / (steps_per_epoch * bs)))
    decay = [p for name, p in model.named_parameters() if p.ndim > 1 and "emb" not in name]
    no_decay = [p for name, p in model.named_parameters() if not (p.ndim > 1 and "emb" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    schedule = CosineWarmup(opt, cfg.lr, steps_per_epoch * epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    load_s = time.perf_counter() - t0

    def batches(epoch: int):
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            yield perm[b * bs:(b + 1) * bs]

    def loss(model: Any, idx: Any) -> tuple[Any, int]:
        x = (data.images[idx].float() / 255.0 - MEAN) / STD
        ids, offsets = vocab.encode([data.captions[i] for i in idx.tolist()])
        img = F.normalize(model.visual(x), dim=-1)
        txt = F.normalize(model.text(ids, offsets), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        same = (group[idx][:, None] == group[idx][None, :]).float()
        target = same / same.sum(1, keepdim=True)
        value = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                       + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())
        return value, len(idx)

    run = run or out.with_name(f".{out.name}.run")
    res = fit(model, opt, loss, batches, run,
              FitConfig(epochs=epochs, seed=cfg.seed, device="cpu", resume=True, max_seconds=cfg.max_seconds,
                        desc="mini-clip: train"),
              scheduler=schedule, scheduler_per="step", generators={"sampler": gen},
              steps_per_epoch=steps_per_epoch, what="the mini-CLIP config")
    save_model_files(out, model, cfg, vocab)
    return {"train_images": n, "undecodable": data.bad, "steps": res.steps, "caption_nmi": caption_nmi(data),
            "epochs_done": round(res.steps / steps_per_epoch, 2), "stopped_by_time_limit": res.stopped_early,
            "load_seconds": round(load_s, 1), "train_seconds": round(res.seconds, 1),
            "first_loss": round(float(np.mean(res.first_losses)), 4) if res.first_losses else None,
            "final_loss": round(float(np.mean(res.last_losses)), 4) if res.last_losses else None,
            "images_per_second": round(res.steps * bs / max(res.seconds, 1e-9), 1)}


def caption_nmi(data: Split) -> float:
    """The attribute/object NMI (``curate.stats.nmi``) of the captions trained on: each names its image's
    one attribute and one object, so the pairs are the images' labels (images without both are left out)."""
    from curate.stats import cooccurrence, nmi

    return round(nmi(cooccurrence((a, o) for a, o in zip(data.attrs, data.objs, strict=True) if a and o)), 6)


def class_words(world: Path) -> list[str]:
    """Object and attribute names of the world's training images, so every class name has a word."""
    names: set[str] = set()
    for shard in list_shards(split_dir(world, TRAIN)):
        for s in iter_shard(shard, exts=("json",)):
            meta = json.loads(s["json"]) if "json" in s else {}
            names.update(str(meta[k]) for k in ("attr", "obj") if meta.get(k))
    return sorted(names)


def read_report(folder: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(folder) / "report.json")


# ------------------------------------------------------------------------------------------
# the cache
# ------------------------------------------------------------------------------------------
def fingerprint(world: Path, cfg: MiniClipConfig) -> str:
    h = hashlib.sha256(identity(world))
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    return h.hexdigest()[:16]


def is_complete(folder: Path) -> bool:
    return all((folder / n).is_file() for n in MODEL_FILES)


def ensure_mini_clip(world_dir: str | os.PathLike, config: MiniClipConfig | None = None,
                     out: str | os.PathLike | None = None, overwrite: bool = False, evaluate: bool = True) -> Path:
    """The trained mini-CLIP folder for this world (training and evaluating it first if needed; ``evaluate=False``
    skips the evaluation on the world's own heldout/rare sets: its report.json then holds the training only)."""
    world = Path(world_dir)
    if not is_world(world):
        raise CurateError(f"not a demo world folder (no {WORLD_JSON})", where=str(world), fix=MAKE_ONE)
    if not split_dir(world, TRAIN).is_dir():
        raise CurateError("the world has no train/ shards", where=str(world))
    cfg = config or MiniClipConfig()
    folder = Path(out) if out else mini_clip_cache_dir() / fingerprint(world, cfg)

    def train_into(tmp: Path, run: Path) -> None:
        logger.info("training the mini-CLIP on %s (at most %.0f s)", split_dir(world, TRAIN), cfg.max_seconds)
        from ..zeroshot import evaluate_world

        stats = train(world, cfg, tmp, run)
        report = evaluate_world(f"mini:{tmp}", world) if evaluate else {}
        report["model"] = f"mini:{folder.resolve()}"
        report["training"] = stats
        write_json(tmp / "report.json", report)

    # a second `make demo` waits for the first instead of training twice
    if publish_folder(folder, train_into, is_complete=is_complete, overwrite=overwrite, refuse=_refuse):
        logger.info("mini-CLIP ready: %s", folder)
    return folder


def _refuse(folder: Path) -> None:
    """An incomplete folder with a config.json is a mini-CLIP being rebuilt (replaced); anything else is not ours."""
    if not (folder / "config.json").exists():
        raise CurateError("exists and is not a mini-CLIP folder", where=str(folder),
                          fix="choose another --out or pass --overwrite")
