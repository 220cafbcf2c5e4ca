"""Embedding models behind one interface: images and texts in, L2-normalised float32 rows out.

A model is named by a *spec* string, so every command, config file and index folder can
remember which model made its vectors::

    open_clip:ARCH/PRETRAINED        a named open_clip checkpoint (must be in the local cache)
    open_clip:ARCH//path/ckpt.pt     an open_clip architecture + a local checkpoint file
    hf:/path/to/CLIPModel-folder     a transformers CLIPModel saved with save_pretrained
    mini:PATH                        the demo mini-CLIP (``curate model train-mini``)

``load_model(spec)`` parses the spec and returns an :class:`Encoder`; ``cached_model``
keeps one instance per process so executor workers load a model once, not once per shard.
Checkpoints are read with safetensors or ``torch.load(weights_only=True)``: never pickles.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CurateError
from ..images import DEFAULT_DECODE, decode_target, open_rgb
from ..log import progress_bar

logger = logging.getLogger(__name__)

SPEC_FORMS = (
    ("open_clip:ARCH/PRETRAINED", "open_clip model with a named pretrained tag, already in the local cache "
                                  "(e.g. open_clip:ViT-B-32/laion2b_s34b_b79k)"),
    ("open_clip:ARCH//path/to/checkpoint.pt", "open_clip architecture + local checkpoint (.pt/.bin/.safetensors); "
                                              "a custom ARCH may sit beside it as ARCH.json"),
    ("hf:/path/to/CLIPModel-folder", "transformers CLIPModel folder (config.json, weights, tokenizer, "
                                     "preprocessor_config.json)"),
    ("mini:PATH", "the demo mini-CLIP folder made by `curate model train-mini`"),
)


def spec_forms_text() -> str:
    return "; ".join(form for form, _ in SPEC_FORMS)


class Encoder(ABC):
    """Base class: subclasses provide preprocessing, its normalisation mean and the two forward passes."""

    spec: str = ""
    dim: int = 0
    device: str = "cpu"

    # -- to implement --------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, image: Any) -> Any:
        """One PIL image -> a CHW float tensor ready for the image tower."""

    @property
    @abstractmethod
    def image_mean(self) -> tuple[float, float, float]:
        """The per-channel RGB mean (0-1) that :meth:`preprocess` subtracts: the model's "no
        image" colour, read from the preprocessing where it says it."""

    @abstractmethod
    def _forward_images(self, batch: Any) -> Any:
        """[B, C, H, W] tensor on the device -> unnormalised [B, D] image features."""

    @abstractmethod
    def _forward_texts(self, texts: list[str]) -> Any:
        """Texts -> unnormalised [B, D] text features."""

    def tokens(self, batch: Any) -> tuple[Any, Any]:
        """A preprocessed [B, C, H, W] batch -> ``(global [B, Dg], local [B, T, Dl])`` float tensors.

        The frozen image tower's token features, as LLaVA and TRIDENT read a CLIP ViT: the
        penultimate layer's hidden states, the CLS token as the global feature and the patch
        tokens as the local ones. Backends without tokens say so.
        """
        raise CurateError(f"{type(self).__name__} ({self.spec}) has no token features",
                          fix="use a ViT backbone: open_clip:ViT-*, hf:CLIP folder, or mini:PATH")

    @property
    def decode_size(self) -> int | None:
        """The least shortest side an image needs for :meth:`preprocess` to only shrink it (its
        resize size), read from the preprocessing; None when it cannot say (full-size decode)."""
        return None

    # -- shared ----------------------------------------------------------------------------
    def open_image(self, data: bytes, decode: str = DEFAULT_DECODE, fit: str = "short") -> Any:
        """Image bytes -> the RGB PIL image :meth:`preprocess` wants, decoded at the smallest JPEG
        DCT scale that still covers :attr:`decode_size` (``decode="exact"``: at full size; see
        :func:`curate.images.open_rgb`). ``fit="long"`` when the image is padded to a square first."""
        return open_rgb(data, decode_target(self.decode_size, decode), fit)

    def pixels(self, data: bytes, decode: str = DEFAULT_DECODE) -> Any:
        """Image bytes -> the CHW tensor of :meth:`preprocess` (decoded by :meth:`open_image`)."""
        return self.preprocess(self.open_image(data, decode))

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """The colour to pad an image to a square with before :meth:`preprocess`: the model's mean
        (LLaVA's and TRIDENT's ``expand2square`` with ``image_processor.image_mean``), 0-255."""
        r, g, b = (int(255 * c) for c in self.image_mean)
        return r, g, b

    def image_features(self, batch: Any, precision: str = "fp32") -> Any:
        """A stacked [B, C, H, W] batch -> unnormalised float32 [B, D] features, left on the device.

        The input is copied without blocking (it overlaps the previous batch's kernels when it
        sits in pinned memory); ``precision`` fp16/bf16 runs the forward pass under autocast,
        fp32 runs it as is (the CPU default: outputs unchanged).
        """
        import torch

        with torch.inference_mode(), autocast(self.device, precision):
            out = self._forward_images(batch.to(self.device, non_blocking=True))
        return out.float()

    def encode_image_tensors(self, batch: Any, precision: str = "fp32") -> np.ndarray:
        """A stacked [B, C, H, W] batch -> L2-normalised float32 [B, D]."""
        return _normalise(self.image_features(batch, precision))

    def encode_images(self, images: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """PIL images -> float32 [B, D], L2-normalised, ``batch_size`` at a time."""
        import torch

        def run(chunk: Sequence[Any]) -> np.ndarray:
            rgb = [im.convert("RGB") if getattr(im, "mode", "RGB") != "RGB" else im for im in chunk]
            return self.encode_image_tensors(torch.stack([self.preprocess(im) for im in rgb]))

        return self._batched(list(images), batch_size, run, "encode images" if progress else None)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False,
                     precision: str = "fp32") -> np.ndarray:
        """Strings -> float32 [B, D], L2-normalised (``precision`` as in :meth:`image_features`)."""
        import torch

        def run(chunk: Sequence[str]) -> np.ndarray:
            with torch.inference_mode(), autocast(self.device, precision):
                return _normalise(self._forward_texts(list(chunk)))

        return self._batched(list(texts), batch_size, run, "encode texts" if progress else None)

    def _batched(self, items: list, batch_size: int, fn: Callable[[Sequence], np.ndarray],
                 desc: str | None) -> np.ndarray:
        if batch_size < 1:
            raise CurateError(f"batch size must be at least 1, got {batch_size}")
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        n_batches = (len(items) + batch_size - 1) // batch_size
        with progress_bar(desc or "encode", total=n_batches if desc else 0, unit="batches") as advance:
            for i in range(0, len(items), batch_size):
                parts.append(fn(items[i:i + batch_size]))
                if desc:
                    advance(1)
        return np.concatenate(parts).astype(np.float32, copy=False)


