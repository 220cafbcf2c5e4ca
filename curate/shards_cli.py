"""``curate shards``: look inside WebDataset shards, and re-shard them.

``reshard`` is the reference pipeline command: one task per input shard (run by the
executor, resumable through the ledger), an output folder guarded by ``OutputDir``,
corrupt inputs counted and reported instead of stopping the run, and a manifest of what
was written. Other stage commands follow the same shape.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from .options import ConfigFile, ExecutorName, Overwrite, RayAddress, Workers

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect, verify and re-shard WebDataset shards.")
logger = logging.getLogger(__name__)

STAGE = "reshard"
PARTS_DIR = ".curate/reshard-parts"


@app.command("info")
def info(paths: Annotated[list[str], typer.Argument(help="Shard files, folders, globs or brace patterns.")]) -> None:
    """Per-shard sample counts, field extensions and skipped members; exit 1 if a shard is corrupt.

    Exit codes (as `verify`): 0 every shard read to its end, 1 a corrupt or truncated shard,
    2 a usage error (no shards found).

    Example: curate shards info demo-out/imagenet-ao/shards
    """
    from rich.table import Table

    from .log import console
    from .shards import ReadReport, iter_shard, list_shards

    table = Table(title="shards")
    for col in ("shard", "samples", "fields", "skipped", "status"):
        table.add_column(col)
    total = bad = 0
    for p in list_shards(paths):
        rep = ReadReport(shard=p.name)
        exts: dict[str, int] = {}
        for s in iter_shard(p, rep):
            for k in s:
                if not k.startswith("__"):
                    exts[k] = exts.get(k, 0) + 1
        total += rep.samples
        bad += bool(rep.error)
        skipped = ", ".join(f"{why}: {n}" for why, n in sorted(rep.skipped.items()))
        if rep.renamed:
            skipped = ", ".join(filter(None, [skipped, f"unsafe keys renamed: {rep.renamed}"]))
        table.add_row(str(p), str(rep.samples), ", ".join(f"{k}:{v}" for k, v in sorted(exts.items())),
                      skipped or "-", "[red]" + rep.error if rep.error else "[green]ok")
    console.print(table)
    console.print(f"{total} samples")
    if bad:
        console.print(f"[red]{bad} corrupt or truncated shard(s)")
        raise typer.Exit(1)


@app.command("verify")
def verify(paths: Annotated[list[str], typer.Argument(help="Shard files, folders or globs.")]) -> None:
    """Read every shard to the end; exit 1 if any is corrupt or truncated (2 on a usage error).

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


# -- reshard ---------------------------------------------------------------------------------


@dataclass
class ReshardConfig:
    """Options of ``curate shards reshard``; the same keys work in a ``--config`` TOML file."""

    maxcount: int = 10_000
    maxsize: int = 1 << 30
    prefix: str = "shard"
    ids: Path | None = None
    workers: int | None = None
    executor: str = "local"
    address: str | None = None


# Options that change where tasks run but not what they write: left out of the fingerprint,
# so a run may resume with another --workers or --executor.
RUN_ONLY = ("workers", "executor", "address")


def output_prefix(prefix: str, index: int) -> str:
    """Output shards of input ``index`` are ``{prefix}-{index:06d}-{n:06d}.tar``: no two tasks collide."""
    return f"{prefix}-{index:06d}"


