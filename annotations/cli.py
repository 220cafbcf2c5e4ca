"""``curate review``: push a dataset into FiftyOne, launch the App, pull verdicts back.

``curate review DATASET`` is short for ``curate review open DATASET`` (a group whose default
command is ``open``), so ``curate review pull DATASET`` can live beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

log = logging.getLogger(__name__)

DEFAULT_COMMAND = "open"


class DefaultCommandGroup(TyperGroup):
    """Runs ``open`` when the first argument is not a subcommand (``curate review DATASET``); its
    ``--help`` shows ``open``'s options too, since ``curate review DATASET --port ...`` takes them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        command = self.commands[DEFAULT_COMMAND]
        command.format_help(click.Context(command, info_name=ctx.info_name, parent=ctx.parent), formatter)


app = typer.Typer(
    cls=DefaultCommandGroup,
    add_completion=False,
    no_args_is_help=True,
    help="""Review samples in FiftyOne and pull verdicts back into the manifest.

\b
  curate review demo-out/imagenet-ao               # push + serve the App
  curate review demo-out/imagenet-ao --port 5152   # another port
  curate review demo-out/imagenet-ao --no-launch   # push only
  curate review pull demo-out/imagenet-ao          # verdicts -> manifest
\b
It prints the URL that opens the dataset: http://127.0.0.1:5151/datasets/NAME
(NAME: the folder's name and a hash of its path, one FiftyOne dataset per folder).
Reviewers tag samples `accept` / `reject` or edit the `attr` / `obj` labels in the App.
After a pull, exports, triplet mining and training loaders skip rejected samples.
`curate review DATASET` takes the options of `curate review open` below.""",
)

Dataset_ = Annotated[Path, typer.Argument(help="Dataset folder (holds manifest.parquet and shards/).")]
Name = Annotated[str | None, typer.Option(
    "--name", help="FiftyOne dataset name (default: the folder's name and a hash of its path, one per folder).")]
DatabaseUri = Annotated[str | None, typer.Option(
    "--database-uri", help="Use this MongoDB (mongodb://...) instead of FiftyOne's embedded database.")]


@app.command("open")
def open_cmd(
    dataset: Dataset_,
    port: Annotated[int, typer.Option("--port", help="App port on 127.0.0.1.")] = 5151,
    no_launch: Annotated[bool, typer.Option("--no-launch", help="Only create/update the FiftyOne dataset.")] = False,
    triplets: Annotated[Path | None, typer.Option(
        "--triplets", help="Triplets folder (default: DATASET/triplets if it holds triplets.parquet).")] = None,
    name: Name = None,
    media_dir: Annotated[Path | None, typer.Option(
        "--media-dir", help="Where images are extracted (default: CACHE/review/NAME/media).")] = None,
    database_uri: DatabaseUri = None,
    max_pair_views: Annotated[int, typer.Option("--max-pair-views", help="Save at most this many per-pair views.")] = 1000,
    remove_stale: Annotated[bool, typer.Option(
        "--remove-stale", help="Delete FiftyOne samples whose key left the manifest (default: tag them 'stale').")]
    = False,
) -> None:
    """Create or update the FiftyOne dataset for DATASET, then serve the App on 127.0.0.1 (Ctrl-C stops it).

    \b
    Prints the URL that opens the dataset, http://127.0.0.1:PORT/datasets/NAME
    (the bare http://127.0.0.1:PORT opens the App with no dataset selected).
    Example:
      curate review open demo-out/imagenet-ao --port 5152
      curate review demo-out/imagenet-ao --no-launch --remove-stale   # after a rebuild
    Re-running (after the dataset grew or was rebuilt) adds new samples, brings the fields of
    existing ones in step with the manifest, re-extracts images whose shard changed, and tags
    samples that left the manifest 'stale'; reviewers' tags and label edits are kept.
    """
    from .app import check_port_free

    if not no_launch:
        check_port_free(port)  # fail before minutes of work, not after
    report = push(dataset, name=name, media_dir=media_dir, database_uri=database_uri, triplets=triplets,
                  max_pair_views=max_pair_views, remove_stale=remove_stale)
    if no_launch:
        from .app import dataset_url

        log.info("App not started (--no-launch); `curate review %s --port %d` serves it at %s", dataset, port,
                 dataset_url(port, report))
        return
    from .app import serve_until_interrupted, start_app

    server = start_app(port)
    serve_until_interrupted(server, report)


