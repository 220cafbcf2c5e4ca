"""``curate demo``: build the offline demo world, serve its image pool, render samples."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from curate.options import Overwrite, Workers

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The offline demo world: procedural images, captions, image pool.")


@app.command("world")
def world_cmd(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="World folder (default: ./demo-out/world).")] = None,
    scale: Annotated[str, typer.Option("--scale", help="tiny (a second, sweep tests), small (seconds, tests), medium (~3k train images, "
                                                        "200k captions), large (100k pool images, 1M captions).")] = "small",
    seed: Annotated[int, typer.Option("--seed", help="Seed for rare pairs, captions and every image.")] = 0,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels (96-128 recommended).")] = 112,
    typical_share: Annotated[float | None, typer.Option(
        "--typical-share", help="Share (0-1) of each object's train images on its typical pairs, the rest spread "
                                "evenly over its other common pairs (1: every lemon is yellow; ~0.22: no dependence). "
                                "Default: the scale's per-pair counts.")] = None,
    train_images: Annotated[int | None, typer.Option(
        "--train-images", help="Train images (the same number per object); default: the scale's.")] = None,
    typical_colour_p: Annotated[float | None, typer.Option(
        "--typical-colour-p", help="Chance (0-1) that an image whose target is not a colour shows the object's "
                                   "typical colour (the visual shortcut; default 0.85).")] = None,
    workers: Workers = None,
    overwrite: Overwrite = False,
) -> None:
    """Materialise the demo world: captions + ground truth, image pool, train/heldout/rare shards.

    Resumable: a killed run continues where it stopped; rerunning with the same options does
    nothing. Writes world.json last (with the knobs' numbers when any is given).

    \b
    Examples:
      curate demo world --out demo-out/world                 # small, a few seconds
      curate demo world --out /data/world-l --scale large -w 2
      curate demo world --out w-indep --train-images 3000 --typical-share 0.22 --typical-colour-p 0
    """
    from curate.executor import LocalExecutor
    from curate.log import print_table, summary_table
    from curate.paths import default_demo_dir

    from .world import build_world

    out = out or default_demo_dir() / "world"
    t0 = time.perf_counter()
    knobs = {"typical_share": typical_share, "train_images": train_images, "typical_colour_p": typical_colour_p}
    world, summaries = build_world(out, scale, seed, size, executor=LocalExecutor(workers), overwrite=overwrite,
                                   knobs={k: v for k, v in knobs.items() if v is not None})
    if summaries:
        print_table(summary_table(summaries, title=f"demo world ({scale}, seed {seed})"))
    log.info("world at %s: %d objects, %d attributes, %d rare / %d common pairs, %s (%.1fs)", world.path,
             len(world.objects), len(world.attributes), len(world.rare_pairs), len(world.common_pairs),
             ", ".join(f"{k} {v}" for k, v in world.counts.items()), time.perf_counter() - t0)


@app.command("serve")
def serve_cmd(
    folder: Annotated[Path, typer.Argument(help="A world folder (its pool/ is served) or a pool folder.")],
    port: Annotated[int, typer.Option("--port", "-p", help="Port on 127.0.0.1 (0: any free port).")] = 8000,
) -> None:
    """Serve a demo image pool on 127.0.0.1 for manual img2dataset runs (Ctrl-C stops).

    Writes urls.parquet (url, caption, key, attr, obj) and urls.txt for the served address
    into the pool folder first.

    \b
    Example:
      curate demo serve demo-out/world --port 8000 &
      img2dataset --url_list demo-out/world/pool/urls.parquet --input_format parquet \\
        --url_col url --caption_col caption --output_format webdataset --output_folder /tmp/pool-wds
    """
    from curate.errors import CurateError
    from curate.world import pool_table_in

    from .httpserver import serve_folder, write_url_list

    table = pool_table_in(folder)
    if table is None:
        raise CurateError("no image pool here (pool/pool.parquet)", where=str(folder),
                          fix="pass a folder made by `curate demo world`")
    pool = table.parent
    with serve_folder(pool, port=port) as base:
        pq_path, txt_path = write_url_list(pool, base)
        log.info("serving %s at %s; URL lists: %s, %s (Ctrl-C stops)", pool, base, pq_path, txt_path)
        typer.echo(base)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log.info("stopped")


@app.command("render")
def render_cmd(
    pair: Annotated[str, typer.Argument(help="'ATTR OBJ', e.g. 'striped heart' or 'red crescent moon'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the JPEGs and their JSON.")],
    n: Annotated[int, typer.Option("-n", help="How many images.")] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Render N images of one attribute-object pair (the demo's text-to-image stand-in).

    \b
    Example:
      curate demo render "striped heart" -n 8 --out /tmp/striped-heart
    """
    from curate.errors import CurateError
    from curate.fsutil import write_bytes, write_json

    from .generator import DemoGenerator

    attr, _, obj = pair.strip().partition(" ")
    if not obj:
        raise CurateError(f"expected 'ATTR OBJ', got {pair!r}", fix="e.g. curate demo render 'striped heart' --out DIR")
    for key, jpeg, meta in DemoGenerator().generate(attr, obj.strip(), n, seed):
        write_bytes(out / f"{key}.jpg", jpeg)
        write_json(out / f"{key}.json", meta)
    log.info("wrote %d images of %r to %s", n, pair, out)