def _normalise(t: Any) -> np.ndarray:
    from .store import l2_normalise

    return l2_normalise(t.detach().float().cpu().numpy())


# ------------------------------------------------------------------------------------------
# precision
# ------------------------------------------------------------------------------------------
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: fp16 autocast on CUDA (CLIP models are trained with fp16 mixed precision, and fp16
    keeps 3 more mantissa bits than bf16), fp32 anywhere else; other values are kept as given."""
    if precision not in PRECISIONS:
        raise CurateError(f"unknown precision {precision!r}", fix=f"use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if str(device).startswith("cuda") else "fp32"
    return precision


def autocast(device: str, precision: str) -> Any:
    """The autocast context of ``precision`` on ``device`` (none for fp32: the plain forward pass)."""
    import contextlib

    import torch

    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    return torch.autocast(device_type=torch.device(device).type, dtype=dtypes[precision])


# ------------------------------------------------------------------------------------------
# checkpoint files
# ------------------------------------------------------------------------------------------
def load_state_file(path: Path) -> dict[str, Any]:
    """A state dict from .safetensors or a torch file (``weights_only=True``), with clear errors."""
    import torch

    if not path.is_file():
        raise CurateError("checkpoint file not found", where=str(path), fix="check the path in the model spec")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a readable checkpoint"
        raise CurateError(
            f"not a readable model checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
            where=str(path),
            fix="the file may be truncated or not a weights file; re-save it with torch.save(model.state_dict()) "
                "or safetensors",
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise CurateError("checkpoint holds no tensor state dict", where=str(path),
                          fix="save the model's state_dict(), not another object")
    return {k.removeprefix("module."): v for k, v in state.items()}


def apply_state(model: Any, state: dict[str, Any], path: Path, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).split("\n\t")[1][:200] if "\n\t" in str(e) else str(e)[:200]
        raise CurateError(f"checkpoint does not fit {what} ({first})", where=str(path),
                          fix=f"use the architecture the checkpoint was trained with; valid specs: {spec_forms_text()}") from e


# ------------------------------------------------------------------------------------------
# open_clip
# ------------------------------------------------------------------------------------------
class OpenClipEncoder(Encoder):
    def __init__(self, spec: str, model: Any, preprocess: Callable, tokenizer: Callable, device: str):
        self.spec = spec
        self.model = model.eval().to(device)
        self.transform = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.dim = int(_open_clip_dim(model))

    def preprocess(self, image: Any) -> Any:
        return self.transform(image)

    @property
    def decode_size(self) -> int | None:
        """The size of the transform's ``Resize`` (shortest side; the larger of an ``(h, w)``)."""
        return resize_size(self.transform)

    @property
    def image_mean(self) -> tuple[float, float, float]:
        """The mean of the transform's ``Normalize`` (else the model's ``visual.image_mean``, else
        open_clip's own default, the OpenAI CLIP mean)."""
        for t in getattr(self.transform, "transforms", [self.transform]):
            if type(t).__name__ == "Normalize" and hasattr(t, "mean"):
                return _rgb(t.mean)
        mean = getattr(getattr(self.model, "visual", None), "image_mean", None)
        if mean is not None:
            return _rgb(mean)
        from open_clip.constants import OPENAI_DATASET_MEAN

        return _rgb(OPENAI_DATASET_MEAN)

    def _forward_images(self, batch: Any) -> Any:
        return self.model.encode_image(batch)

    def _forward_texts(self, texts: list[str]) -> Any:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def tokens(self, batch: Any) -> tuple[Any, Any]:
        """Penultimate-layer hidden states: the input of the last residual block, caught by a hook
        that stops the forward pass there (the last block and the head are never run)."""
        import torch

        visual = self.model.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if not blocks:
            raise CurateError(f"{self.spec}: token features need a ViT image tower, this one is "
                              f"{type(visual).__name__}", fix="use an open_clip ViT architecture")
        caught: dict[str, Any] = {}

        def stop(_module: Any, args: tuple) -> None:
            caught["x"] = args[0]
            raise _Stop

        handle = blocks[-1].register_forward_pre_hook(stop)
        try:
            with torch.no_grad():
                visual(batch.to(self.device))
        except _Stop:
            pass
        finally:
            handle.remove()
        x = caught["x"]
        if not getattr(visual.transformer, "batch_first", True):
            x = x.transpose(0, 1)
        if getattr(visual, "class_embedding", None) is None:  # no CLS token (e.g. SigLIP): mean as global
            return x.mean(1), x
        return x[:, 0], x[:, 1:]


