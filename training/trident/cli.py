"""``curate train trident`` and ``curate eval czsl``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from curate.options import Decode, Device, Overwrite


def register(train_app: typer.Typer, eval_app: typer.Typer) -> None:
    train_app.command("trident")(train_cmd)
    eval_app.command("czsl")(eval_cmd)


# The options whose --help text takes several lines, named here so that train_cmd's signature stays one line each.
BnGroups = Annotated[str | None, typer.Option("--bn-groups", help="official (default): the FAA's BatchNorm "
                                                                  "per image group, as the official step; "
                                                                  "joint: one batch of the distinct images.")]
Partners = Annotated[str | None, typer.Option("--partners", help="official (default): an anchor without a "
                                                                 "partner gets the last training image, kept "
                                                                 "in the pair/orthogonality losses; drop: "
                                                                 "left out.")]
CacheFeatures = Annotated[bool, typer.Option("--cache-features/--online", help="Compute the frozen token "
                                                                               "features once (fp16 cache) "
                                                                               "or run the backbone every "
                                                                               "step.")]


def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="A CZSL root (images/, compositional-split-natural/, "
                                                      "metadata .t7), a curate dataset folder, or a demo world.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints, metrics.jsonl, report.md.")],
    preset: Annotated[str, typer.Option("--preset", help="mit-states | cgqa | vaw | demo (official (G, L), "
                                                         "alpha, top-k; demo: small widths for CPU).")] = "demo",
    aux: Annotated[Path | None, typer.Option("--aux", help="aux_label.jsonl (default: ROOT/aux_label/, the "
                                                           "dataset's own, or the dataset above an export).")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", help="Frozen image tower: open_clip:ARCH//ckpt, "
                                                                    "hf:/path, mini:PATH (default: the model the "
                                                                    "dataset was built with).")] = None,
    projector: Annotated[Path | None, typer.Option("--projector", help="LLaVA-1.5 mm_projector weights "
                                                                       "(frozen); default a learned projection.")]
    = None,
    word_embeddings: Annotated[str, typer.Option("--word-embeddings", help="glove:FILE | hf:/path | minilm | "
                                                                           "gguf[:PATH] | auto (bundled GGUF, "
                                                                           "else MiniLM).")] = "auto",
    model: Annotated[str | None, typer.Option("--model", help="trident, or linear (baseline: linear maps of "
                                                              "frozen features and word vectors).")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="Attribute smoothing (0: off).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override the preset's 50.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Global batch (preset: 128).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the preset's 124.")] = None,
    bn_groups: BnGroups = None,
    partners: Partners = None,
    cache_features: CacheFeatures = True,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Feature cache folder (default: "
                                                                       "$CURATE_CACHE/trident-features/...).")]
    = None,
    feasibility: Annotated[str, typer.Option("--feasibility", help="Open-world feasibility: auto | captions "
                                                                   "(pairs.parquet) | words | none.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last "
                                                          "checkpoint.")] = False,
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="DataLoader workers (default: 4 on CUDA, "
                                                                      "0 on CPU).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads.")] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="Stop training after this long.")]
    = None,
    device: Device = "auto",
    decode: Decode = None,
    overwrite: Overwrite = False,
) -> None:
    """Train TRIDENT (compositional zero-shot learning) on a dataset and report CZSL metrics.

    Frozen CLIP token features (penultimate layer: CLS global, patches local), feature adaptive
    aggregation, condition masks, attribute/object disentanglement over same-attribute and
    same-object image pairs, attribute smoothing with the auxiliary attributes of `curate
    attributes`. Checkpoints every epoch (--resume), best model by validation AUC, then the
    best model on val and test, closed and open world: RUN/report.md, RUN/results.json,
    RUN/curves.png, RUN/metrics.jsonl. Under torchrun every rank trains on its share.

    \b
    Examples:
      curate train trident --data demo-out/imagenet-ao --out runs/demo
      curate train trident --data demo-out/world --out runs/world      # the world, exported to CZSL once
      curate train trident --data mit-states/ --preset mit-states --word-embeddings glove:llava_mit.txt \\
          --backbone hf:/models/clip-vit-large-patch14-336 --projector mm_projector.bin --out runs/mit
      torchrun --nproc-per-node 8 -m curate.cli train trident --data cgqa/ --preset cgqa ... --device cuda
      curate train trident --data vaw-czsl/ --preset vaw --out runs/vaw --resume
    """
    from .train import TrainRequest, train_trident

    _check_inputs(data, aux, projector, backbone)
    overrides: dict[str, Any] = {"model": model, "alpha": alpha, "epochs": epochs, "batch_size": batch_size,
                                 "seed": seed, "bn_groups": bn_groups, "partners": partners, "decode": decode}
    req = TrainRequest(data=data, out=out, preset=preset, backbone=backbone, projector=projector, aux=aux,
                       word_embeddings=word_embeddings, device=device, cache_features=cache_features,
                       cache_dir=cache_dir, resume=resume, overwrite=overwrite, workers=workers,
                       overrides=overrides, max_seconds=max_seconds, feasibility=feasibility, threads=threads)
    _report(train_trident(req), out)


def _check_inputs(data: Path, aux: Path | None, projector: Path | None, backbone: str | None) -> None:
    """--data, --aux and --projector exist and --backbone's spec parses, before anything is loaded or written."""
    from curate.embed.backends import check_spec_syntax
    from curate.paths import must_exist

    must_exist(data, "--data", fix="pass a CZSL root (images/, compositional-split-natural/) or a curate dataset")
    for what, path in (("--aux", aux), ("--projector", projector)):
        if path is not None:
            must_exist(path, what)
    if backbone:
        check_spec_syntax(backbone)


