"""Build configuration: every option of `curate build imagenet-ao`, loadable from TOML."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    val_fraction: float = 0.5               # share of unseen (rare) pairs in val; the rest is test
    seen_val_fraction: float = 0.15         # share of seen-pair images in val (and again in test)
    seed: int = 0
    export: list[str] = field(default_factory=lambda: ["czsl"])
    min_shards_per_split: int = 8           # shards per split (fewer only when a split has fewer samples):
                                            # a DataLoader / clip-retrieval with up to 8 workers gets a shard each
    batch_size: int = 64
    device: str = "auto"
    reference: str | None = None            # reference (ordinary) images for the zero-shot table
    truth: str = "auto"                     # ground truth: auto (a demo world's) | none | world folder |
                                            # FILE (key, attr, obj): precision/recall per funnel row
    calibrate: bool = False                 # choose the attribute and composition thresholds from the truth
    target_precision: float = 0.8           # --calibrate: the label precision the chosen point must reach
