"""Build configuration: every option of `curate build imagenet-ao`, loadable from TOML."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from curate.errors import CurateError
from curate.images import check_decode


@dataclass
class BuildConfig:
    """Options of an ImageNet-AO build. ``--config build.toml`` holds the same keys."""

    out: str = ""
    objects: str = "imagenet"               # "imagenet" | FILE (txt/csv/world.json)
    attributes: str = "vaw"                 # "vaw" | FILE
    captions: list[str] = field(default_factory=list)  # caption corpora (parquet/CSV/JSONL, globs)
    caption_column: str | None = None
    max_cooccurrence: int = 0               # pairs with count <= this are rare
    pool: str | None = None                 # URL list | folder of images | shards
    generator: str | None = None            # "demo" | "diffusers:PATH"
    generator_images: int = 8               # images generated per pair
    model: str = ""                         # embedding model spec (see `curate model list`)
    images_per_pair: int = 10               # cap per pair (best composition score first)
    seen_images_per_pair: int = 0           # cap per seen (common) pair, whose images are split train/val/test
                                            # (0 = images_per_pair): a CZSL train split worth training on
    seen_retrieve_k: int = 0                # pool candidates retrieved per seen pair (0 = retrieve_k)
    seen_generator_images: int = 0          # images generated per seen pair (0 = generator_images)
    min_images_per_pair: int = 3            # pairs with fewer images are dropped
    retrieve_k: int = 40                    # pool candidates retrieved per pair
    max_pairs: int = 0                      # limit the number of rare pairs mined (0 = all)
    common_pairs: int = 0                   # common (seen) pairs mined the same way for CZSL train
    object_topk: int = 5
    attribute_check: bool = True
    comp_threshold: float = 0.0
    dedup_threshold: float = 0.95
    min_resolution: int = 64
    image_size: int = 256                   # resize on download (img2dataset)
    download_timeout: int = 10              # seconds img2dataset waits for one URL's answer (a URL pool)
    val_fraction: float = 0.5               # share of unseen (rare) pairs in val; the rest is test
    seen_val_fraction: float = 0.15         # share of seen-pair images in val (and again in test)
    seed: int = 0
    export: list[str] = field(default_factory=lambda: ["czsl"])
    min_shards_per_split: int = 8           # shards per split (fewer only when a split has fewer samples):
                                            # a DataLoader / clip-retrieval with up to 8 workers gets a shard each
    batch_size: int = 64
    device: str = "auto"
    decode: str = "fast"                    # JPEG decode for the model: fast (DCT scaling) | exact (full size)
    reference: str | None = None            # reference (ordinary) images for the zero-shot table
    truth: str = "auto"                     # ground truth: auto (a demo world's) | none | world folder |
                                            # FILE (key, attr, obj): precision/recall per funnel row
    calibrate: bool = False                 # choose the attribute and composition thresholds from the truth
    target_precision: float = 0.8           # --calibrate: the label precision the chosen point must reach


# numeric options: (lowest, highest); None = unbounded
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "max_cooccurrence": (0, None), "generator_images": (1, None), "images_per_pair": (1, None),
    "min_images_per_pair": (1, None), "retrieve_k": (1, None), "max_pairs": (0, None), "common_pairs": (0, None),
    "object_topk": (1, None), "min_resolution": (0, None), "image_size": (8, None), "download_timeout": (1, None),
    "val_fraction": (0.0, 1.0), "seen_val_fraction": (0.0, 0.5), "min_shards_per_split": (1, None),
    "batch_size": (1, None), "seen_images_per_pair": (0, None), "seen_retrieve_k": (0, None),
    "seen_generator_images": (0, None),
}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(cfg: BuildConfig) -> None:
    """Check the options that are set before the output folder opens, so a typo costs nothing:
    export formats, generator spec, pool, caption paths, vocabulary files, model spec, reference,
    device and numeric ranges (cheap checks: paths exist, specs parse; nothing is loaded). What a
    build needs at all (out, captions, an image source, a model) and its truth are checked by
    ``pipeline.check_options`` at the top of ``build``, also before the folder opens."""
    from curate.embed.backends import check_model_available
    from curate.paths import must_exist
    from curate.shards import list_shards

    from .exports import FORMATS
    from .generators import GENERATOR_FORMS, split_spec
    from .pool import URL_LIST_SUFFIXES, pool_kind
    from .rarity import list_caption_files

    for fmt in cfg.export:
        if fmt not in FORMATS:
            raise CurateError(f"unknown export format {fmt!r}", fix=f"--export one of: {', '.join(FORMATS)}")
    for name, (low, high) in _RANGES.items():
        value = getattr(cfg, name)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise CurateError(f"{_option(name)} must be {bounds}, got {value}")
    if cfg.min_images_per_pair > cfg.images_per_pair:
        raise CurateError(f"--min-images-per-pair {cfg.min_images_per_pair} is above --images-per-pair "
                          f"{cfg.images_per_pair}: every pair would be dropped", fix="lower --min-images-per-pair")
    if 0 < cfg.seen_images_per_pair < cfg.min_images_per_pair:
        raise CurateError(f"--seen-images-per-pair {cfg.seen_images_per_pair} is below --min-images-per-pair "
                          f"{cfg.min_images_per_pair}: every seen pair would be dropped",
                          fix="raise --seen-images-per-pair (0: the same cap as --images-per-pair)")
    if cfg.device != "auto" and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", cfg.device):
        raise CurateError(f"unknown --device {cfg.device!r}", fix="use auto, cpu, cuda or cuda:N")
    check_decode(cfg.decode)
    if cfg.generator and cfg.generator != "demo":
        if not cfg.generator.startswith("diffusers:"):
            raise CurateError(f"unknown generator {cfg.generator!r}", fix=f"use one of: {GENERATOR_FORMS}")
        path, _options = split_spec(cfg.generator)  # bad ?options are refused here
        must_exist(path, "the diffusers pipeline folder of --generator", fix=GENERATOR_FORMS)
        if not (Path(path) / "model_index.json").is_file():
            raise CurateError("not a diffusers pipeline folder (no model_index.json)", where=path,
                              fix="give a folder written by save_pretrained / huggingface-cli download")
        if importlib.util.find_spec("diffusers") is None:
            raise CurateError("--generator diffusers:PATH needs the diffusers package",
                              fix='pip install -c constraints.txt -e ".[models]"')
    if cfg.pool:
        must_exist(cfg.pool, "--pool", fix="give a folder of images or shards, a shard glob like 'pool/*.tar', "
                                        f"or a URL list ({', '.join(URL_LIST_SUFFIXES)})")
        if pool_kind(cfg.pool) == "shards":
            list_shards(cfg.pool)
    for spec in cfg.captions:
        must_exist(spec, "--captions", fix="give parquet/CSV/JSONL files, folders or globs like 'captions/*.parquet'")
    if cfg.captions:
        list_caption_files(cfg.captions)
    for name, value, bundled in (("--objects", cfg.objects, "imagenet"), ("--attributes", cfg.attributes, "vaw")):
        if value != bundled:  # parsed right after the folder opens (a bad file there still writes nothing)
            must_exist(value, name, fix=f"give a vocabulary file (txt, CSV, a demo world.json) or {bundled!r}")
    if cfg.model:
        check_model_available(cfg.model)
    if cfg.reference:
        must_exist(cfg.reference, "--reference", fix="give a dataset folder, shards or an image folder of ordinary images")
