"""``curate train cir`` and ``curate eval cir`` (registered on ``training.cli``'s groups)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.options import Decode, Device, Overwrite

FORMAT_HELP = "ours (a `curate triplets` folder), cirr, circo, fashioniq or genecis."


def train_cir_cmd(
    triplets: Annotated[Path, typer.Option("--triplets", help="Triplets folder made by `curate triplets`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, metrics.jsonl, report.md).")],
    model: Annotated[str, typer.Option("--model", help="combiner (CLIP4Cir, from cached features; CPU-friendly) "
                                                       "or mllm (InstructCIR-style, a local LLaVA folder).")]
    = "combiner",
    backbone: Annotated[str | None, typer.Option("--backbone", help="Frozen CLIP spec for the Combiner (default: "
                                                                    "the model that made the features).")] = None,
    features: Annotated[str | None, typer.Option("--features", help="Embeddings folder (`curate embed` output; "
                                                                    "default: SOURCE_DATASET/embeddings).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs (the MLLM: stage-2 epochs).")] = 30,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Triplets per step (in-batch negatives).")] = 256,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (default 1e-3 Combiner/Adam, "
                                                          "2e-5 MLLM/AdamW).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    projection_dim: Annotated[int, typer.Option("--projection-dim", help="Combiner projection (0: 4 x dim).")] = 0,
    hidden_dim: Annotated[int, typer.Option("--hidden-dim", help="Combiner hidden size (0: 8 x dim).")] = 0,
    mllm: Annotated[str | None, typer.Option("--mllm", help="hf:/path/to/llava-style-folder for --model mllm.")]
    = None,
    stage1: Annotated[str | None, typer.Option("--stage1", help="MLLM stage 1: captioned shards (KEY.jpg + "
                                                                "KEY.txt/json caption) for image-caption alignment.")]
    = None,
    stage1_epochs: Annotated[int, typer.Option("--stage1-epochs")] = 1,
    steps: Annotated[int | None, typer.Option("--steps", help="MLLM: at most this many steps per epoch.")] = None,
    tune: Annotated[str, typer.Option("--tune", help="MLLM: last:N (last N LLM layers + norm), lora (needs peft), "
                                                     "projector, or all.")] = "last:2",
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help="MLLM: trade compute for "
                                                                                  "memory (CUDA).")] = False,
    include_rejected: Annotated[bool, typer.Option("--include-rejected")] = False,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, "
                                                               "fp16.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's last checkpoint.")] = False,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="Stop training after this long.")]
    = None,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Skip the zero-shot baselines in the "
                                                                      "final report.")] = False,
    device: Device = "auto",
    decode: Decode = "fast",
    overwrite: Overwrite = False,
) -> None:
    """Train a composed-image-retrieval model on triplets; report it against zero-shot baselines.

    The Combiner (CLIP4Cir) trains on frozen CLIP features (the source dataset's embeddings/
    from `curate embed`, or encoded once with --backbone and cached in RUN/features/) in
    seconds on CPU; each epoch is scored on the val split and the best kept. At the end the
    best model and the image-only, text-only and image+text baselines are scored on the test
    split in every format the triplets folder holds (ours, CIRR, CIRCO, GeneCIS):
    RUN/report.md, RUN/recall_vs_k.png, RUN/results.json, and CIRR/CIRCO submission files
    under RUN/eval/. Interrupted? Rerun with --resume.

    \b
    Examples:
      curate triplets && curate train cir --triplets demo-out/imagenet-ao/triplets --out runs/cir
      curate train cir --triplets T --backbone open_clip:ViT-B-32/laion2b_s34b_b79k --out runs/b32 --epochs 100
      curate train cir --triplets T --out runs/cir --resume
      curate train cir --triplets T --model mllm --mllm hf:/models/llava-phi35 --stage1 captioned/ \\
          --steps 1000 --device cuda --grad-checkpointing --out runs/mllm
    """
    from curate.log import console

    from .train import CirTrainConfig, RunOptions, train_cir

    _check_inputs(triplets, features, stage1, backbone)
    cfg = CirTrainConfig(triplets=str(triplets), out=str(out), model=model, backbone=backbone, features=features,
                         epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, projection_dim=projection_dim,
                         hidden_dim=hidden_dim, include_rejected=include_rejected, mllm=mllm, stage1=stage1,
                         stage1_epochs=stage1_epochs, steps=steps, tune=tune, grad_checkpointing=grad_checkpointing,
                         decode=decode)
    opts = RunOptions(device=device, precision=precision, resume=resume, max_seconds=max_seconds,
                      overwrite=overwrite, baselines=not no_baselines)
    results = train_cir(cfg, opts)
    _print_results(results["test"])
    console.print(f"report: {out / 'report.md'}")


def _check_inputs(triplets: Path, features: str | None, stage1: str | None, backbone: str | None) -> None:
    """--triplets, --features and --stage1 exist and --backbone's spec parses, before anything is loaded or written."""
    from curate.embed.backends import check_spec_syntax
    from curate.paths import must_exist

    must_exist(triplets, "--triplets", fix="give the folder made by `curate triplets`")
    for what, path in (("--features", features), ("--stage1", stage1)):
        if path:
            must_exist(path, what)
    if backbone:
        check_spec_syntax(backbone)


