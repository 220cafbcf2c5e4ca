"""``curate shards``: look inside WebDataset shards without writing code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect and verify WebDataset shards.")


@app.command("info")
def info(paths: Annotated[list[str], typer.Argument(help="Shard files, folders, globs or brace patterns.")]) -> None:
    """Per-shard sample counts and field extensions.

    Example: curate shards info demo-out/imagenet-ao/shards
    """
    from rich.table import Table

    from .log import console
    from .shards import ReadReport, iter_shard, list_shards

    table = Table(title="shards")
    for col in ("shard", "samples", "fields", "status"):
        table.add_column(col)
    total = 0
    for p in list_shards(paths):
        rep = ReadReport(shard=p.name)
        exts: dict[str, int] = {}
        for s in iter_shard(p, rep):
            for k in s:
                if not k.startswith("__"):
                    exts[k] = exts.get(k, 0) + 1
        total += rep.samples
        table.add_row(str(p), str(rep.samples), ", ".join(f"{k}:{v}" for k, v in sorted(exts.items())),
                      "[red]" + rep.error if rep.error else "[green]ok")
    console.print(table)
    console.print(f"{total} samples")


@app.command("verify")
def verify(paths: Annotated[list[str], typer.Argument(help="Shard files, folders or globs.")]) -> None:
    """Read every shard to the end; exit 1 if any is corrupt or truncated.

    Example: curate shards verify 'pool/shards/*.tar'
    """
    from .log import console
    from .shards import ReadReport, iter_shard, list_shards

    bad = 0
    for p in list_shards(paths):
        rep = ReadReport(shard=Path(p).name)
        for _ in iter_shard(p, rep):
            pass
        if rep.error:
            bad += 1
            console.print(f"[red]corrupt[/red] {p}: {rep.error} (after {rep.samples} samples)")
    if bad:
        raise typer.Exit(1)
    console.print("[green]all shards read to the end")