def reshard_task(task: Any) -> dict[str, Any]:
    """Copy one input shard's samples (those in the ID list, if any) into new shards.

    Samples read before a corruption are kept; the reason is returned in the stats so the
    run reports it. Returns the ledger record: outputs relative to the output folder.
    """
    import polars as pl

    from .fsutil import write_parquet
    from .manifest import read_id_list
    from .shards import ReadReport, ShardWriter, iter_shard, sample_meta, stats_path

    a = task.args
    out = Path(a["out"])
    wanted = set(read_id_list(a["ids"])) if a["ids"] else None
    rep = ReadReport(shard=a["input"])
    rows: list[tuple[str, str]] = []
    read = 0
    with ShardWriter(out / "shards", prefix=output_prefix(a["prefix"], a["index"]),
                     maxcount=a["maxcount"], maxsize=a["maxsize"]) as w:
        for sample in iter_shard(a["input"], rep):
            read += 1
            if wanted is not None and sample["__key__"] not in wanted:
                continue
            if "json" in sample and sample_meta(sample, rep) is None:
                del sample["json"]  # not a JSON object: dropped, with its reason in the stats
            sample = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
            rows.append((sample["__key__"], w.write(sample)))
    part = out / PARTS_DIR / f"{a['index']:06d}.parquet"
    df = pl.DataFrame({"key": [r[0] for r in rows], "shard": [r[1] for r in rows],
                       "source_shard": [a["input"]] * len(rows)},
                      schema={"key": pl.String, "shard": pl.String, "source_shard": pl.String})
    write_parquet(df, part)
    outputs = [str(p.relative_to(out)) for p in w.written] + [str(stats_path(p).relative_to(out)) for p in w.written]
    outputs.append(str(part.relative_to(out)))
    return {"outputs": outputs,
            "stats": {"input": a["input"], "read": read, "items": len(rows), "shards": len(w.written),
                      "corrupt": rep.error, "skipped": dict(rep.skipped), "renamed_keys": rep.renamed}}


def _fingerprint_file(path: Path | None) -> str | None:
    if path is None:
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _load_config(config_file: Path | None, overrides: dict[str, Any]) -> ReshardConfig:
    from .config import load_toml, merge

    cfg = load_toml(config_file, ReshardConfig) if config_file else ReshardConfig()
    return merge(cfg, overrides)


def _check_config(cfg: ReshardConfig) -> None:
    from .errors import CurateError

    if cfg.maxcount < 1:
        raise CurateError(f"maxcount must be at least 1, got {cfg.maxcount}", fix="pass --maxcount 1000 or so")
    if cfg.maxsize < 1:
        raise CurateError(f"maxsize must be at least 1 byte, got {cfg.maxsize}", fix="pass --maxsize 1000000000")
    if cfg.ids is not None and not Path(cfg.ids).is_file():
        raise CurateError("ID list not found", where=str(cfg.ids), fix="pass a text file with one key per line")


def _write_results(out: Path, n_tasks: int, records: dict[str, dict], ids: Path | None,
                   failed: dict[str, str] | None = None) -> dict[str, Any]:
    """Merge the finished tasks' parts into ``manifest.parquet`` and write ``stats.json`` (failed
    tasks listed, so a run with failures still leaves a summary of what it wrote)."""
    import polars as pl

    from .fsutil import write_json
    from .ledger import Stats
    from .manifest import read_id_list, write_manifest

    done = [i for i in range(n_tasks) if f"{i:06d}" in records]
    parts = [pl.read_parquet(out / PARTS_DIR / f"{i:06d}.parquet") for i in done]
    manifest = pl.concat(parts) if parts else pl.DataFrame(schema={"key": pl.String, "shard": pl.String})
    # a key in two input shards: the first input (in the order given) wins the manifest row; the
    # later copy stays in its output shard and is listed, so nothing disappears silently
    dup = manifest.filter(pl.col("key").is_duplicated())
    duplicates = [{"key": k, "shards": g["shard"].to_list()} for (k,), g in
                  dup.group_by("key", maintain_order=True)] if dup.height else []
    manifest = manifest.unique("key", keep="first", maintain_order=True)
    write_manifest(manifest, out)
    stats = [records[f"{i:06d}"]["stats"] for i in done]
    merged = sum((Stats(s) for s in stats), Stats())
    corrupt = [{"shard": s["input"], "reason": s["corrupt"], "samples_read": s["read"]} for s in stats if s["corrupt"]]
    summary: dict[str, Any] = {
        "inputs": n_tasks,
        "samples_read": int(merged.get("read", 0)),
        "samples_written": manifest.height,
        "shards_written": int(merged.get("shards", 0)),
        "corrupt_inputs": corrupt,
        "skipped": dict(sorted(merged.get("skipped", {}).items())),
        "renamed_keys": int(merged.get("renamed_keys", 0)),
        "failed_tasks": {k: v.splitlines()[0] for k, v in sorted((failed or {}).items())},
        "duplicate_keys_across_inputs": sorted(duplicates, key=lambda d: d["key"]),
    }
    if ids is not None:
        written = set(manifest["key"].to_list())
        summary["ids_not_found"] = sum(1 for k in set(read_id_list(ids)) if k not in written)
    write_json(out / "stats.json", summary)
    return summary


