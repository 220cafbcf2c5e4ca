"""JPEG decode on the GPU for the fed embedding path (``curate embed --device cuda``).

On a GPU the decode workers are what the model waits for (a CLIP ViT-B forward in fp16 runs
thousands of images a second; a CPU core decodes a few hundred). Here the shard reader hands
each batch's JPEG bytes to ``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG, batched),
and the model's own geometry runs on the decoded tensors there: shortest side to the model's
size (antialiased, the transform's interpolation), centre crop, ``/255``, normalise.

- Only encoders whose preprocessing is that plain recipe qualify (:func:`tensor_recipe`:
  open_clip's ``Resize`` + ``CenterCrop`` + ``ToTensor`` + ``Normalize``); others keep the CPU
  decode workers.
- A sample that is not a JPEG, or that nvJPEG refuses (CMYK, truncated, ...), is decoded on the
  CPU exactly as before (``Encoder.pixels``), so a bad image is still counted, never half read.
- ``--gpu-decode auto`` (default) times both ways on the process's first batch and keeps the
  faster (the CPU side counted as ``decode_workers`` processes in parallel); ``on`` forces it,
  ``off`` never uses it. CPU runs never use it.

Pixels differ from the CPU path's by interpolation rounding (tensor bicubic vs PIL bicubic) and,
under ``--decode fast``, by the DCT-scaled decode the CPU path does: nvJPEG decodes at full size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CurateError

logger = logging.getLogger(__name__)
GPU_DECODE = ("auto", "on", "off")
JPEG_MAGIC = b"\xff\xd8\xff"


def check_gpu_decode(mode: str) -> str:
    if mode not in GPU_DECODE:
        raise CurateError(f"unknown --gpu-decode {mode!r}", fix=f"use one of {', '.join(GPU_DECODE)}")
    return mode


@dataclass(frozen=True)
class Recipe:
    """The model's preprocessing as tensor operations."""

    resize: int                       # shortest side
    crop: tuple[int, int]             # (height, width), centre
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str                # bicubic | bilinear


def tensor_recipe(transform: Any) -> Recipe | None:
    """The recipe of a torchvision ``Compose`` that is exactly Resize(int) -> CenterCrop -> (RGB
    conversion) -> ToTensor -> Normalize; None for anything else (it stays on the CPU)."""
    steps = list(getattr(transform, "transforms", []))
    names = [type(t).__name__ for t in steps]
    names = [n for n in names if n != "function"]  # open_clip's _convert_to_rgb: decode_jpeg(mode=RGB) does it
    if names != ["Resize", "CenterCrop", "ToTensor", "Normalize"]:
        return None
    resize, crop, _, norm = (t for t in steps if type(t).__name__ != "function")
    if not isinstance(resize.size, int) and not (isinstance(resize.size, list | tuple) and len(resize.size) == 1):
        return None
    if getattr(resize, "max_size", None) is not None:
        return None
    interp = str(getattr(resize.interpolation, "value", resize.interpolation)).lower()
    if interp not in ("bicubic", "bilinear"):
        return None
    size = resize.size if isinstance(resize.size, int) else resize.size[0]
    c = crop.size if isinstance(crop.size, list | tuple) else (crop.size, crop.size)
    crop_hw = (int(c[0]), int(c[1] if len(c) > 1 else c[0]))
    mean, std = tuple(float(v) for v in norm.mean), tuple(float(v) for v in norm.std)
    if len(mean) != 3 or len(std) != 3:
        return None
    return Recipe(int(size), crop_hw, mean, std, interp)  # type: ignore[arg-type]


