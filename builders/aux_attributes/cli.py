"""``curate attributes``: TRIDENT auxiliary attributes (``aux_label.jsonl``) from an LLM."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from curate.options import Overwrite

app = typer.Typer(add_completion=False, rich_markup_mode=None)
log = logging.getLogger(__name__)


def _file_digest(path: Path | None) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path is not None and path.is_file() else None


# The arguments whose --help text takes several lines, named here so that attributes' signature stays short.
Source = Annotated[Path | None, typer.Argument(
    help="A dataset folder (its manifest's pairs, rejected rows left out) or a demo world folder "
         "(world.json: every attribute x object). Or give --pairs instead.")]
PairsFile = Annotated[Path | None, typer.Option(
    "--pairs", help="Pairs file: text lines 'attr obj' (use a comma or tab for multi-word objects: "
                    "'small,paper plane'), a CSV or a parquet with attr,obj columns (e.g. pairs.parquet).")]
Llm = Annotated[str, typer.Option("--llm", help="local (bundled SmolLM2 GGUF), local:PATH.gguf, or "
                                                "openai:MODEL@BASE_URL (any OpenAI-compatible server).")]
ContradictionCheck = Annotated[bool, typer.Option(
    "--contradiction-check/--no-contradiction-check",
    help="Reject (and re-ask) answers naming another value of the pair's own attribute: 'red' for a blue "
         "heart, 'tiny' for a large one, 'metal' for a paper plane. Measured either way.")]
Families = Annotated[Path | None, typer.Option(
    "--families", help="Attribute families whose values exclude one another, 'family: value' per line "
                       "(a demo world's, or the world a dataset was built from, are used by default).")]
Origin = Annotated[str, typer.Option(
    "--from", help="llm: ask the LLM (TRIDENT). world: the truth, what the pair's training images really "
                   "show besides its attribute (a demo world, or a dataset built from one; needs --out).")]


@app.command()
def attributes(
    source: Source = None,
    pairs: PairsFile = None,
    llm: Llm = "local",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: the dataset folder "
                                                                  "itself, when SOURCE is a dataset).")] = None,
    vocab: Annotated[Path | None, typer.Option("--vocab", help="Only accept adjectives from this file "
                                                               "(one per line); the fallback uses it too.")] = None,
    retries: Annotated[int, typer.Option("--retries", help="Re-asks with a stricter prompt after an invalid "
                                                           "answer, before the embedding fallback.")] = 2,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight (HTTP backends).")] = 8,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for one HTTP answer.")] = 60.0,
    http_retries: Annotated[int, typer.Option("--http-retries", help="Retries of one request on 429/5xx/"
                                                                     "timeouts/dropped connections.")] = 4,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="Name of the environment variable "
                                                                          "holding the API key.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (first ask is greedy, retries sample).")] = 0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longest answer, in tokens.")] = 32,
    cache: Annotated[Path | None, typer.Option("--cache", help="sqlite answer cache to use (default: "
                                                               "OUT/.curate/.../llm_answers.sqlite).")] = None,
    contradiction_check: ContradictionCheck = True,
    families: Families = None,
    origin: Origin = "llm",
    overwrite: Overwrite = False,
) -> None:
    """Ask an LLM for three auxiliary adjectives per attribute-object pair (TRIDENT's attribute smoothing).

    Each pair gets TRIDENT's question ("three adjectives that can describe the visual feature
    of a photo of a/an ATTR OBJ") after a few worked examples. Answers are parsed and must be
    three distinct single-word lowercase adjectives, none the pair's own attribute, and none
    contradicting the pair (another colour, pattern, size, material, shape or state than
    the pair's own: bundled synonym lists, plus a demo world's families or --families);
    invalid ones are re-asked with a stricter prompt that says what was wrong (--retries),
    then replaced by the nearest bundled visual adjectives by MiniLM embedding (marked
    source=fallback), contradicting words skipped.

    Plausibility is measured, not only form: OUT/aux_plausibility.md gives the share of words
    that contradict their pair and, for a demo world (or a dataset built from one), checks
    every word naming a colour, pattern or state against what the world's images of that pair
    really show (implausible: shown in under 10 % of them).

    Writes OUT/aux_label.jsonl ({"attr obj": [a, b, c]} per line), OUT/aux_attributes.parquet
    (raw answers, tries, source), OUT/aux_summary.json and OUT/aux_plausibility.{md,json,png};
    and where TRIDENT's loader looks,
    keyed as it looks: DATASET/exports/czsl/aux_label/aux_label.jsonl for a dataset with a
    CZSL export, ROOT/aux_label/aux_label.jsonl for a CZSL root (names as in its pair files).
    Every answer is cached in sqlite as it arrives: rerun the same command to resume.

    \b
    Examples:
      curate attributes demo-out/imagenet-ao                  # writes into the dataset folder
      curate attributes mit-states/                           # a CZSL root: mit-states/aux_label/
      curate attributes --pairs pairs.txt --out aux/          # lines like "striped lemon"
      curate attributes demo-out/world --out aux/             # all 221 pairs, checked against the world
      curate attributes DATASET --families families.txt       # lines like "colour: red"
      curate attributes WORLD --out aux/ --llm openai:qwen2.5@http://127.0.0.1:8000/v1 --concurrency 32
      curate attributes DATASET --llm openai:gpt-4o-mini@https://api.example.com/v1 --api-key-env MY_KEY
      curate attributes demo-out/imagenet-ao --from world --out aux-true/   # the truth, no LLM
    """
    from .pairs import load_pairs

    pair_list, kind = load_pairs(source, pairs)
    if origin != "llm":
        return _report_world(*world_attributes(source, kind, origin, out, overwrite))
    out = _out_folder(source, kind, out)
    cfg, rules, config = aux_settings(source, pairs, kind, llm=llm, vocab=vocab, families=families, retries=retries,
                                      seed=seed, max_tokens=max_tokens, contradiction_check=contradiction_check)
    client_options = {"concurrency": concurrency, "timeout": timeout, "retries": http_retries,
                      "api_key_env": api_key_env}
    summary, kept, files = run_attributes(source, out, kind, pair_list, cfg, rules, config, cache=cache,
                                          client_options=client_options, overwrite=overwrite)
    _report(summary, kept, files)


def world_attributes(source: Path | None, kind: str, origin: str, out: Path | None,
                     overwrite: bool) -> tuple[dict, list[Path]]:
    """``--from world``: the truth's auxiliary attributes (:mod:`.truth_aux`) written to ``OUT/aux_label.jsonl``
    (+ the provenance table and summary); never into the dataset, whose LLM file stays as it is."""
    from curate.errors import CurateError
    from curate.outdir import OutputDir

    from .generate import AuxResult
    from .outputs import write_outputs
    from .truth_aux import true_aux

    if origin != "world":
        raise CurateError(f"unknown --from {origin!r}", fix="use --from llm or --from world")
    aux = true_aux(source, kind)  # no truth: a clear error before anything is written
    if out is None:
        raise CurateError("--from world needs --out (the dataset's own aux_label.jsonl is the LLM's)",
                          fix="pass --out DIR, then `curate train trident --aux DIR/aux_label.jsonl`")
    config = {"from": "world", "source": str(source.resolve()) if source else None, "kind": kind}
    results = [AuxResult(a, o, words, source="world") for (a, o), words in sorted(aux.items())]
    summary = {"pairs": len(results), "source": kind, "from": "world",
               "pairs_without_aux": sum(not r.aux for r in results),
               "words_per_pair": sum(len(r.aux) for r in results) / max(len(results), 1)}
    with OutputDir(out, "attributes", config, overwrite=overwrite):
        files = write_outputs(out, results, summary)
    return summary, files


def _report_world(summary: dict, files: list[Path]) -> None:
    from curate.log import console

    console.print(f"{summary['pairs']} pair(s) from the truth of the {summary['source']}'s training images, "
                  f"{summary['words_per_pair']:.2f} word(s) per pair ({summary['pairs_without_aux']} with none)")
    console.print(f"wrote {', '.join(str(f) for f in files)}")


def _out_folder(source: Path | None, kind: str, out: Path | None) -> Path:
    """--out, or SOURCE itself when it is a dataset folder or a CZSL root."""
    from curate.errors import CurateError

    if out is None:
        if kind not in ("dataset", "czsl"):
            raise CurateError("--out is required unless SOURCE is a dataset folder or a CZSL root", fix="pass --out DIR")
        out = source
    assert out is not None
    return out


def aux_settings(source: Path | None, pairs: Path | None, kind: str, *, llm: str, vocab: Path | None,
                 families: Path | None, retries: int, seed: int, max_tokens: int, contradiction_check: bool):
    """(generation settings, contradiction rules, the run's config: what the output folder's guard compares).
    A bad --llm fails here, before anything is written."""
    from curate.llm import parse_spec

    from .generate import AuxConfig
    from .pairs import read_vocab

    parse_spec(llm)  # a bad --llm fails before anything is written
    words = read_vocab(vocab) if vocab is not None else None
    rules = contradiction_rules(source, kind, families)
    cfg = AuxConfig(retries=max(0, retries), seed=seed, max_tokens=max_tokens, vocab=words,
                    rules=rules if contradiction_check else None)
    config = {"source": str(source.resolve()) if source else None, "pairs": str(pairs.resolve()) if pairs else None,
              "pairs_digest": _file_digest(pairs), "llm": llm, "vocab_digest": _file_digest(vocab),
              "retries": cfg.retries, "seed": seed, "max_tokens": max_tokens,
              "retry_temperature": cfg.retry_temperature, "contradiction_check": contradiction_check,
              "contradiction_rules": rules.sources, "families_digest": _file_digest(families)}
    return cfg, rules, config


def run_attributes(source: Path | None, out: Path, kind: str, pair_list: list, cfg, rules, config: dict, *,
                   cache: Path | None, client_options: dict, overwrite: bool) -> tuple[dict, bool, list[Path]]:
    """Ask the LLM and write the outputs, as one ledger step under the output folder's guard (kept when its
    inputs did not change). Returns (summary, whether the outputs were kept, the output files)."""
    from curate.aux_labels import dataset_path, trident_path
    from curate.ledger import Ledger, Step, StepContext, run_steps
    from curate.llm import load_llm
    from curate.outdir import OutputDir

    from .contradictions import source_world
    from .generate import generate_aux
    from .outputs import AUX_SUMMARY, AUX_TABLE, write_outputs

    llm, contradiction_check = config["llm"], config["contradiction_check"]
    # Writing into a dataset folder: guard (lock, config, cache) a private subfolder of it.
    in_dataset = kind in ("dataset", "czsl") and out.resolve() == source.resolve()  # type: ignore[union-attr]
    guard_dir = out / ".curate" / "attributes" if in_dataset else out
    world = source_world(source, kind)
    with OutputDir(guard_dir, "attributes", config, overwrite=overwrite) as guard:
        def run(_ctx) -> dict:
            client = load_llm(llm, cache_path=cache or guard.meta / "llm_answers.sqlite", **client_options)
            with client:
                log.info("%d pair(s) from %s; LLM %s", len(pair_list), kind, client.name)
                results, stats = generate_aux(pair_list, client, cfg)
            plaus = measure_plausibility(results, rules, world, cfg.vocab)
            summary = {**stats.summary(), "llm": llm, "source": kind, "retries": cfg.retries,
                       "contradiction_check": contradiction_check, "contradiction_rules": rules.describe(),
                       "contradiction_share": plaus["all"]["contradiction_share"], "plausibility": plaus}
            write_outputs(out, results, summary)
            write_plausibility(out, plaus)
            _trident_copies(source, kind, out, results)
            return summary

        files = [dataset_path(out)] + [out / f for f in (AUX_TABLE, AUX_SUMMARY, "aux_plausibility.json",
                                                           "aux_plausibility.md", "aux_plausibility.png")]
        files += [trident_path(root) for root in _trident_roots(source, kind, out)]
        step = Step("attributes", run, outputs=[os.path.relpath(f, guard_dir) for f in files],
                    inputs=lambda _ctx: attributes_inputs(config, pair_list, llm, cfg, rules, world, kind))
        if overwrite:  # --overwrite: redo it whatever its marker says (answers still come from the cache)
            Ledger(guard_dir, step.name).reset()
        ctx = StepContext(guard_dir)
        run_steps([step], ctx)
    return dict(ctx.stats[step.name]), bool(ctx.summaries[0].skipped), files


def _report(summary: dict, kept: bool, files: list[Path]) -> None:
    """The console's end of a run: outputs kept or written, and the summary table."""
    from curate.log import console, print_table

    if kept:
        console.print("inputs unchanged since the last run (pairs, LLM, prompt, options): outputs kept")
    print_table(_summary_table(summary))
    console.print(f"{'kept' if kept else 'wrote'} {', '.join(str(f) for f in files)}")