def resize_size(transform: Any) -> int | None:
    """The shortest side a torchvision-style transform's first ``Resize`` needs: its ``size``
    (an int: the shortest side; an ``(h, w)``: both sides, so the larger). None when a crop, pad
    or other resize comes first, or there is none: such a transform decodes at full size."""
    for t in getattr(transform, "transforms", [transform]):
        name = type(t).__name__
        if name == "Resize":
            size = t.size
            if getattr(t, "max_size", None) is not None:
                return None
            if isinstance(size, int):
                return size
            if isinstance(size, list | tuple) and 1 <= len(size) <= 2 and all(isinstance(v, int) for v in size):
                return max(size)
            return None
        if "Crop" in name or "Resize" in name or "Pad" in name or "Affine" in name or "Rotat" in name:
            return None
    return None


def _rgb(mean: Any) -> tuple[float, float, float]:
    """A mean as three floats (one value for all channels is repeated)."""
    values = [float(v) for v in (mean if isinstance(mean, list | tuple) else list(mean))]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise CurateError(f"expected an RGB mean of 3 values, got {values}", fix="the model's preprocessing "
                          "should normalise 3 channels")
    return values[0], values[1], values[2]


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass early."""


def _open_clip_dim(model: Any) -> int:
    proj = getattr(model, "text_projection", None)
    if proj is not None and hasattr(proj, "shape"):
        return proj.shape[1]
    return getattr(getattr(model, "visual", None), "output_dim", 0)


def _register_local_config(arch: str, ckpt: Path) -> None:
    """Let a checkpoint carry its own architecture: ``ARCH.json`` or ``open_clip_config.json`` beside it."""
    import open_clip

    if arch in open_clip.list_models():
        return
    for cand in (ckpt.parent / f"{arch}.json", ckpt.parent / "open_clip_config.json"):
        if cand.is_file():
            import json

            cfg = json.loads(cand.read_text())
            cfg = cfg.get("model_cfg", cfg)
            from open_clip.factory import _MODEL_CONFIGS

            _MODEL_CONFIGS[arch] = cfg
            return


def _unknown_arch(arch: str) -> CurateError:
    import difflib

    import open_clip

    close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
    return CurateError(f"unknown open_clip architecture {arch!r}",
                       fix=(f"did you mean {', '.join(close)}? " if close else "")
                       + "see open_clip.list_models(), or put ARCH.json beside the checkpoint")


def _pretrained_cached(arch: str, tag: str) -> bool:
    """Is the named open_clip checkpoint already on disk (HF cache or ~/.cache/clip)?"""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    if cfg.get("file"):
        return Path(cfg["file"]).exists()
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"]
        if filename.endswith((".bin", ".pth")):
            names.append(filename[:-4] + ".safetensors")
        if filename == "open_clip_pytorch_model.bin":
            names.append("open_clip_model.safetensors")
        return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


CKPT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _check_open_clip(spec: str, rest: str) -> tuple[str, Path | None, str | None]:
    """What can be checked of an ``open_clip:`` spec before loading it: the architecture is known (a
    custom ARCH.json beside the checkpoint registered), a named tag exists and its weights are in the
    local cache. Returns (arch, checkpoint path or None, tag or None)."""
    import open_clip

    arch, _, tail = rest.partition("/")
    if tail.startswith("/") or tail.endswith(CKPT_SUFFIXES):
        # ARCH//abs/path (clip-retrieval's form: ARCH + "/" + absolute path) or ARCH/relative/file.pt
        ckpt = Path(tail).expanduser()
        _register_local_config(arch, ckpt)
        if arch not in open_clip.list_models():
            raise _unknown_arch(arch)
        return arch, ckpt, None
    tag = tail
    if not arch or not tag:
        raise bad_spec(spec)
    if arch not in open_clip.list_models():
        raise _unknown_arch(arch)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise CurateError(f"open_clip {arch} has no pretrained tag {tag!r}",
                          fix=f"known tags: {', '.join(tags) or 'none'}; or use open_clip:{arch}//path/to/ckpt.pt")
    if not _pretrained_cached(arch, tag):
        raise CurateError(
            f"the weights of open_clip {arch}/{tag} are not in the local cache and there is no network to fetch them",
            fix=f"copy the checkpoint here and use open_clip:{arch}//path/to/checkpoint.pt, "
                "or use the offline demo model (mini:PATH)",
        )
    return arch, None, tag


def load_open_clip(spec: str, rest: str, device: str) -> OpenClipEncoder:
    import open_clip

    arch, ckpt, tag = _check_open_clip(spec, rest)
    if ckpt is not None:
        state = load_state_file(ckpt)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, device="cpu")
        apply_state(model, state, ckpt, f"open_clip {arch}")
        return OpenClipEncoder(spec, model, preprocess, open_clip.get_tokenizer(arch), device)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag, device="cpu")
    return OpenClipEncoder(spec, model, preprocess, open_clip.get_tokenizer(arch), device)


# ------------------------------------------------------------------------------------------
# transformers CLIPModel
# ------------------------------------------------------------------------------------------
class HFClipEncoder(Encoder):
    def __init__(self, spec: str, folder: Path, device: str):
        import torch
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval().to(device)
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.processor = CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise CurateError(f"not a loadable transformers CLIPModel folder ({str(e).splitlines()[0][:200]})",
                              where=str(folder),
                              fix="the folder needs config.json, model weights, tokenizer files and "
                                  "preprocessor_config.json (CLIPModel/CLIPProcessor.save_pretrained)") from e
        self.spec = spec
        self.device = device
        self.dim = int(self.model.config.projection_dim)
        self._torch = torch

    def preprocess(self, image: Any) -> Any:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    @property
    def decode_size(self) -> int | None:
        """The processor's resize: ``size.shortest_edge`` (or the larger of height/width)."""
        if not getattr(self.processor, "do_resize", True):
            return None
        size = getattr(self.processor, "size", None) or {}
        if size.get("shortest_edge"):
            return int(size["shortest_edge"])
        if size.get("height") and size.get("width"):
            return int(max(size["height"], size["width"]))
        return None

    @property
    def image_mean(self) -> tuple[float, float, float]:
        """The image processor's ``image_mean`` (``preprocessor_config.json``)."""
        return _rgb(self.processor.image_mean)

    def _forward_images(self, batch: Any) -> Any:
        return self.model.get_image_features(pixel_values=batch)

    def _forward_texts(self, texts: list[str]) -> Any:
        max_len = int(self.model.config.text_config.max_position_embeddings)
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return self.model.get_text_features(**{k: v.to(self.device) for k, v in tok.items()})

    def tokens(self, batch: Any) -> tuple[Any, Any]:
        """``hidden_states[-2]`` of the vision tower (what LLaVA-1.5 and TRIDENT select)."""
        out = self.model.vision_model(pixel_values=batch.to(self.device), output_hidden_states=True)
        x = out.hidden_states[-2]
        return x[:, 0], x[:, 1:]