class TensorDecoder:
    """Batches of image bytes -> preprocessed [n, 3, H, W] float tensors on ``device``."""

    def __init__(self, recipe: Recipe, device: str, fallback: Callable[[bytes], Any]):
        import torch

        self.recipe, self.device, self.fallback = recipe, device, fallback
        self.mean = torch.tensor(recipe.mean, device=device).view(3, 1, 1)
        self.std = torch.tensor(recipe.std, device=device).view(3, 1, 1)

    def decode(self, images: list[bytes]) -> list[Any]:
        """uint8 CHW tensors on the device, None where nvJPEG (or the CPU decoder) could not."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        out: list[Any] = [None] * len(images)
        jpegs = [i for i, d in enumerate(images) if bytes(d[:3]) == JPEG_MAGIC]
        if not jpegs:
            return out
        data = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in jpegs]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
            for i, img in zip(jpegs, decoded, strict=True):
                out[i] = img
        except RuntimeError:  # one bad image fails the batch call: decode one by one
            for i, d in zip(jpegs, data, strict=True):
                try:
                    out[i] = decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
                except RuntimeError:
                    out[i] = None
        return out

    def geometry(self, img: Any) -> Any:
        """uint8 CHW -> the model's float CHW input: shortest side resized (antialiased), centre crop, normalised."""
        import torch.nn.functional as F

        r = self.recipe
        _, h, w = img.shape
        # torchvision's Resize(int): the short side to size, the long one truncated (not rounded)
        nh, nw = (r.resize, int(r.resize * w / h)) if h <= w else (int(r.resize * h / w), r.resize)
        x = img.unsqueeze(0).float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode=r.interpolation, align_corners=False, antialias=True)
        ch, cw = r.crop
        top, left = max(0, round((nh - ch) / 2)), max(0, round((nw - cw) / 2))
        x = x[0, :, top:top + ch, left:left + cw].clamp_(0, 255) / 255.0
        return (x - self.mean) / self.std

    def __call__(self, images: list[bytes]) -> tuple[Any, list[str | None]]:
        """``(tensor [n_ok, 3, H, W] on the device, errors)`` in the shape ``DecodeBatch`` returns:
        what the GPU could not decode goes through the CPU decoder, what neither can is an error."""
        import torch

        tensors, errors = [], []
        for data, img in zip(images, self.decode(images), strict=True):
            try:
                tensors.append(self.geometry(img) if img is not None else self.fallback(data).to(self.device))
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - a broken image is data: counted by the consumer
                errors.append(f"undecodable image ({type(e).__name__})")
        return (torch.stack(tensors) if tensors else torch.zeros(0)), errors


def choose(decoder: TensorDecoder, cpu: Callable[[bytes], Any], batch: list[bytes], decode_workers: int) -> bool:
    """``--gpu-decode auto``: True when the GPU decodes ``batch`` faster than ``decode_workers`` CPU
    processes would (measured here: one CPU pass, one warm-up and one timed GPU pass)."""
    import torch

    t0 = time.perf_counter()
    for data in batch:
        try:
            cpu(data)
        except Exception:  # noqa: BLE001 - counted later, when the batch is decoded for real
            pass
    t_cpu = (time.perf_counter() - t0) / max(1, decode_workers)
    decoder(batch)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    decoder(batch)
    torch.cuda.synchronize()
    t_gpu = time.perf_counter() - t0
    logger.info("gpu decode: %.1f ms per batch vs %.1f ms for %d CPU decode worker(s): %s", 1000 * t_gpu,
                1000 * t_cpu, decode_workers, "GPU" if t_gpu < t_cpu else "CPU")
    return t_gpu < t_cpu


def gpu_decoder(encoder: Any, decode: str) -> TensorDecoder | None:
    """A decoder for ``encoder`` on its CUDA device, or None (not CUDA, not a plain recipe, no nvJPEG)."""
    if not str(getattr(encoder, "device", "cpu")).startswith("cuda"):
        return None
    recipe = tensor_recipe(getattr(encoder, "transform", None))
    if recipe is None:
        return None
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return None
    return TensorDecoder(recipe, str(encoder.device), lambda data: encoder.pixels(data, decode))