def attributes_inputs(config: dict, pairs: list, llm: str, cfg, rules, world: Path | None, kind: str) -> list:
    """What the outputs are made of: the pairs themselves (a dataset's, rejected rows left out), the
    options, the LLM spec (and a local model file's content), the prompts, the contradiction rules'
    words, and the demo world the plausibility is judged against."""
    from curate.fingerprint import model_fingerprint
    from curate.world import identity

    from .prompt import first_prompt, retry_prompt

    return [config, kind, [list(p) for p in pairs], model_fingerprint(llm),
            [first_prompt("ATTR", "OBJ"), retry_prompt("ATTR", "OBJ", "PROBLEM")],
            sorted(cfg.vocab) if cfg.vocab else None,
            [[a.name, sorted((w, sorted(v)) for w, v in a.names.items())] for a in rules.axes],
            identity(world).decode("utf-8", "replace") if world is not None else None]


def contradiction_rules(source: Path | None, kind: str, families: Path | None):
    """The bundled exclusive values, plus the families of --families or of a demo world source."""
    from .contradictions import ContradictionRules, read_families, source_families

    rules = ContradictionRules.bundled()
    if families is not None:
        return rules.with_families(read_families(families), f"file:{families}")
    found = source_families(source, kind)
    if found is not None:
        log.info("contradiction check: exclusive families of %s", found[1])
        return rules.with_families(*found)
    return rules