def load_hf(spec: str, rest: str, device: str) -> HFClipEncoder:
    check_spec_syntax(spec)
    return HFClipEncoder(spec, Path(rest).expanduser(), device)


# ------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------
# scheme -> "module:function(spec, rest, device) -> Encoder", imported on use (like the CLI's
# command table): `curate` never imports the packages above it, and the demo mini-CLIP is a
# model of `training`.
LOADERS: dict[str, str] = {
    "open_clip": "curate.embed.backends:load_open_clip",
    "hf": "curate.embed.backends:load_hf",
    "mini": "training.models.mini_clip:load_mini",
}
# the offline demo's model: ``function(world_dir) -> model folder`` (trained once, then cached)
DEMO_MODEL = ("mini", "training.models.mini_clip:ensure_mini_clip")


def resolve(target: str) -> Callable[..., Any]:
    """The function named by a ``"module:function"`` string."""
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def demo_model_spec(world_dir: str | os.PathLike) -> str:
    """The spec of the demo world's model, training it first if it is not cached."""
    scheme, target = DEMO_MODEL
    return f"{scheme}:{resolve(target)(world_dir)}"


def bad_spec(spec: str) -> CurateError:
    return CurateError(f"unknown model spec {spec!r}", fix=f"use one of: {spec_forms_text()}")


