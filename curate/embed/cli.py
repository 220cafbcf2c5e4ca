"""``curate embed``: CLIP embeddings over shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..options import Decode, ExecutorName, Overwrite, RayAddress, Workers

embed_app = typer.Typer(add_completion=False)


DeviceList = Annotated[str, typer.Option(
    "--device", help="auto (every GPU if CUDA is available, else cpu), cpu, cuda (every GPU), cuda:N, cuda:0,1. "
                     "On CUDA one process runs per GPU.")]


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
    device: DeviceList = "auto",
    decode_workers: Annotated[int, typer.Option(
        "--decode-workers", help="Decode/preprocess processes feeding each model (a DataLoader, pinned memory). "
                                 "-1 = auto: on CUDA the cores per GPU minus one (max 16); on CPU 1 when one "
                                 "process runs the model on several cores, else 0 (a thread beside the model).")] = -1,
    precision: Annotated[str, typer.Option(
        "--precision", help="auto (fp16 autocast on CUDA, fp32 on CPU), fp32, fp16 or bf16.")] = "auto",
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Stored embeddings: float32, or float16 as clip-retrieval stores them (half the disk).")]
        = "float32",
    decode: Decode = "fast",
    gpu_decode: Annotated[str, typer.Option(
        "--gpu-decode", help="On CUDA, decode JPEGs on the GPU (nvJPEG) instead of in the decode workers: auto "
                             "(when a timed first batch says it is faster), on, off. Ignored on CPU.")] = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Compute L2-normalised CLIP embeddings of images (and captions) in WebDataset shards.

    Writes img_emb/img_emb_N.npy, text_emb/text_emb_N.npy, metadata/metadata_N.parquet (key,
    shard, caption, image_path) and embeddings.json: the layout `clip-retrieval index` reads.
    One task per shard; rerun the same command to resume. Images that fail to decode are
    skipped and listed in embeddings.json.

    On CPU (the default without a GPU): --workers processes, each with its own model, fp32;
    --workers 1 runs one model on every core, fed by a decode process (less start-up on small inputs).
    On CUDA: one process per GPU, one model each, fed by --decode-workers decode processes,
    fp16 autocast by default; shards are shared out between the GPUs as they finish.

    Examples:

      curate embed demo-out/world/train --model mini:$HOME/.cache/curate/mini-clip/KEY --out emb

      curate embed 'pool/{000000..000999}.tar' --model open_clip:ViT-L-14//ckpt/vit-l-14.pt \\
          --device cuda --decode-workers 8 --batch-size 256 --out emb    # every GPU, fp16

      curate embed pool/ --model SPEC --device cuda:1 --precision bf16 --dtype float16 --out emb
    """
    from ..log import console
    from .stage import EmbedConfig, embed_shards

    cfg = EmbedConfig(model=model, batch_size=batch_size, captions=captions, device=device,
                      decode_workers=decode_workers, precision=precision, dtype=dtype,
                      decode=decode, gpu_decode=gpu_decode)
    info = embed_shards(shards, out, cfg, workers=workers, executor=executor, address=address, overwrite=overwrite)
    c = info["counts"]
    console.print(f"{c['images']} images, {c['texts']} captions, {c['bad_images']} undecodable -> {out}")
