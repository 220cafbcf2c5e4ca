"""Generator backends: where images of a pair come from when no pool has them.

``demo`` renders the pair with the demo world's procedural renderer (the stand-in for
DALL-E / SDXL-Turbo in the ImageNet-AO papers); ``diffusers:PATH`` runs a local diffusers
text-to-image pipeline folder (needs ``pip install diffusers``; nothing is downloaded).
Each backend returns ``(key, jpeg bytes, meta)`` tuples, deterministic by seed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Protocol

from curate.errors import CurateError
from curate.images import encode_jpeg
from curate.ledger import Task
from curate.shards import write_shard

GENERATOR_FORMS = "demo | diffusers:/path/to/pipeline-folder"


class Generator(Protocol):
    def generate(self, attr: str, obj: str, n: int, seed: int) -> list[tuple[str, bytes, dict[str, Any]]]: ...


class DiffusersGenerator:
    """A local diffusers pipeline (e.g. an SDXL-Turbo folder); prompt "a photo of a {attr} {obj}"."""

    def __init__(self, path: str, device: str = "auto", steps: int = 1):
        try:
            import diffusers  # noqa: F401
        except ImportError as e:
            raise CurateError("--generator diffusers:PATH needs the diffusers package",
                              fix="pip install diffusers (then give a local pipeline folder)") from e
        if not Path(path).is_dir():
            raise CurateError("diffusers pipeline folder not found", where=path)
        import torch
        from diffusers import AutoPipelineForText2Image

        from curate.options import resolve_device

        self.device = resolve_device(device)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.pipe = AutoPipelineForText2Image.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        self.pipe.to(self.device)
        self.steps = steps

    def generate(self, attr: str, obj: str, n: int, seed: int) -> list[tuple[str, bytes, dict[str, Any]]]:
        import torch

        prompt = f"a photo of a {attr} {obj}"
        out = []
        for i in range(n):
            g = torch.Generator(device="cpu").manual_seed(seed + i)
            img = self.pipe(prompt=prompt, num_inference_steps=self.steps, guidance_scale=0.0, generator=g).images[0]
            key = re.sub(r"[^A-Za-z0-9]+", "_", f"{attr}_{obj}_{seed + i}")
            out.append((key, encode_jpeg(img), {"prompt": prompt, "seed": seed + i, "generator": "diffusers"}))
        return out


def load_generator(spec: str, device: str = "auto") -> Generator:
    if spec == "demo":
        from builders.synthetic.generator import DemoGenerator

        return DemoGenerator()
    if spec.startswith("diffusers:"):
        return DiffusersGenerator(spec.split(":", 1)[1], device=device)
    raise CurateError(f"unknown generator {spec!r}", fix=f"use one of: {GENERATOR_FORMS}")


def pair_seed(seed: int, attr: str, obj: str) -> int:
    return seed * 1_000_003 + int(hashlib.sha1(f"{attr}|{obj}".encode()).hexdigest()[:8], 16)


_GEN_CACHE: dict[str, Generator] = {}


def generate_task(task: Task) -> dict[str, Any]:
    """Executor task: render ``n`` images for each pair of a chunk into one shard."""
    a = task.args
    gen = _GEN_CACHE.get(a["spec"]) or load_generator(a["spec"], a.get("device", "auto"))
    _GEN_CACHE[a["spec"]] = gen

    def samples():
        for attr, obj in a["pairs"]:
            for key, data, meta in gen.generate(attr, obj, a["n"], pair_seed(a["seed"], attr, obj)):
                k = re.sub(r"[^A-Za-z0-9_\-]+", "_", key)
                yield {"__key__": k, "jpg": data,
                       "json": {**meta, "key": k, "attr": attr, "obj": obj, "caption": f"a photo of a {attr} {obj}"}}

    st = write_shard(Path(a["out"]) / a["name"], samples())
    return {"outputs": [a["name"]], "stats": {"items": st.count}}