def push(dataset: Path, name: str | None, media_dir: Path | None, database_uri: str | None,
         triplets: Path | None, max_pair_views: int, remove_stale: bool = False) -> str:
    """Sync the dataset (and its triplets); print the summary; return the FiftyOne dataset name."""

    from rich.table import Table

    from curate.log import print_table

    from .media import default_media_dir
    from .sync import SyncConfig, sync_dataset
    from .triplets import sync_triplets

    cfg = SyncConfig(dataset=dataset, name=name, media_dir=media_dir, database_uri=database_uri,
                     max_pair_views=max_pair_views, remove_stale=remove_stale)
    rep = sync_dataset(cfg)
    table = Table(title=f"curate review: FiftyOne dataset {rep.name!r}")
    table.add_column("what")
    table.add_column("value", justify="right")
    stale = f"{rep.stale} (removed)" if rep.stale_removed else f"{rep.stale} (tagged 'stale')"
    for what, value in [("samples added", rep.added), ("already there", rep.existing),
                        ("fields updated", rep.updated), ("images re-extracted", rep.media_refreshed),
                        ("left the manifest", stale), ("total", rep.total),
                        ("skipped (image missing)", len(rep.missing)), ("with aux attributes", rep.aux_matched),
                        ("embeddings", "yes" if rep.embeddings else "no"), ("near-duplicate groups", rep.dup_groups),
                        ("saved views", len(rep.views)), ("samples/s", f"{rep.rate:.0f}"),
                        ("seconds extracting images / in all",
                         f"{rep.phases.get('extract', 0.0):.1f} / {sum(rep.phases.values()):.1f}")]:
        table.add_row(what, str(value))
    tdir = triplets or (dataset / "triplets")
    if triplets is not None or (tdir / "triplets.parquet").exists():
        import fiftyone as fo

        from curate.dataset import Dataset

        folder = Dataset(dataset)
        trep = sync_triplets(fo, tdir, rep.name, folder.manifest(include_rejected=True), folder.shard_dir,
                             media_dir or default_media_dir(rep.name))
        table.add_row(f"triplets added ({trep.name})", str(trep.added))
        table.add_row("triplets skipped", str(len(trep.skipped)))
    print_table(table)
    return rep.name


@app.command("pull")
def pull_cmd(dataset: Dataset_, name: Name = None, database_uri: DatabaseUri = None) -> None:
    """Write reviewers' verdicts (accept/reject tags, label edits) into DATASET/manifest.parquet.

    \b
    Example:
      curate review pull demo-out/imagenet-ao
    Idempotent: pulling again changes nothing. Rejected samples are then left out by
    exports, triplet mining and training (pass --include-rejected there to keep them).
    A corrected label recomputes pair, rare, family, split and aux attributes from the
    folder's data, or says in the review_flag column why it cannot. Verdicts of a
    FiftyOne dataset made for another folder are refused.
    """
    from .verdicts import pull_verdicts

    rep = pull_verdicts(dataset, name=name, database_uri=database_uri)
    log.info("%s: %d sample(s) seen, %d row(s) changed; accepted %d, rejected %d, corrected %d (flagged %d), "
             "orphan verdicts %d%s", rep.name, rep.seen, rep.changed, rep.accepted, rep.rejected, rep.corrected,
             len(rep.flagged), len(rep.orphans), "" if rep.written else " (manifest unchanged)")
