"""``curate build``: dataset builders (one subcommand each)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from curate.options import ConfigFile, Decode, ExecutorName, Overwrite, RayAddress, Workers

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Build a dataset. `curate build imagenet-ao` with no options builds the offline demo.")
log = logging.getLogger(__name__)


@app.callback()
def _group() -> None:
    """Build a dataset. `curate build imagenet-ao` with no options builds the offline demo."""


# The ground-truth options, whose --help text takes several lines, named here to keep imagenet_ao's signature short.
Truth = Annotated[str | None, typer.Option(help="Ground truth for label precision/recall per funnel row: 'auto' "
                                                "(a demo world's, default), 'none', a demo world folder, or a "
                                                "parquet/CSV/JSONL file with key, attr, obj.")]
Calibrate = Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", help="Choose the attribute-check "
                                                "and composition-score thresholds from the labelled candidates "
                                                "(needs truth); the curve goes in the card.")]
TargetPrecision = Annotated[float | None, typer.Option(help="--calibrate: the label precision the chosen "
                                                            "thresholds must reach (default 0.8).")]


@app.command("imagenet-ao")
def imagenet_ao(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Dataset folder to write.")] = None,
    objects: Annotated[str | None, typer.Option(help="Objects: 'imagenet' (bundled 1000 classes) or a file.")] = None,
    attributes: Annotated[str | None, typer.Option(help="Attributes: 'vaw' (bundled 139 adjectives) or a file.")] = None,
    captions: Annotated[list[str] | None, typer.Option("--captions", help="Caption corpora: parquet/CSV/JSONL paths, folders or globs (repeatable).")] = None,
    caption_column: Annotated[str | None, typer.Option(help="Caption column (default: auto among caption, TEXT, text).")] = None,
    max_cooccurrence: Annotated[int | None, typer.Option(help="Pairs co-occurring at most this often are rare (default 0).")] = None,
    pool: Annotated[str | None, typer.Option(help="Image pool: URL list (.parquet/.csv/.txt, downloaded with img2dataset), image folder, or shards.")] = None,
    generator: Annotated[str | None, typer.Option(help="Generator backend: 'demo' or 'diffusers:PATH'.")] = None,
    model: Annotated[str | None, typer.Option(help="Embedding model spec, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k or mini:PATH.")] = None,
    images_per_pair: Annotated[int | None, typer.Option(help="At most this many images per pair (best first).")] = None,
    min_images_per_pair: Annotated[int | None, typer.Option(help="Pairs with fewer images are dropped.")] = None,
    seen_images_per_pair: Annotated[int | None, typer.Option(help="At most this many images per seen (common) pair, "
                                                                "split train/val/test (0 = --images-per-pair).")] = None,
    max_pairs: Annotated[int | None, typer.Option(help="Mine at most this many rare pairs (0 = all).")] = None,
    common_pairs: Annotated[int | None, typer.Option(help="Also mine this many common (seen) pairs for the CZSL train split.")] = None,
    export: Annotated[list[str] | None, typer.Option("--export", help="Export formats: czsl, imagefolder (repeatable).")] = None,
    reference: Annotated[str | None, typer.Option(help="Shards or dataset of ordinary images for the zero-shot table.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (splits, generator).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Torch device for the embedding model and the "
                                                                 "generator: auto, cpu, cuda, cuda:1.")] = None,
    truth: Truth = None,
    calibrate: Calibrate = None,
    target_precision: TargetPrecision = None,
    config: ConfigFile = None,
    workers: Workers = None,
    executor: ExecutorName = "local",
    address: RayAddress = None,
    decode: Decode = None,
    overwrite: Overwrite = False,
    scale: Annotated[str, typer.Option(help="Demo only: world scale (small|medium|large).")] = "medium",
) -> None:
    """Mine rare attribute-object images into an ImageNet-AO-style dataset.

    With no options: builds from the offline demo world (materialised and its mini-CLIP
    trained on first use) into ./demo-out/imagenet-ao and prints a zero-shot table.

    \b
    Real inputs:
      curate build imagenet-ao --objects imagenet --attributes vaw \\
          --captions 'laion/*.parquet' --pool urls.parquet \\
          --model open_clip:ViT-B-32/laion2b_s34b_b79k --out ao --images-per-pair 20
    Or put the same keys in build.toml and pass --config build.toml.

    \b
    Does curation help? With ground truth every funnel row gets the precision of
    what it kept and the recall of true rare-pair images (dataset.json, the card):
      curate build imagenet-ao                        # the demo world knows its truth
      curate build imagenet-ao ... --truth labels.csv # key,attr,obj: one row per pair an image shows
      curate build imagenet-ao --out ao-cal --calibrate --target-precision 0.8
    --calibrate sweeps the attribute-check and composition-score thresholds on the
    labelled candidates, prints the precision/yield curve and builds with the
    chosen point. Adding --truth to a finished build only adds the numbers.
    """
    overrides = {
        "out": str(out) if out else None, "objects": objects, "attributes": attributes, "captions": captions or None,
        "caption_column": caption_column, "max_cooccurrence": max_cooccurrence, "pool": pool, "generator": generator,
        "model": model, "images_per_pair": images_per_pair, "min_images_per_pair": min_images_per_pair,
        "seen_images_per_pair": seen_images_per_pair,
        "max_pairs": max_pairs, "common_pairs": common_pairs, "export": export or None, "reference": reference,
        "seed": seed, "device": device, "truth": truth, "calibrate": calibrate, "target_precision": target_precision,
        "decode": decode,
    }
    cfg = _config(config, overrides, demo_inputs=not captions and not pool and not generator, scale=scale,
                  workers=workers)
    from .imagenet_ao.pipeline import build

    res = build(cfg, workers=workers, executor=executor, address=address, overwrite=overwrite)
    _report(res, cfg)


def _config(config: Path | None, overrides: dict, *, demo_inputs: bool, scale: str, workers: int | None):
    """The build's BuildConfig, validated: --config's TOML (or, with neither --config nor --captions, --pool or
    --generator, the demo world's, ``demo_inputs``) under the command-line ``overrides``."""
    from curate.config import load_toml, merge

    from .imagenet_ao.config import BuildConfig, validate

    cfg = load_toml(config, BuildConfig) if config else None
    if cfg is None and demo_inputs:
        from .imagenet_ao.demo import demo_config

        validate(merge(BuildConfig(), overrides))  # a typo fails before the demo world is made
        cfg = demo_config(scale=scale, workers=workers)
    cfg = merge(cfg or BuildConfig(), overrides)
    validate(cfg)  # every option, path and model spec, before the output folder opens or any stage runs
    return cfg


def _report(res, cfg) -> None:
    from rich.table import Table

    from curate.log import console

    from .imagenet_ao.truth import pct

    table = Table(title="ImageNet-AO funnel" + (" (label precision and rare-pair recall against the ground truth)"
                                                if res.truth else ""))
    cols = ("stage", "kept", "removed", *(("precision", "recall") if res.truth else ()), "note")
    for c in cols:
        table.add_column(c, justify="left" if c in ("stage", "note") else "right")
    for f, m in zip(res.funnel, res.truth or [None] * len(res.funnel), strict=True):
        measured = (pct(m and m["precision"]), pct(m and m["recall"])) if res.truth else ()
        table.add_row(f.stage, f"{f.count:,}", f"{f.removed:,}", *measured, f.note)
    console.print(table)
    if res.calibration:
        _print_calibration(res.calibration)
    console.print(f"[bold green]dataset ready:[/] {res.out}  ({res.counts['samples']} images, "
                  f"{res.counts['pairs']} pairs; card: {res.out / 'README.md'})")
    if cfg.reference:
        console.print(f"next: `curate eval zeroshot {res.out}` (rare pairs vs {cfg.reference})")


def _print_calibration(cal: dict) -> None:
    """The precision/yield curve of the chosen attribute margin, and the chosen point."""
    from rich.table import Table

    from curate.log import console

    from .imagenet_ao.calibrate import curve_rows, margin_label, summary_line
    from .imagenet_ao.truth import pct

    table = Table(title="calibration: precision / yield over the composition-score threshold "
                        f"(attribute margin {margin_label(cal['chosen']['margin'])})")
    for c in ("comp >=", "passing", "precision", "est. images", "est. pairs", "est. precision", ""):
        table.add_column(c, justify="right")
    for p in curve_rows(cal):
        chosen = p["comp"] == cal["chosen"]["comp"]
        table.add_row(f"{p['comp']:g}", f"{p['passing']:,}", pct(p["precision"]), f"{p['dataset_images']:,}",
                      str(p["dataset_pairs"]), pct(p["dataset_precision"]), "[bold]chosen[/]" if chosen else "")
    console.print(table)
    console.print(f"calibration: {summary_line(cal)}")