def _report(results: dict, out: Path) -> None:
    """The closed-world metrics table and where the report is (nothing when no closed-world results came back)."""
    from curate.log import console

    from .report import metrics_table

    if results.get("closed"):
        console.print(metrics_table(results), markup=False, highlight=False)
        console.print(f"wrote {out / 'report.md'}")


# `curate eval czsl --decode`: the shared option's modes, with a default that depends on what is scored
RunDecode = Annotated[str | None, typer.Option(
    "--decode", help="How JPEGs are decoded for the model: fast (at the smallest 1/2, 1/4 or 1/8 DCT scale "
                     "that still covers its input size) or exact (full size). Default: a run's own mode "
                     "(its config), fast with --zero-shot.")]


def _zero_shot_model(model: str | None, data: Path) -> str:
    """--zero-shot's model: --model, else the one the data was built with; its spec's syntax checked."""
    from curate.embed.backends import check_spec_syntax
    from curate.errors import CurateError

    from .run import default_backbone

    model = model or default_backbone(data)
    if not model:
        raise CurateError("no --model given and the data does not name the model it was built with",
                          where=str(data), fix="curate eval czsl --zero-shot --model SPEC --data DIR")
    check_spec_syntax(model)
    return model


def eval_cmd(
    data: Annotated[Path, typer.Option("--data", help="The CZSL root, dataset folder or demo world to score.")],
    run_arg: Annotated[str | None, typer.Argument(metavar="RUN", help="Run folder of `curate train trident` (omit with "
                                                    "--zero-shot).")] = None,
    split: Annotated[str, typer.Option("--split", help="val or test.")] = "test",
    open_world: Annotated[bool, typer.Option("--open-world", help="Also score every attribute x object pair "
                                                                  "(feasibility threshold chosen on val).")]
    = False,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="No training: score a CLIP model with 'a photo "
                                                                "of {attr} {obj}' (--model).")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="--zero-shot: the model spec (default: the "
                                                                    "one the dataset was built with).")] = None,
    feasibility: Annotated[str, typer.Option("--feasibility", help="auto | captions | words | none.")] = "auto",
    feasibility_table: Annotated[Path | None, typer.Option("--feasibility-table", help="pairs.parquet with "
                                                                                      "caption co-occurrences.")]
    = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="model.safetensors to score (default "
                                                                         "RUN/best).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="--zero-shot: folder for "
                                                               "czsl-zero-shot-MODEL-SPLIT.{json,md} (default "
                                                               "DATA/eval).")] = None,
    device: Device = "auto",
    decode: RunDecode = None,
) -> None:
    """CZSL metrics (ExplainableML/czsl Evaluator): seen, unseen, HM, AUC, attribute/object accuracy.

    Scores a trained run's best model (or --checkpoint) on --split, closed world, and with
    --open-world every attribute x object pair too. Writes RUN/eval-SPLIT.json; with --zero-shot,
    DATA/eval/czsl-zero-shot-MODEL-SPLIT.json and .md (or under --out).

    \b
    Examples:
      curate eval czsl runs/demo --data demo-out/imagenet-ao --split test --open-world
      curate eval czsl --zero-shot --data demo-out/imagenet-ao   # its own model
      curate eval czsl --zero-shot --model SPEC --data mit-states/
    """
    from curate.errors import CurateError
    from curate.images import DEFAULT_DECODE, check_decode
    from curate.log import console

    from .report import metrics_table, write_zero_shot_report
    from .results import evaluate_run, evaluate_zero_shot

    if split not in ("val", "test"):
        raise CurateError(f"--split must be val or test, got {split!r}")
    if decode is not None:
        check_decode(decode)
    if zero_shot and run_arg and model is None and ":" in run_arg and not Path(run_arg).exists():
        model, run_arg = run_arg, None  # the older form `--zero-shot SPEC` (a str: Path would fold ARCH//ckpt)
    run = Path(run_arg) if run_arg else None
    from curate.paths import must_exist

    for what, path in (("--data", data), ("RUN", run), ("--checkpoint", checkpoint)):
        if path is not None:
            must_exist(path, what)
    if zero_shot:
        model = _zero_shot_model(model, data)
        res = evaluate_zero_shot(model, data, split, open_world, device, feasibility, feasibility_table,
                                 decode or DEFAULT_DECODE)
        written = write_zero_shot_report(out or data / "eval", res, model, data, split)
    elif model is not None:
        raise CurateError("--model is for --zero-shot; a trained run is scored with its own model",
                          fix="curate eval czsl --zero-shot --model SPEC --data DIR, or curate eval czsl RUN --data DIR")
    elif run is None:
        raise CurateError("give a RUN folder, or --zero-shot", fix="curate eval czsl RUN --data DIR")
    else:
        res = evaluate_run(run, data, split, open_world, device, feasibility, feasibility_table, checkpoint,
                           decode=decode)
        written = run / f"eval-{split}.json"
    console.print(metrics_table(res), markup=False, highlight=False)
    console.print(f"wrote {written}" + (f" and {written.with_suffix('.json')}" if written.suffix == ".md" else ""))