def measure_plausibility(results: list, rules, world: Path | None, vocab: frozenset[str] | None = None) -> dict:
    """Contradiction and non-adjective shares of the final answers, and against a demo world's images
    when given."""
    from .plausibility import WorldTruth, judge, summarise

    truth = WorldTruth.load(world) if world is not None else None
    rows = [r.row() for r in results]
    return summarise(judge(rows, rules, truth, vocab), with_truth=truth is not None)


def write_plausibility(out: Path, plaus: dict) -> list[Path]:
    from curate.fsutil import write_json, write_text

    from .plausibility import markdown, plot

    write_json(out / "aux_plausibility.json", plaus)
    write_text(out / "aux_plausibility.md", markdown(plaus) + "\n![plausibility](aux_plausibility.png)\n")
    return [out / "aux_plausibility.json", out / "aux_plausibility.md", plot(plaus, out / "aux_plausibility.png")]


def _trident_roots(source: Path | None, kind: str, out: Path) -> list[Path]:
    """The CZSL roots whose ``aux_label/aux_label.jsonl`` TRIDENT reads: a CZSL root itself, or a
    dataset's CZSL export when writing into the dataset (see ``outputs``)."""
    from .pairs import CZSL_SPLIT

    if kind == "czsl":
        return [out]
    export = source / "exports" / "czsl" if source is not None else None
    if kind == "dataset" and export is not None and (export / CZSL_SPLIT).is_dir() and out.resolve() == source.resolve():
        return [export]
    return []


def _trident_copies(source: Path | None, kind: str, out: Path, results: list) -> list[Path]:
    """The file where TRIDENT's loader looks, keyed as it looks (see ``outputs``)."""
    from .outputs import write_trident_file

    return [write_trident_file(root, results, rename=kind != "czsl") for root in _trident_roots(source, kind, out)]


def _summary_table(s: dict):
    from rich.table import Table

    t = Table(title="curate attributes")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k in ("pairs", "valid_first_try_rate", "valid_after_retry", "fallback_rate", "rejected_contradiction",
              "contradiction_share", "requests_sent", "seconds", "pairs_per_s"):
        v = s.get(k)
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    return t
