"""``curate eval`` (evaluate models on a dataset) and ``curate model`` (backends, the demo mini-CLIP)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.options import Decode, Device, Overwrite

model_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Models: list the backend spec forms, train and evaluate the demo mini-CLIP.")
eval_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evaluate models on a dataset.")
train_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Train the bundled models on a dataset to show the data is useful.")


@train_app.callback()
def _train_group() -> None:
    """Train the bundled models: `curate train trident --data DIR --out RUN`, `curate train cir ...`."""


@eval_app.callback()
def _group() -> None:
    """Evaluate models on a dataset: `curate eval zeroshot DATASET`."""


@eval_app.command("zeroshot")
def zeroshot(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder built by `curate build imagenet-ao`.")],
    model: Annotated[str | None, typer.Option(help="Model spec (default: the one the dataset was built with).")] = None,
    reference: Annotated[str | None, typer.Option(
        help="Ordinary (common-pair) images: a dataset folder, shards with attr/obj JSON, an image folder "
             "(CLASS/IMG or SPLIT/CLASS/IMG; class = object, attr_obj, or an ImageNet wnid with "
             "LOC_synset_mapping.txt beside it) or a CZSL root (its seen pairs).")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write zeroshot.json/.md (default DATASET/eval).")] = None,
    include_rejected: Annotated[bool, typer.Option(help="Also evaluate samples a reviewer rejected.")] = False,
    device: Device = "auto",
    decode: Decode = "fast",
) -> None:
    """Zero-shot object and composition top-1/top-5 on the rare set vs a reference set.

    The reference can be any labelled image collection you have: our dataset folders and shards,
    an ImageNet-style image folder (object columns only when classes are plain objects) or a CZSL
    root such as MIT-States (images of its seen pairs). Writes DATASET/eval/zeroshot.{json,md}.

    \b
    Examples:
      curate eval zeroshot demo-out/imagenet-ao --reference demo-out/world/heldout
      curate eval zeroshot ao --model open_clip:ViT-B-32/openai --reference imagenet/val
      curate eval zeroshot ao --reference mit-states/          # a CZSL root: its seen pairs
      curate eval zeroshot ao --reference other-ao/exports/imagefolder
    """
    import json

    from curate.errors import CurateError
    from curate.images import check_decode
    from curate.log import console
    from curate.paths import must_exist

    from .zeroshot import evaluate_dataset, markdown_table

    must_exist(dataset, fix="give the dataset folder made by `curate build imagenet-ao`")
    if reference is not None:
        must_exist(reference, "--reference", fix="give a dataset folder, shards, an image folder or a CZSL root")
    info = dataset / "dataset.json"
    built = json.loads(info.read_text()).get("config", {}) if info.exists() else {}
    model = model or built.get("model")
    if not model:
        raise CurateError("no --model given and the dataset does not name one", where=str(dataset))
    from curate.embed.backends import check_spec_syntax

    check_spec_syntax(model)
    extra = {}
    if reference is None and built.get("reference"):
        reference = built["reference"]
        from curate.world import RARE, is_world, split_dir

        world = Path(reference).parent
        if is_world(world) and split_dir(world, RARE).is_dir():  # the demo world
            extra["world rare pairs (unfiltered)"] = split_dir(world, RARE)
    report = evaluate_dataset(dataset, model, reference=reference, device=device, out=out,
                              include_rejected=include_rejected, extra=extra, decode=check_decode(decode))
    console.print(markdown_table(report))


@model_app.command("list")
def list_models() -> None:
    """Print the model spec forms every command accepts (--model SPEC).

    Example: curate model list
    """
    from curate.embed.backends import SPEC_FORMS

    for form, what in SPEC_FORMS:
        typer.echo(f"{form}\t{what}")


@model_app.command("train-mini")
def train_mini_cmd(
    world: Annotated[Path, typer.Option("--world", help="Demo world folder (curate demo world --out DIR).")],
    out: Annotated[Path | None, typer.Option("--out", help="Model folder (default: the cache, keyed by world.json).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs (default from the config).")] = None,
    seconds: Annotated[float | None, typer.Option("--max-seconds", help="Stop training after this many seconds.")] = None,
    threads: Annotated[int, typer.Option("--threads", help="Torch CPU threads.")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Training seed (initialisation, batch order); another seed "
                                      "gives an independent evaluator (`curate eval study`).")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Train the demo mini-CLIP on the world's common pairs, then report zero-shot accuracy.

    Trains a small CNN image tower and a word-vocabulary text tower with a contrastive loss on
    WORLD/train (common pairs only), on CPU in a few minutes, and writes model.safetensors,
    config.json, vocab.json and report.json (object/attribute top-1/top-5 on held-out common
    pairs vs rare pairs). Cached: a second call with the same world returns at once.

    Example: curate model train-mini --world demo-out/world
    """
    from .models.mini_clip import MiniClipConfig, ensure_mini_clip, read_report
    from .zeroshot import print_world_report

    cfg = MiniClipConfig()
    if epochs is not None:
        cfg.epochs = epochs
    if seconds is not None:
        cfg.max_seconds = seconds
    cfg.threads = threads
    cfg.seed = seed
    folder = ensure_mini_clip(world, config=cfg, out=out, overwrite=overwrite)
    print_world_report(read_report(folder))
    typer.echo(str(folder))


