"""``curate eval``: evaluate models on a dataset (the trainers come with their own issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.options import Device

eval_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evaluate models on a dataset.")


@eval_app.callback()
def _group() -> None:
    """Evaluate models on a dataset: `curate eval zeroshot DATASET`."""


@eval_app.command("zeroshot")
def zeroshot(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder built by `curate build imagenet-ao`.")],
    model: Annotated[str | None, typer.Option(help="Model spec (default: the one the dataset was built with).")] = None,
    reference: Annotated[str | None, typer.Option(help="Ordinary (common-pair) images: a dataset folder or shards.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write zeroshot.json/.md (default DATASET/eval).")] = None,
    include_rejected: Annotated[bool, typer.Option(help="Also evaluate samples a reviewer rejected.")] = False,
    device: Device = "auto",
) -> None:
    """Zero-shot object and composition top-1/top-5 on the rare set vs a reference set.

    Example: curate eval zeroshot demo-out/imagenet-ao --reference demo-out/world/heldout
    """
    import json

    from curate.errors import CurateError
    from curate.log import console

    from .metrics.zeroshot import evaluate_dataset, markdown_table

    if model is None:
        info = dataset / "dataset.json"
        model = json.loads(info.read_text()).get("config", {}).get("model") if info.exists() else None
        if not model:
            raise CurateError("no --model given and the dataset does not name one", where=str(dataset))
        if reference is None:
            reference = json.loads(info.read_text()).get("config", {}).get("reference")
    report = evaluate_dataset(dataset, model, reference=reference, device=device, out=out,
                              include_rejected=include_rejected)
    console.print(markdown_table(report))