def load_model(spec: str, device: str = "auto") -> Encoder:
    """Parse ``spec`` and load the model on ``device`` (auto: cuda if available, else cpu)."""
    from ..options import resolve_device

    scheme, sep, rest = (spec or "").partition(":")
    if not sep or not rest:
        raise bad_spec(spec)
    if scheme not in LOADERS:
        raise bad_spec(spec)
    dev = resolve_device(device)
    import torch

    # building the modules draws their initial weights from torch's global generator before the saved
    # weights replace them: a model loaded lazily in the middle of a training run (CIR's validation
    # texts, on a run whose text cache is cold) would move that run's dropout and sampling, so a resumed
    # run (cache warm, no load) would not reproduce an uninterrupted one. Loading leaves the generator as it was.
    with torch.random.fork_rng(devices=[]):
        enc: Encoder = resolve(LOADERS[scheme])(spec, rest, dev)
    logger.debug("loaded %s on %s (dim %d)", spec, dev, enc.dim)
    return enc


_CACHE: dict[tuple[str, str], Encoder] = {}


def cached_model(spec: str, device: str = "auto") -> Encoder:
    """One loaded model per (spec, device) per process: workers load once, then reuse."""
    key = (spec, device)
    if key not in _CACHE:
        _CACHE[key] = load_model(spec, device)
    return _CACHE[key]


