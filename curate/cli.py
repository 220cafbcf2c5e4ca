"""The ``curate`` command line.

Subcommands are registered by *name -> "module:attribute"* and imported only when invoked,
so ``curate --help`` answers fast (no torch, polars or fiftyone import). Each subcommand
module exposes a Typer app (or a click command). Add a command by adding one line to
``COMMANDS``.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

import click

from . import __version__

# name -> (module:attr, one-line help shown by `curate --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("builders.cli:app", "Build a dataset (imagenet-ao: rare attribute-object images)."),
    "triplets": ("builders.triplets.cli:app", "Mine composed-image-retrieval triplets (CIRR/FashionIQ/CIRCO)."),
    "attributes": ("builders.aux_attributes.cli:app", "Ask an LLM for TRIDENT auxiliary attributes (aux_label.jsonl)."),
    "review": ("annotations.cli:app", "Review samples in FiftyOne and pull verdicts back into the manifest."),
    "demo": ("builders.synthetic.cli:app", "The offline demo world: procedural images, captions, image pool."),
    "model": ("training.cli:model_app", "Models: train the demo mini-CLIP, list backends."),
    "embed": ("curate.embed.cli:embed_app", "Compute CLIP embeddings over shards (clip-retrieval layout)."),
    "index": ("curate.index:index_app", "Build a faiss index over an embeddings folder."),
    "search": ("curate.index:search_app", "Search an index with a text prompt."),
    "eval": ("training.cli:eval_app", "Evaluate models on a dataset (zero-shot, CZSL, CIR metrics)."),
    "train": ("training.cli:train_app", "Train the bundled TRIDENT and CIR models on a dataset."),
    "shards": ("curate.shards_cli:app", "Inspect and verify WebDataset shards."),
    "doctor": ("curate.doctor:app", "Check the environment: packages, FiftyOne database, models."),
}


def _load(spec: str) -> click.Command:
    import typer

    module, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, typer.Typer):
        return typer.main.get_command(obj)
    return obj


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        try:
            cmd = _load(COMMANDS[name][0])
        except ModuleNotFoundError as e:
            missing = e.name or ""
            mod = COMMANDS[name][0].split(":")[0]
            if missing and mod.startswith(missing.split(".")[0]) and mod.split(".")[0] == missing.split(".")[0]:
                return _unavailable(name, f"'curate {name}' is not available in this version ({e})")
            raise
        cmd.name = name
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, message: str) -> click.Command:
    @click.command(name=name, help=message, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args: tuple[str, ...]) -> None:
        from .errors import CurateError

        raise CurateError(message, fix="update curate, or see `curate --help` for what exists")

    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="curate")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
def app(debug: bool, verbose: bool, quiet: bool) -> None:
    """curate: build, review and validate compositional vision-language datasets.

    \b
    Quick start (offline, on the embedded demo world):
      curate build imagenet-ao           # rare attribute-object images -> ./demo-out
      curate triplets                     # CIR triplets from that dataset
      curate doctor                       # check the environment
    Every command has --help with examples.
    """
    from .log import setup_logging

    if debug:
        os.environ["CURATE_DEBUG"] = "1"
    setup_logging(verbose=verbose or debug, quiet=quiet)


# What Ctrl-C tells: commands whose finished stages are kept resume by running them again
RESUME = "rerun the same command to resume (finished stages are kept)"
INTERRUPT_HINTS: dict[str, str] = {
    **{name: RESUME for name in ("build", "triplets", "attributes", "embed", "index", "shards", "demo")},
    "train": "rerun the same command with --resume to continue from the last checkpoint",
}


def interrupted_message(argv: list[str]) -> str:
    """The one line Ctrl-C prints: how to resume, for the commands that can."""
    command = next((a for a in argv if not a.startswith("-")), "")
    hint = INTERRUPT_HINTS.get(command)
    return f"Interrupted; {hint}" if hint else "Interrupted."


def _typer_exit_code(e: Exception) -> int | None:
    """Exit code for Typer's own Exit/Abort/usage errors, else None.

    Typer >= 0.29 bundles its own copy of click, so ``curate CMD --help``, ``typer.Exit(1)``
    and a missing argument raise classes that click's handlers above do not catch.
    """
    if "typer" not in sys.modules:
        return None
    import typer

    if isinstance(e, typer.Exit):
        return e.exit_code
    if isinstance(e, typer.Abort):
        click.echo("Aborted.", err=True)
        return 130
    if isinstance(e, typer.TyperException):
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            click.echo(f"Error: {e.format_message()}", err=True)
        return e.exit_code
    return None


_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line and exit 2 for user errors; tracebacks only with --debug."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("CURATE_DEBUG"))
    for k, v in {"FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_VALIDATION": "false",
                 "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)
    try:
        from .storage import remote_args  # s3:// and gs:// arguments run on local mirrors

        with remote_args(argv) as args:
            rv = app.main(args=args, prog_name="curate", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:  # click turns Ctrl-C into Abort (after a blank line closing the ^C)
        click.echo(interrupted_message(argv) if isinstance(e.__cause__, KeyboardInterrupt) else "Aborted.", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(interrupted_message(argv), err=True)
        sys.exit(130)
    except Exception as e:
        from .errors import CurateError

        code = _typer_exit_code(e)
        if code is not None:
            sys.exit(code)
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            where = f" writing {e.filename}" if e.filename else ""
            click.echo(f"error: the disk is full ({e.strerror}){where} — fix: free space (or raise the file size "
                       "limit) and rerun the same command; finished work is kept", err=True)
            sys.exit(2)
        if isinstance(e, CurateError):
            if debug:
                import traceback

                traceback.print_exc()
            from .storage import to_urls

            click.echo(f"error: {to_urls(e.message)}", err=True)
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