def _print_results(by_method: dict) -> None:
    from rich.table import Table

    from curate.log import print_table

    from .report import pct, short, split_names

    for name in split_names(by_method):
        rows = {m: r[name] for m, r in by_method.items() if name in r}
        first = next(iter(rows.values()))
        keys = [k for k, v in first["metrics"].items() if isinstance(v, float)]
        if not keys:
            continue
        table = Table(title=f"{name}: {first['queries']} queries, gallery {first['gallery']} (percent)")
        for col in ["method", *map(short, keys)]:
            table.add_column(col, justify="left" if col == "method" else "right")
        for m, r in rows.items():
            table.add_row(m, *[pct(r["metrics"].get(k)) for k in keys])
        print_table(table)  # a gallery too small for some K was logged as a warning by evaluate_split


def eval_cir_cmd(
    run: Annotated[str, typer.Argument(help="Run folder from `curate train cir`, or baseline:image, "
                                            "baseline:text, baseline:sum (zero-shot, needs a backbone).")],
    data: Annotated[Path, typer.Option("--data", help="Benchmark folder (see --format).")],
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "ours",
    split: Annotated[str, typer.Option("--split", help="val or test (CIRR's test is test1).")] = "test",
    category: Annotated[list[str] | None, typer.Option("--category", help="FashionIQ categories (default: all "
                                                                           "found).")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", help="CLIP spec (default: the run's).")] = None,
    features: Annotated[str | None, typer.Option("--features", help="Embeddings folder whose keys are the "
                                                                    "benchmark's image names.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/eval/FORMAT-SPLIT).")]
    = None,
    include_rejected: Annotated[bool, typer.Option("--include-rejected")] = False,
    device: Device = "auto",
) -> None:
    """Score a CIR model exactly as a benchmark's own code does, and write its submission files.

    CIRR: Recall@1/5/10/50 (reference removed) and Recall_subset@1/2/3, plus
    recall_submission_SPLIT.json / recall_subset_submission_SPLIT.json for the test server.
    CIRCO: mAP@5/10/25/50 and circo_submission_SPLIT.json. FashionIQ: Recall@10/50 per
    category and their average. GeneCIS: Recall@1/2/3 per task. ours: Recall@K, mAP@K and
    hard-negative recall on a `curate triplets` folder. Queries that cannot be scored (an image
    missing, target = reference, a bad img_set, no ground truth, a repeated id) are skipped and
    counted in metrics.json.

    \b
    Examples:
      curate eval cir runs/cir --data demo-out/imagenet-ao/triplets --format cirr --split test
      curate eval cir runs/cir --data /data/cirr_dataset --format cirr --split test --device cuda
      curate eval cir runs/cir --data /data/CIRCO --format circo --split val
      curate eval cir runs/cir --data /data/fashionIQ_dataset --format fashioniq --split val
      curate eval cir baseline:sum --backbone open_clip:ViT-B-32/openai --data T/genecis --format genecis
    """
    from curate.embed.backends import check_spec_syntax
    from curate.log import console
    from curate.paths import must_exist

    from .benchmark import evaluate_cir

    must_exist(data, "--data", fix="give the benchmark's folder (see --format)")
    if not run.startswith("baseline:"):
        must_exist(run, "RUN", fix="give a run folder of `curate train cir`, or baseline:image|text|sum")
    if features:
        must_exist(features, "--features")
    if backbone:
        check_spec_syntax(backbone)
    report = evaluate_cir(run, data, fmt, split, out=out, backbone=backbone, features=features, device=device,
                          categories=category or None, include_rejected=include_rejected)
    _print_results({report["method"]: {r["name"]: r for r in report["results"]}})
    console.print(f"report: {Path(report['out']) / 'report.md'}")


def register(train_app: typer.Typer, eval_app: typer.Typer) -> None:
    train_app.command("cir")(train_cir_cmd)
    eval_app.command("cir")(eval_cir_cmd)
