"""``curate triplets``: mine composed-image-retrieval triplets and export CIRR/CIRCO/FashionIQ/shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.options import Decode, Device, Overwrite

app = typer.Typer(add_completion=False, rich_markup_mode=None)


def _csv(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


# The options whose --help text takes several lines, named here so that triplets' signature stays short.
Modes = Annotated[list[str] | None, typer.Option(
    "--mode", help="attribute (same object, other attribute), object (same attribute, other object), "
                   "caption (captions differing in one word). Repeat or comma-separate. "
                   "Default: attribute,object.")]
SplitBy = Annotated[str, typer.Option(
    "--split-by", help="composition (default: each attribute-object pair, or caption, held out whole, so no "
                       "test or val edit, reference or target occurs in train), edit (each edit mined in one "
                       "split, images split one by one: test compositions are seen in training, test edits "
                       "and images are not) or image (each image on its own: test edits are also training "
                       "edits).")]
FashionIqCategories = Annotated[str, typer.Option(
    "--fashioniq-categories",
    help="How reference objects become FashionIQ's categories (CLIP4Cir's loader accepts only dress, "
         "shirt, toptee): auto (balanced over the three), OBJ=NAME,...[,*=NAME], or objects (our "
         "object names; CLIP4Cir refuses them). Recorded in triplets.json and "
         "fashioniq/category_map.json.")]


@app.command()
def triplets(
    dataset: Annotated[Path | None, typer.Argument(
        help="Dataset folder (manifest.parquet + shards/) or a folder of captioned .tar shards. "
             "Default: the demo dataset made by `curate build imagenet-ao`.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: DATASET/triplets).")] = None,
    mode: Modes = None,
    edit_text: Annotated[str, typer.Option("--edit-text", help="template (varied templates) or llm "
                                                               "(LLM rewrite, validated, template fallback).")] = "template",
    llm: Annotated[str, typer.Option("--llm", help="LLM spec for --edit-text llm: local, local:PATH.gguf or "
                                                    "openai:MODEL@BASE_URL.")] = "local",
    formats: Annotated[str, typer.Option("--format", help="Comma list of exports: shards,cirr,circo,fashioniq "
                                                         "(default), and genecis (per-query small galleries).")]
    = "shards,cirr,circo,fashioniq",
    splits: Annotated[str, typer.Option("--splits", help="Image-level split ratios summing to 1, or 'manifest' "
                                                          "to use the manifest's split column.")]
    = "train=0.8,val=0.1,test=0.1",
    split_by: SplitBy = "composition",
    max_per_pair: Annotated[int, typer.Option("--max-per-pair", help="At most this many triplets per "
                                                                      "(reference, target) composition.")] = 10,
    max_triplets: Annotated[int | None, typer.Option("--max-triplets", help="Overall cap, taken round-robin "
                                                                             "over compositions.")] = None,
    negatives: Annotated[int, typer.Option("--negatives", help="Hard negatives recorded per triplet.")] = 5,
    model: Annotated[str | None, typer.Option("--model", help="Embedding model spec used when DATASET has no "
                                                               "embeddings/ (e.g. mini:PATH, open_clip:ARCH/TAG).")]
    = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for splits, sampling and template choice.")] = 0,
    include_rejected: Annotated[bool, typer.Option("--include-rejected",
                                                   help="Keep samples a reviewer rejected.")] = False,
    circo_max_gts: Annotated[int, typer.Option("--circo-max-gts", help="Ground truths kept per CIRCO query "
                                                                        "(the CIRCO loader allows 23).")] = 23,
    fashioniq_categories: FashionIqCategories = "auto",
    min_shards: Annotated[int, typer.Option("--min-shards", help="At least this many triplet shards per split "
                                                                 "(a shard per DataLoader worker).")] = 8,
    device: Device = "auto",
    decode: Decode = "fast",
    overwrite: Overwrite = False,
) -> None:
    """Mine (reference image, modification text, target image) triplets from a dataset.

    Targets are the nearest images (CLIP space) of the edited composition; hard negatives
    (same composition as the reference, or the new word with the wrong other word) are
    recorded. Writes triplets.parquet/json and CIRR, CIRCO, FashionIQ and WebDataset exports,
    each readable by the benchmark's official loader unmodified (FashionIQ: objects mapped onto
    dress/shirt/toptee; CIRCO: semantic_aspects from the edit type), and a README.md whose
    header lets datasets.load_dataset(OUT) open the shards. Rerun the same command to resume.

    \b
    Examples:
      curate build imagenet-ao && curate triplets
      curate triplets demo-out/imagenet-ao --mode attribute --mode object --max-per-pair 5
      curate triplets shards/ --mode caption --format shards,circo --out cir-triplets
      curate triplets DATASET --edit-text llm --llm openai:qwen2@http://127.0.0.1:8000/v1
      curate triplets DATASET --format shards,cirr,circo,fashioniq,genecis
      curate triplets DATASET --fashioniq-categories 'heart=dress,star=shirt,*=toptee'
    """
    from .config import TripletsConfig
    from .pipeline import build_triplets

    ds = _checked_dataset(dataset, model)
    cfg = TripletsConfig(
        dataset=str(ds), out=str(out if out is not None else Path(ds) / "triplets"),
        modes=_csv(mode) or ["attribute", "object"], edit_text=edit_text, llm=llm, formats=_csv([formats]),
        splits=splits, split_by=split_by, max_per_pair=max_per_pair, max_triplets=max_triplets, negatives=negatives, seed=seed,
        include_rejected=include_rejected, model=model, device=device, circo_max_gts=circo_max_gts,
        fashioniq_categories=fashioniq_categories, min_shards=min_shards, decode=decode,
    )
    _report(build_triplets(cfg, overwrite=overwrite), cfg.out)


def _checked_dataset(dataset: Path | None, model: str | None) -> Path:
    """DATASET (default: the demo dataset), checked to exist, and --model's syntax: before the output folder
    (DATASET/triplets by default) is made."""
    from curate.embed.backends import check_spec_syntax
    from curate.paths import must_exist

    from .pipeline import default_dataset

    ds = dataset if dataset is not None else default_dataset()
    must_exist(ds, fix="give a dataset folder made by `curate build imagenet-ao` or a folder of captioned .tar shards")
    if model:
        check_spec_syntax(model)
    return ds


def _report(info: dict, out: str) -> None:
    """The line saying how many triplets were mined, by mode and split, and where they are."""
    from curate.log import console

    c = info["counts"]
    console.print(f"{c['triplets']} triplets {c['by_mode']} {c['by_split']} (split by {info['split']['split_by']}) "
                  f"-> {out}")