# what a spec's local path must be, and how to get one, per scheme
_SPEC_PATH_FIX = {
    "mini": "train one with `curate model train-mini --world DIR` (it prints the folder)",
    "hf": "pass hf:/path/to/folder saved with CLIPModel.save_pretrained",
    "open_clip": "give the checkpoint's path: open_clip:ARCH//path/to/checkpoint.pt",
}


def spec_path(spec: str) -> Path | None:
    """The local file or folder a model spec names (None for a named open_clip tag)."""
    scheme, _, rest = (spec or "").partition(":")
    if scheme in ("mini", "hf"):
        return Path(rest).expanduser()
    if scheme == "open_clip":
        _arch, _, tail = rest.partition("/")
        if tail.startswith("/") or tail.endswith(CKPT_SUFFIXES):
            return Path(tail).expanduser()
    return None


def check_spec_syntax(spec: str) -> None:
    """Fail fast, in the parent before any worker starts, on a spec that cannot be right: an unknown
    form, or a local path that does not exist (loading the model is left to the workers)."""
    scheme, sep, rest = (spec or "").partition(":")
    if not sep or not rest or scheme not in LOADERS:
        raise bad_spec(spec)
    path = spec_path(spec)
    if path is not None and not path.exists():
        raise CurateError(f"model path does not exist (model spec {spec})", where=str(path),
                          fix=_SPEC_PATH_FIX.get(scheme, f"valid specs: {spec_forms_text()}"))
    if scheme == "hf" and path is not None and not (path / "config.json").is_file():
        raise CurateError("not a transformers model folder (no config.json)", where=str(path),
                          fix=_SPEC_PATH_FIX["hf"])


def check_model_available(spec: str) -> None:
    """:func:`check_spec_syntax`, and for ``open_clip:`` specs what its loader checks before loading
    (architecture known, named weights cached), before an output folder opens. A checkpoint whose
    architecture open_clip ships or that carries its own ``ARCH.json`` is checked without importing
    open_clip (seconds of start-up that `curate embed`'s worker processes would wait for); anything
    else imports it for the loader's own checks and messages."""
    check_spec_syntax(spec)
    scheme, _, rest = spec.partition(":")
    if scheme == "open_clip":
        arch, _, tail = rest.partition("/")
        if (tail.startswith("/") or tail.endswith(CKPT_SUFFIXES)) and _arch_known(arch, Path(tail).expanduser()):
            return
        _check_open_clip(spec, rest)


def _arch_known(arch: str, ckpt: Path) -> bool:
    """Whether ``arch`` is one of open_clip's shipped architectures (its ``model_configs/ARCH.json``, found
    without importing the package) or a config beside the checkpoint (what :func:`_register_local_config`
    reads)."""
    import importlib.util

    found = importlib.util.find_spec("open_clip")
    shipped = [Path(d, "model_configs", f"{arch}.json") for d in (found.submodule_search_locations or [])] \
        if found else []
    beside = [ckpt.parent / f"{arch}.json", ckpt.parent / "open_clip_config.json"]
    return bool(arch) and any(p.is_file() for p in shipped + beside)