@app.command("reshard")
def reshard(
    inputs: Annotated[list[str], typer.Argument(help="Input shards: files, folders, globs or brace patterns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (shards/, manifest.parquet, stats.json).")],
    maxcount: Annotated[int | None, typer.Option("--maxcount", help="Samples per output shard (default: 10000).")] = None,
    maxsize: Annotated[int | None, typer.Option("--maxsize", help="Bytes per output shard (default: 1 GiB).")] = None,
    ids: Annotated[Path | None, typer.Option("--ids", help="Keep only the keys in this ID list (one per line).")] = None,
    workers: Workers = None,
    executor: ExecutorName = None,  # type: ignore[assignment]
    address: RayAddress = None,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
) -> None:
    """Re-write input shards into new shards, optionally keeping only the keys of an ID list.

    One task per input shard; output shards are named from the input's index
    (shard-000003-000000.tar, ...), so reruns skip finished inputs and give byte-identical
    output. Corrupt or truncated inputs are counted and listed in DIR/stats.json; the run
    goes on. DIR/manifest.parquet lists key, shard and source_shard of every written sample.

    \b
    Examples:
      curate shards reshard 'pool/*.tar' --out resharded --maxcount 1000
      curate shards reshard DATASET/shards --out subset --ids keep.txt --workers 4
      curate shards reshard in/ --out big --executor ray --address auto
    """
    from .config import to_dict
    from .errors import CurateError
    from .executor import get_executor
    from .ledger import Task, run_stage
    from .log import print_summary
    from .outdir import OutputDir
    from .shards import list_shards

    cfg = _load_config(config, {"maxcount": maxcount, "maxsize": maxsize, "ids": ids, "workers": workers,
                                "executor": executor, "address": address})
    _check_config(cfg)
    shards = list(dict.fromkeys(p.resolve() for p in list_shards(inputs)))
    out = out.resolve()
    if any(out == p.parent or out in p.parents for p in shards):
        raise CurateError("the output folder holds input shards", where=str(out), fix="choose another --out")
    ids_path = Path(cfg.ids).resolve() if cfg.ids else None
    fingerprint = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY}
    fingerprint.update(inputs=[str(p) for p in shards], ids=str(ids_path) if ids_path else None,
                       ids_sha256=_fingerprint_file(ids_path))
    with OutputDir(out, "shards reshard", fingerprint, overwrite=overwrite):
        tasks = [Task(f"{i:06d}", {"input": str(p), "out": str(out), "index": i, "prefix": cfg.prefix,
                                   "maxcount": cfg.maxcount, "maxsize": cfg.maxsize,
                                   "ids": str(ids_path) if ids_path else None})
                 for i, p in enumerate(shards)]
        ex = get_executor(cfg.executor, workers=cfg.workers, address=cfg.address)
        logger.debug("%d input shard(s) -> %s; executor %s with %d worker(s)", len(tasks), out, ex.name, ex.workers)
        try:
            result = run_stage(STAGE, reshard_task, tasks, out, executor=ex, unit="shards")
        finally:
            ex.close()
        for rec in sorted(result.records.values(), key=lambda r: r["task"]):
            if rec["stats"].get("corrupt"):
                result.summary.notes.append(f"corrupt input {rec['stats']['input']}: {rec['stats']['corrupt']} "
                                            f"(kept {rec['stats']['read']} sample(s) read before it)")
        print_summary([result.summary], title=f"curate shards reshard -> {out}")
        stats = _write_results(out, len(tasks), result.records, ids_path, result.errors)
        if result.errors:
            first_id, first = sorted(result.errors.items())[0]
            raise CurateError(
                f"{len(result.errors)} of {len(tasks)} task(s) failed, e.g. {tasks[int(first_id)].args['input']}: "
                + first.splitlines()[0] + " (stats.json lists them; manifest.parquet holds what was written)",
                where=str(out), fix="fix that input and rerun the same command (finished tasks are skipped)")
    if stats["corrupt_inputs"]:
        logger.warning("%d corrupt or truncated input shard(s), listed in %s", len(stats["corrupt_inputs"]),
                       out / "stats.json")
    logger.info("wrote %d sample(s) in %d shard(s) to %s", stats["samples_written"], stats["shards_written"], out)
