"""Typer option types every stage command shares, so flags read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Workers = Annotated[int | None, typer.Option("--workers", "-w", help="Parallel worker processes (default: all cores).")]
ExecutorName = Annotated[str, typer.Option("--executor", help="Where tasks run: 'local' (process pool) or 'ray'.")]
RayAddress = Annotated[str | None, typer.Option("--address", help="Ray cluster address for --executor ray (default: start a local Ray).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an output folder made by a different run/config.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML file with the same options (CLI flags win).")]
Device = Annotated[str, typer.Option("--device", help="Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1.")]
Decode = Annotated[str, typer.Option(
    "--decode", help="How JPEGs are decoded for the model: fast (at the smallest 1/2, 1/4 or 1/8 DCT scale that "
                     "still covers the model's input size; embeddings within 0.995 cosine of exact) or exact "
                     "(full size, bit-exact preprocessing as before).")]


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from .errors import CurateError

        raise CurateError(f"--device {device} asked for, but CUDA is not available", fix="use --device cpu or auto")
    return device
