"""The offline demo build: the demo world stands in for LAION captions, an image pool and
DALL-E/SDXL; the mini-CLIP trained on the world's common pairs stands in for CLIP."""

from __future__ import annotations

import logging

from curate.paths import default_demo_dir

from .config import BuildConfig

log = logging.getLogger(__name__)


def demo_config(scale: str = "medium", workers: int | None = None, seed: int = 0) -> BuildConfig:
    """Materialise the world and the mini-CLIP if needed; return a config that mines them."""
    from builders.synthetic.world import ensure_world
    from curate.embed.backends import demo_model_spec
    from curate.world import HELDOUT

    base = default_demo_dir()
    world_dir = base / "world"
    log.info("demo world: %s (scale %s)", world_dir, scale)
    world = ensure_world(world_dir, scale=scale, seed=seed)
    model = demo_model_spec(world.path)
    return BuildConfig(
        out=str(base / "imagenet-ao"),
        objects=str(world.meta_path),
        attributes=str(world.meta_path),
        captions=[str(world.captions_dir)],
        pool=str(world.pool_images_dir),
        generator="demo",
        generator_images=12,
        model=model,
        images_per_pair=8,
        min_images_per_pair=2,
        retrieve_k=30,
        # seen pairs: enough images that a CZSL train split is worth training on (about 70 % of them
        # land in train); the pool holds fewer than 40 true images for most common pairs, so the
        # generator makes up the rest
        seen_images_per_pair=64,
        seen_retrieve_k=120,
        seen_generator_images=64,
        common_pairs=24,
        object_topk=3,
        export=["czsl", "imagefolder"],
        reference=str(world.split_dir(HELDOUT)),
        seed=seed,
    )
