"""Generator backends: where images of a pair come from when no pool has them.

``demo`` renders the pair with the demo world's procedural renderer (the stand-in for
DALL-E / SDXL-Turbo in the ImageNet-AO papers); ``diffusers:PATH`` runs a local diffusers
text-to-image pipeline folder (nothing is downloaded). Each backend returns ``(key, jpeg
bytes, meta)`` tuples, deterministic by seed.

``diffusers:PATH[?steps=N&guidance=G&size=S&batch=B]``: any folder ``save_pretrained`` wrote
(``model_index.json`` + components), e.g. SDXL-Turbo, the ImageNet-AO v2 generator, whose
defaults these are: 1 step, guidance 0 (``stabilityai/sdxl-turbo``: ``huggingface-cli download
stabilityai/sdxl-turbo --local-dir sdxl-turbo`` on a machine with network, then
``--generator diffusers:sdxl-turbo?size=512``). A Stable Diffusion 1.5/2.1 folder wants e.g.
``?steps=25&guidance=7.5``. ``size`` is the output side (default: the pipeline's own),
``batch`` the images per forward pass. Image ``i`` of a pair has seed ``pair_seed + i`` and its
own ``torch.Generator`` on the CPU, so the same seed gives the same latents on CPU and GPU.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

from curate.errors import CurateError
from curate.images import encode_jpeg
from curate.ledger import Task
from curate.shards import write_shard

GENERATOR_FORMS = "demo | diffusers:/path/to/pipeline-folder[?steps=1&guidance=0&size=512&batch=8]"


class Generator(Protocol):
    def generate(self, attr: str, obj: str, n: int, seed: int) -> list[tuple[str, bytes, dict[str, Any]]]: ...


@dataclass
class DiffusersOptions:
    """Sampling options of ``diffusers:PATH?...`` (SDXL-Turbo's defaults)."""

    steps: int = 1
    guidance: float = 0.0
    size: int | None = None
    batch: int = 8

    @classmethod
    def parse(cls, query: str) -> DiffusersOptions:
        opts = cls()
        kinds = {"steps": int, "guidance": float, "size": int, "batch": int}
        for k, v in parse_qsl(query, keep_blank_values=True):
            if k not in kinds:
                raise CurateError(f"unknown diffusers option {k!r}", fix=f"use {', '.join(kinds)}: {GENERATOR_FORMS}")
            try:
                setattr(opts, k, kinds[k](v))
            except ValueError as e:
                raise CurateError(f"diffusers option {k}={v} is not a number ({kinds[k].__name__})",
                                  fix=GENERATOR_FORMS) from e
        if opts.steps < 1 or opts.batch < 1 or (opts.size is not None and opts.size < 8):
            raise CurateError("diffusers options: steps and batch must be >= 1, size >= 8")
        return opts


def split_spec(spec: str) -> tuple[str, DiffusersOptions]:
    """``diffusers:PATH?k=v&...`` -> (PATH, options)."""
    rest = spec.split(":", 1)[1]
    path, _, query = rest.partition("?")
    return path, DiffusersOptions.parse(query)


class DiffusersGenerator:
    """A local diffusers text-to-image pipeline; prompt "a photo of a {attr} {obj}"."""

    def __init__(self, path: str, device: str = "auto", options: DiffusersOptions | None = None):
        try:
            import diffusers  # noqa: F401
        except ImportError as e:
            raise CurateError("--generator diffusers:PATH needs the diffusers package",
                              fix='pip install -c constraints.txt -e ".[models]" (then give a local pipeline folder)') from e
        folder = Path(path)
        if not (folder / "model_index.json").is_file():
            raise CurateError("not a diffusers pipeline folder (no model_index.json)", where=path,
                              fix="give a folder written by save_pretrained / huggingface-cli download, "
                                  "e.g. stabilityai/sdxl-turbo")
        import torch
        from diffusers import AutoPipelineForText2Image

        from curate.options import resolve_device

        self.device = resolve_device(device)
        self.options = options or DiffusersOptions()
        self.name = folder.resolve().name
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            self.pipe = AutoPipelineForText2Image.from_pretrained(str(folder), torch_dtype=dtype,
                                                                  local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise CurateError(f"cannot load the diffusers pipeline ({str(e).splitlines()[0][:200]})", where=path,
                              fix="the folder must hold a text-to-image pipeline saved with save_pretrained") from e
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)

    def generate(self, attr: str, obj: str, n: int, seed: int) -> list[tuple[str, bytes, dict[str, Any]]]:
        import torch

        prompt = f"a photo of a {attr} {obj}"
        o = self.options
        size = {"height": o.size, "width": o.size} if o.size else {}
        out = []
        for start in range(0, n, o.batch):
            seeds = [seed + i for i in range(start, min(n, start + o.batch))]
            gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
            with torch.inference_mode():
                images = self.pipe(prompt=prompt, num_inference_steps=o.steps, guidance_scale=o.guidance,
                                   num_images_per_prompt=len(seeds), generator=gens, **size).images
            for s, img in zip(seeds, images, strict=True):
                key = re.sub(r"[^A-Za-z0-9]+", "_", f"{attr}_{obj}_{s}")
                out.append((key, encode_jpeg(img), {"prompt": prompt, "seed": s, "generator": "diffusers",
                                                     "model": self.name, "steps": o.steps, "guidance": o.guidance,
                                                     "width": img.width, "height": img.height}))
        return out


def load_generator(spec: str, device: str = "auto") -> Generator:
    if spec == "demo":
        from builders.synthetic.generator import DemoGenerator

        return DemoGenerator()
    if spec.startswith("diffusers:"):
        path, options = split_spec(spec)
        return DiffusersGenerator(path, device=device, options=options)
    raise CurateError(f"unknown generator {spec!r}", fix=f"use one of: {GENERATOR_FORMS}")


def pair_seed(seed: int, attr: str, obj: str) -> int:
    return seed * 1_000_003 + int(hashlib.sha1(f"{attr}|{obj}".encode()).hexdigest()[:8], 16)


_GEN_CACHE: dict[tuple[str, str], Generator] = {}


def loaded_generator(spec: str, device: str = "auto") -> Generator:
    """The generator for (spec, device), loaded once per process (a diffusers pipeline takes seconds
    to minutes to load: every task of a process shares it)."""
    key = (spec, device)
    if key not in _GEN_CACHE:
        _GEN_CACHE[key] = load_generator(spec, device)
    return _GEN_CACHE[key]


def in_process(spec: str) -> bool:
    """Model generators run their tasks in the build's process: one pipeline in memory (on one GPU),
    batched inside the pipeline, instead of one copy per worker process."""
    return spec.startswith("diffusers:")


def generate_task(task: Task) -> dict[str, Any]:
    """Executor task: render ``n`` images for each pair of a chunk into one shard."""
    a = task.args
    gen = loaded_generator(a["spec"], a.get("device", "auto"))

    def samples():
        for attr, obj in a["pairs"]:
            for key, data, meta in gen.generate(attr, obj, a["n"], pair_seed(a["seed"], attr, obj)):
                k = re.sub(r"[^A-Za-z0-9_\-]+", "_", key)
                yield {"__key__": k, "jpg": data,
                       "json": {**meta, "key": k, "attr": attr, "obj": obj, "caption": f"a photo of a {attr} {obj}"}}

    st = write_shard(Path(a["out"]) / a["name"], samples())
    return {"outputs": [a["name"]], "stats": {"items": st.count}}
