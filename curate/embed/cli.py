"""``curate embed``: CLIP embeddings over shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import Device, ExecutorName, Overwrite, RayAddress, Workers

embed_app = typer.Typer(add_completion=False)


@embed_app.command()
def embed(
    shards: Annotated[list[str], typer.Argument(help="Shard files, folders, globs or brace patterns.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model spec; see `curate model list`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Embeddings folder (clip-retrieval layout).")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 64,
    captions: Annotated[bool, typer.Option("--captions/--no-captions", help="Also embed captions (txt or json caption).")] = True,
    workers: Workers = None,
    executor: ExecutorName = "local",
    address: RayAddress = None,
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Compute L2-normalised CLIP embeddings of images (and captions) in WebDataset shards.

    Writes img_emb/img_emb_N.npy, text_emb/text_emb_N.npy, metadata/metadata_N.parquet (key,
    shard, caption, image_path) and embeddings.json: the layout `clip-retrieval index` reads.
    One task per shard; rerun the same command to resume. Images that fail to decode are
    skipped and listed in embeddings.json.

    Example: curate embed demo-out/world/train --model mini:$HOME/.cache/curate/mini-clip/KEY --out emb
    """
    from ..log import console
    from .stage import EmbedConfig, embed_shards

    info = embed_shards(shards, out, EmbedConfig(model=model, batch_size=batch_size, captions=captions, device=device),
                        workers=workers, executor=executor, address=address, overwrite=overwrite)
    c = info["counts"]
    console.print(f"{c['images']} images, {c['texts']} captions, {c['bad_images']} undecodable -> {out}")