@model_app.command("build-mllm")
def build_mllm_cmd(
    world: Annotated[Path, typer.Option("--world", help="Demo world folder (curate demo world --out DIR).")],
    out: Annotated[Path | None, typer.Option("--out", help="Model folder (default: the cache, keyed by the world, "
                                             "the mini-CLIP and the config).")] = None,
    mini: Annotated[Path | None, typer.Option("--mini", help="Mini-CLIP folder whose image tower it imitates "
                                              "(default: the world's cached one, trained if needed).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Build seed (initialisation, batch order).")] = 0,
    threads: Annotated[int, typer.Option("--threads", help="Torch CPU threads.")] = 2,
    overwrite: Overwrite = False,
) -> None:
    """Build the demo MLLM: a small LLaVA-style model for `curate train cir --model mllm --mllm hf:PATH`.

    A ViT vision tower distilled from the demo mini-CLIP, a projector and a small causal language
    model over the world's vocabulary, trained on the world's captions, its captioned train images
    and one-word instruction data (a train image or caption + "... in one word:" -> its object or
    attribute, what a real MLLM's instruction tuning gives), on CPU in a few minutes; saved with save_pretrained (LlavaForConditionalGeneration + processor).
    Cached: a second call with the same world, mini-CLIP and seed returns at once. Prints hf:FOLDER.

    Example: curate model build-mllm --world demo-out/world
    """
    from .models.demo_mllm import DemoMllmConfig, ensure_demo_mllm

    folder = ensure_demo_mllm(world, DemoMllmConfig(seed=seed, threads=threads), out=out, mini=mini,
                              overwrite=overwrite)
    typer.echo(f"hf:{folder.resolve()}")


@model_app.command("eval-mini")
def eval_mini_cmd(
    model: Annotated[Path, typer.Argument(help="Mini-CLIP folder.")],
    world: Annotated[Path, typer.Option("--world", help="Demo world folder with heldout/ and rare/.")],
) -> None:
    """Zero-shot object/attribute accuracy of a mini-CLIP on held-out common vs rare pairs.

    Example: curate model eval-mini ~/.cache/curate/mini-clip/ab12cd34ef56 --world demo-out/world
    """
    from .zeroshot import evaluate_world, print_world_report

    print_world_report(evaluate_world(f"mini:{model}", world))


# Each trainer registers its `curate train NAME` and `curate eval NAME` commands: a module
# with ``register(train_app, eval_app)``.
TRAINER_CLIS = ("training.trident.cli", "training.cir.cli", "training.study.cli")


def _register_trainers() -> None:
    import importlib

    for name in TRAINER_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                continue  # that trainer is not in this version
            raise
        module.register(train_app, eval_app)


_register_trainers()
