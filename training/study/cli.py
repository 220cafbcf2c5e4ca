"""``curate eval study``: many models, one table (registered on the eval app by training/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.options import Decode, Device, Overwrite


def study_cmd(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder built by `curate build imagenet-ao` (its rare set is OoD).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder (scores cached per model; reused to add models).")],
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Zero-shot model spec, or LABEL=SPEC (repeatable); group `clip`.")] = None,
    models: Annotated[Path | None, typer.Option(
        "--models", help="Models file: CSV/TSV with a header (spec,label,group,method,corpus,nmi,epochs) or a JSON list.")] = None,
    probe: Annotated[list[str] | None, typer.Option(
        "--probe", help="A linear probe (SPEC or LABEL=SPEC) on this model's frozen image tower, trained on --train with object labels "
                        "only (group `supervised`, 3 seeds; repeatable).")] = None,
    finetune: Annotated[list[str] | None, typer.Option(
        "--finetune", help="Fine-tune this model's image tower (SPEC or LABEL=SPEC) on --train's object labels, "
                           "head initialised from its zero-shot classifier (group `fine-tuned`, 3 seeds).")] = None,
    scratch: Annotated[bool, typer.Option(
        "--scratch", help="Also train a small CNN from scratch on --train's object labels (group `supervised`, "
                          "3 seeds, a few CPU minutes each).")] = False,
    shots: Annotated[str, typer.Option(
        "--shots", help="Few-shot probes per --probe spec: k images per object class (group `few-shot`); '' for none.")]
        = "1,2,4,8,16",
    reference: Annotated[str | None, typer.Option(
        help="In-distribution images (default: the reference the dataset was built with).")] = None,
    train: Annotated[str | None, typer.Option(
        help="Labelled training images for the probes (default: the demo world's train/ when the reference is its heldout/).")] = None,
    unfiltered: Annotated[str | None, typer.Option(
        help="Unfiltered images of rare pairs, to measure the filter model's bias (default: the demo world's "
             "rare/).")] = None,
    baseline: Annotated[str, typer.Option(
        help="The groups (comma-separated) the effective-robustness line is fitted over.")] = "supervised,few-shot",
    include_rejected: Annotated[bool, typer.Option(help="Also evaluate samples a reviewer rejected.")] = False,
    device: Device = "auto",
    decode: Decode = "fast",
    overwrite: Overwrite = False,
) -> None:
    """Evaluate many models on one dataset: ID vs OoD accuracy, effective robustness, NMI, plots.

    Per model: object top-1/top-5 and composition top-1 on the reference set (ID) and on the
    dataset's rare set (OoD), the effective robustness against a line fitted (logit axes) over the
    --baseline group, and the training corpus's NMI where the models file names the corpus.
    Rows scored by the model that filtered the dataset are marked "filter model: biased upwards".
    Writes OUT/study.{json,md}, OUT/id_vs_ood.png, OUT/ood_vs_nmi.png, OUT/scores/ (per-model cache:
    rerunning with one more model scores only that one). Exit code 1 when a row failed (its reason is
    in the table; the others are evaluated).

    \b
    Examples:
      curate eval study demo-out/imagenet-ao --out study --models models.csv --probe mini:/path/to/mini-clip
      curate eval study ao --out study --model open_clip:ViT-B-32/openai --model hf:/models/clip-l \\
          --reference imagenet/val --train imagenet/train --probe open_clip:ViT-B-32/openai --device cuda
    """
    from curate.images import check_decode
    from curate.log import console
    from curate.paths import must_exist

    from .run import StudyRequest, run_study

    check_decode(decode)
    must_exist(dataset, fix="give the dataset folder made by `curate build imagenet-ao`")
    rows = _rows(model, models, probe, finetune, scratch, shots)
    reference, train, unfiltered = _image_sets(dataset, reference, train, unfiltered)
    report = run_study(StudyRequest(dataset=dataset, reference=Path(reference), out=out, rows=rows,
                                    train=Path(train) if train else None, baseline=baseline, device=device,
                                    include_rejected=include_rejected,
                                    unfiltered=Path(unfiltered) if unfiltered else None, overwrite=overwrite,
                                    decode=decode))
    from .report import markdown

    console.print(markdown(report))
    typer.echo(str(out / "study.md"))
    if report["failed"]:
        raise typer.Exit(1)


def _labelled(value: str) -> tuple[str, str | None]:
    """``LABEL=SPEC`` -> (spec, label); a bare spec (``mini:/a=b`` included: a label has no colon) -> (spec, None)."""
    label, sep, spec = value.partition("=")
    return (spec, label) if sep and ":" not in label else (value, None)


def _rows(model: list[str] | None, models: Path | None, probe: list[str] | None, finetune: list[str] | None,
          scratch: bool, shots: str) -> list:
    """The study's rows from the command line: zero-shot models, the models file, probes (and their few-shot
    variants), fine-tuned towers and the CNN from scratch."""
    from curate.errors import CurateError
    from curate.paths import must_exist

    from .rows import FINETUNE, PROBE, SCRATCH, make_row, read_models_file

    rows = [make_row(*_labelled(m)) for m in model or []]
    if models is not None:
        must_exist(models, "--models", fix="a CSV with a header row: spec,label,group,method,corpus,nmi,epochs")
        rows += read_models_file(models)
    try:
        ks = [int(k) for k in shots.split(",") if k.strip()]
    except ValueError as e:
        raise CurateError(f"--shots {shots!r} is not a list of numbers", fix="e.g. --shots 1,2,4,8,16") from e
    for p in probe or []:
        spec, label = _labelled(p)
        rows.append(make_row(spec, f"probe {label}" if label else None, method=PROBE, where="--probe"))
        rows += [make_row(spec, f"probe-k{k} {label}" if label else None, method=f"probe-k{k}", where="--shots")
                 for k in ks]
    for f in finetune or []:
        spec, label = _labelled(f)
        rows.append(make_row(spec, f"fine-tuned {label}" if label else None, method=FINETUNE, where="--finetune"))
    if scratch:
        rows.append(make_row(SCRATCH, "CNN from scratch", method=SCRATCH, where="--scratch"))
    return rows


def _image_sets(dataset: Path, reference: str | None, train: str | None,
                unfiltered: str | None) -> tuple[str, str | None, str | None]:
    """The reference (ID), training and unfiltered image sets: given, or the dataset's reference and, on the
    demo world, its train/ and rare/ folders; each must exist."""
    import json

    from curate.errors import CurateError
    from curate.paths import must_exist
    from curate.world import RARE, TRAIN, is_world, split_dir

    info = dataset / "dataset.json"
    built = json.loads(info.read_text()).get("config", {}) if info.is_file() else {}
    reference = reference or built.get("reference")
    if not reference:
        raise CurateError("no --reference given and the dataset does not name one", where=str(dataset),
                          fix="pass --reference: labelled in-distribution images")
    must_exist(reference, "--reference")
    world = Path(reference).parent
    if is_world(world):  # the demo world: its train/ for the probes, its rare/ (unfiltered rare-pair images)
        train = train or (str(split_dir(world, TRAIN)) if split_dir(world, TRAIN).is_dir() else None)
        unfiltered = unfiltered or (str(split_dir(world, RARE)) if split_dir(world, RARE).is_dir() else None)
    for name, path in (("--train", train), ("--unfiltered", unfiltered)):
        if path is not None:
            must_exist(path, name)
    return reference, train, unfiltered


def register(train_app: typer.Typer, eval_app: typer.Typer) -> None:
    eval_app.command("study")(study_cmd)
