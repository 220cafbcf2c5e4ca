"""``curate model`` (list backends, train the demo mini-CLIP) and ``curate embed``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import Device, ExecutorName, Overwrite, RayAddress, Workers

model_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Models: list the backend spec forms, train and evaluate the demo mini-CLIP.")
embed_app = typer.Typer(add_completion=False)


@model_app.command("list")
def list_models() -> None:
    """Print the model spec forms every command accepts (--model SPEC).

    Example: curate model list
    """
    from .backends import SPEC_FORMS

    for form, what in SPEC_FORMS:
        typer.echo(f"{form}\t{what}")


@model_app.command("train-mini")
def train_mini_cmd(
    world: Annotated[Path, typer.Option("--world", help="Demo world folder (curate demo world --out DIR).")],
    out: Annotated[Path | None, typer.Option("--out", help="Model folder (default: the cache, keyed by world.json).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs (default from the config).")] = None,
    seconds: Annotated[float | None, typer.Option("--max-seconds", help="Stop training after this many seconds.")] = None,
    threads: Annotated[int, typer.Option("--threads", help="Torch CPU threads.")] = 2,
    overwrite: Overwrite = False,
) -> None:
    """Train the demo mini-CLIP on the world's common pairs, then report zero-shot accuracy.

    Trains a small CNN image tower and a word-vocabulary text tower with a contrastive loss on
    WORLD/train (common pairs only), on CPU in a few minutes, and writes model.safetensors,
    config.json, vocab.json and report.json (object/attribute top-1/top-5 on held-out common
    pairs vs rare pairs). Cached: a second call with the same world returns at once.

    Example: curate model train-mini --world demo-out/world
    """
    from .mini_clip import MiniClipConfig, ensure_mini_clip, print_report, read_report

    cfg = MiniClipConfig()
    if epochs is not None:
        cfg.epochs = epochs
    if seconds is not None:
        cfg.max_seconds = seconds
    cfg.threads = threads
    folder = ensure_mini_clip(world, config=cfg, out=out, overwrite=overwrite)
    print_report(read_report(folder))
    typer.echo(str(folder))


@model_app.command("eval-mini")
def eval_mini_cmd(
    model: Annotated[Path, typer.Argument(help="Mini-CLIP folder.")],
    world: Annotated[Path, typer.Option("--world", help="Demo world folder with heldout/ and rare/.")],
) -> None:
    """Zero-shot object/attribute accuracy of a mini-CLIP on held-out common vs rare pairs.

    Example: curate model eval-mini ~/.cache/curate/mini-clip/ab12cd34ef56 --world demo-out/world
    """
    from .mini_clip import evaluate_world, print_report

    print_report(evaluate_world(f"mini:{model}", world))


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
