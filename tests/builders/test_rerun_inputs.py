"""Derived outputs follow their inputs (issue #27): a rerun redoes exactly the steps whose inputs changed.

`curate triplets` after a review pull (the manifest gets ``review_status`` the way `curate review pull`
writes it), with and without ``--overwrite``; an unchanged rerun skips every step; ``--overwrite``
always recomputes; `curate attributes` after a manifest change; the trainers' and evaluations' caches.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from test_triplets import make_cir_dataset

from annotations.verdicts import Verdict, apply_verdicts
from builders.triplets import TripletsConfig, build_triplets, read_triplets
from curate.manifest import manifest_path, read_manifest, write_manifest
from curate.shards import iter_shard, list_shards

CURATE = str(Path(sys.executable).with_name("curate"))
FORMATS = "shards,cirr,circo,fashioniq,genecis"


def curate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CURATE, *args], capture_output=True, text=True, timeout=300)


def review_pull(ds: Path, verdicts: list[Verdict]) -> None:
    """What `curate review pull` does to the manifest (annotations.verdicts.pull_verdicts, minus FiftyOne)."""
    df, report = apply_verdicts(read_manifest(ds, include_rejected=True), verdicts, "2026-01-01T00:00:00+00:00")
    assert report.changed == len(verdicts)
    write_manifest(df, manifest_path(ds))


def markers(out: Path) -> dict[str, int]:
    """Every done marker of the folder and its modification time (a skipped step leaves it untouched)."""
    return {p.parent.name: p.stat().st_mtime_ns for p in sorted((out / ".curate" / "ledger").glob("*/*.json"))}


def task_markers(out: Path) -> dict[str, int]:
    """Every task marker of a per-task stage (``embed``: one per shard) and its modification time."""
    ledger = out / ".curate" / "ledger"
    return {str(p.relative_to(ledger)): p.stat().st_mtime_ns for p in sorted(ledger.glob("*/*.json"))}


def keys_in_outputs(out: Path) -> set[str]:
    """Every image key the exports mention: JSON files, file names, triplet shards' records."""
    text = []
    for p in out.rglob("*"):
        if ".curate" in p.relative_to(out).parts or not p.is_file():
            continue
        text.append(p.name)
        if p.suffix in (".json", ".jsonl", ".txt", ".md"):
            text.append(p.read_text())
    for shard in list_shards(out / "shards"):
        for s in iter_shard(shard):
            meta = json.loads(s["json"])
            text.append(" ".join([meta["reference"], meta["target"], *meta["negatives"], *meta["gt"]]))
    return set(" ".join(text).replace('"', " ").replace("/", " ").replace(".jpg", " ").split())


@pytest.mark.parametrize("overwrite", [False, True], ids=["rerun", "overwrite"])
def test_review_pull_then_rerun_excludes_the_rejected_image(tmp_path, overwrite):
    ds = make_cir_dataset(tmp_path / "ds")
    r = curate("triplets", str(ds), "--format", FORMATS)  # into ds/triplets, as in the issue
    assert r.returncode == 0, r.stderr
    out = ds / "triplets"
    first = read_triplets(out)
    victim = first["reference"][0]
    assert victim in keys_in_outputs(out)
    fixed = first.filter((pl.col("reference") != victim) & (pl.col("mode") == "attribute"))["reference"][0]
    man = read_manifest(ds)
    old_attr = man.filter(pl.col("key") == fixed)["attr"][0]
    new_attr = next(a for a in sorted(set(man["attr"])) if a != old_attr)
    obj = man.filter(pl.col("key") == fixed)["obj"][0]
    review_pull(ds, [Verdict(victim, "reject", None, None), Verdict(fixed, None, new_attr, obj)])

    r = curate("triplets", str(ds), "--format", FORMATS, *(["--overwrite"] if overwrite else []))
    assert r.returncode == 0, r.stderr
    df = read_triplets(out)
    used = set(df["reference"]) | set(df["target"]) | set(df["negatives"].explode()) | set(df["gt"].explode())
    assert victim not in used
    assert victim not in keys_in_outputs(out)
    assert set(df.filter(pl.col("reference") == fixed)["ref_attr"]) == {new_attr}
    info = json.loads((out / "triplets.json").read_text())
    assert info["rejected_excluded"] == 1 and info["counts"]["triplets"] == df.height
    # the same bytes as a fresh folder made from the reviewed dataset
    fresh = tmp_path / "fresh"
    build_triplets(TripletsConfig(dataset=str(ds), out=str(fresh), formats=FORMATS.split(",")))
    assert (fresh / "triplets.parquet").read_bytes() == (out / "triplets.parquet").read_bytes()
    for f in ("cirr/captions/cap.rc2.train.json", "circo/annotations/val.json", "genecis/image_ids.json",
              "fashioniq/category_map.json"):
        assert (fresh / f).read_bytes() == (out / f).read_bytes(), f
    assert sorted(p.name for p in (fresh / "cirr" / "img" / "train").iterdir()) == \
        sorted(p.name for p in (out / "cirr" / "img" / "train").iterdir())


def test_unchanged_rerun_skips_every_step_and_overwrite_redoes_them(tmp_path):
    ds = make_cir_dataset(tmp_path / "ds", embeddings=False)  # thumbnail features: the feature cache is used
    out = tmp_path / "t"
    cfg = TripletsConfig(dataset=str(ds), out=str(out), formats=["cirr", "shards"])
    build_triplets(cfg)
    done = markers(out)
    assert set(done) == {"triplets_mine", "triplets_texts", "triplets_images", "triplets_export-cirr",
                         "triplets_export-shards"}
    parquet = (out / "triplets.parquet").read_bytes()
    build_triplets(cfg)
    assert markers(out) == done  # nothing redone
    build_triplets(cfg, overwrite=True)
    again = markers(out)
    assert all(again[k] != done[k] for k in done), (done, again)
    assert (out / "triplets.parquet").read_bytes() == parquet


def test_only_the_steps_whose_inputs_changed_are_redone(tmp_path):
    ds = make_cir_dataset(tmp_path / "ds")
    out = tmp_path / "t"
    cfg = TripletsConfig(dataset=str(ds), out=str(out), formats=["cirr"])
    build_triplets(cfg)
    done = markers(out)
    # new embeddings: mining reads them, so everything after it is redone
    import shutil

    from test_triplets import write_embeddings

    shutil.rmtree(ds / "embeddings")
    write_embeddings(ds, seed=7, noise=0.9)
    build_triplets(cfg)
    after = markers(out)
    assert after["triplets_mine"] != done["triplets_mine"]
    # the staged images of unchanged shards are reused: only the new ones are extracted
    info = json.loads((out / "triplets.json").read_text())
    assert info["images"]["items"] < len(list((out / ".curate" / "images").glob("*.jpg")))


def test_new_weights_under_the_same_model_spec_redo_mining(tmp_path):
    """--model open_clip:ARCH//ckpt.pt (or mini:PATH): the weights' content is an input, not only the spec."""
    from curate.embed.random_models import TINY_OPEN_CLIP, save_random_open_clip
    from curate.fingerprint import spec_paths

    spec = save_random_open_clip(tmp_path / "model", arch="tiny-test-clip", config=TINY_OPEN_CLIP, seed=0)
    assert [p.name for p in spec_paths(spec)] == ["tiny-test-clip.pt"]
    assert spec_paths("openai:qwen2@http://127.0.0.1:8000/v1") == [] and spec_paths(None) == []
    ds = make_cir_dataset(tmp_path / "ds", embeddings=False)
    out = tmp_path / "t"
    cfg = TripletsConfig(dataset=str(ds), out=str(out), model=spec, formats=[])
    build_triplets(cfg)
    done = markers(out)
    feats = (out / ".curate" / "features" / "features.npy").read_bytes()
    build_triplets(cfg)
    assert markers(out) == done
    save_random_open_clip(tmp_path / "model", arch="tiny-test-clip", config=TINY_OPEN_CLIP, seed=1)
    build_triplets(cfg)
    assert markers(out)["triplets_mine"] != done["triplets_mine"]
    assert (out / ".curate" / "features" / "features.npy").read_bytes() != feats


# -- curate attributes ----------------------------------------------------------------------------

def attributes(*argv: str) -> int:
    from curate.cli import main

    try:
        main(["-q", "attributes", *argv])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_attributes_follow_the_reviewed_manifest_and_skip_when_unchanged(tiny_dataset):
    from llm_server import FakeChatServer

    from builders.aux_attributes.outputs import AUX_LABEL

    label = tiny_dataset / AUX_LABEL
    with FakeChatServer() as srv:
        assert attributes(str(tiny_dataset), "--llm", srv.spec()) == 0
        assert srv.count() == 12 and len(label.read_text().splitlines()) == 12
        first = label.stat().st_mtime_ns
        assert attributes(str(tiny_dataset), "--llm", srv.spec()) == 0
        assert label.stat().st_mtime_ns == first  # unchanged inputs: skipped, nothing rewritten
        man = read_manifest(tiny_dataset)
        red = man.filter(pl.col("attr") == "red")["key"].to_list()
        blue = man.filter(pl.col("attr") == "blue")["key"][0]
        obj = man.filter(pl.col("key") == blue)["obj"][0]
        review_pull(tiny_dataset, [*(Verdict(k, "reject", None, None) for k in red),
                                   Verdict(blue, None, "striped", obj)])
        assert attributes(str(tiny_dataset), "--llm", srv.spec()) == 0
        pairs = {next(iter(json.loads(ln))) for ln in label.read_text().splitlines()}
        assert not any(p.startswith("red ") for p in pairs) and f"striped {obj}" in pairs
        assert len(pairs) == 10
        assert srv.count() == 13  # only the new pair was asked: the other answers came from the cache
        assert attributes(str(tiny_dataset), "--llm", srv.spec(), "--overwrite") == 0
        assert srv.count() == 13 and label.stat().st_mtime_ns != first


# -- trainers' and evaluations' caches ----------------------------------------------------------------

def test_trident_token_cache_follows_the_backbone_weights(tmp_path):
    """New weights under the same spec: another default cache folder, and an explicit --cache-dir is recomputed."""
    import numpy as np
    from trident_helpers import make_czsl_root

    from curate.embed.random_models import TINY_OPEN_CLIP, save_random_open_clip
    from training.data.features import open_token_cache, token_cache_dir
    from training.trident.backbone import Backbone
    from training.trident.data import load_czsl
    from training.trident.features import image_store

    data = load_czsl(make_czsl_root(tmp_path / "root", per_pair=1))
    keys = sorted(it.ref for items in data.items.values() for it in items)
    store = image_store(data)
    spec = save_random_open_clip(tmp_path / "m", arch="tiny-test-clip", config=TINY_OPEN_CLIP, seed=0)
    default = token_cache_dir(spec, store, keys)
    folder = tmp_path / "cache"

    def features() -> tuple[np.ndarray, dict]:
        cache, stats = open_token_cache(folder, store, keys, Backbone(spec, "cpu"))
        pos = cache.index()
        return cache.gather(np.array([pos[k] for k in keys]))[0].astype(np.float32), stats

    old, stats = features()
    assert stats["computed"] == len(keys)
    assert features()[1] == {"cached_before": len(keys), "computed": 0, "unreadable": 0}
    save_random_open_clip(tmp_path / "m", arch="tiny-test-clip", config=TINY_OPEN_CLIP, seed=1)  # same path
    assert token_cache_dir(spec, store, keys) != default
    new, stats = features()
    assert stats == {"cached_before": 0, "computed": len(keys), "unreadable": 0}
    assert not np.allclose(old, new)
    assert features()[1]["computed"] == 0


def test_cir_feature_cache_follows_the_backbone_weights(tmp_path):
    import numpy as np

    from curate.embed import backends
    from curate.embed.random_models import TINY_OPEN_CLIP, save_random_open_clip
    from training.cir.features import FeatureBank

    spec = save_random_open_clip(tmp_path / "m", arch="tiny-test-clip", config=TINY_OPEN_CLIP, seed=0)
    text = ["a red circle", "a blue star"]
    old = FeatureBank(spec, "cpu", cache_dir=tmp_path / "c").texts(text)
    assert FeatureBank(spec, "cpu", cache_dir=tmp_path / "c").text_cache.rows.keys() == set(text)  # reused
    save_random_open_clip(tmp_path / "m", arch="tiny-test-clip", config=TINY_OPEN_CLIP, seed=1)  # same path
    backends._CACHE.clear()  # the loaded model of this process (a new run is a new process)
    bank = FeatureBank(spec, "cpu", cache_dir=tmp_path / "c")
    assert not bank.text_cache.rows
    new = bank.texts(text)
    fresh = backends.load_model(spec, "cpu").encode_texts(text)
    assert not np.allclose(old[text[0]], new[text[0]])
    assert np.allclose(np.stack([new[t] for t in text]), fresh, atol=1e-5)


def test_new_weights_reembed_and_eval_zeroshot_stops_reusing_the_old_embeddings(tmp_path):
    """`curate embed` redoes every shard when the model's weights changed under the same spec, and
    `curate eval zeroshot` / CIR's FeatureTable use stored embeddings only if the weights are the same.
    A random mini-CLIP (``mini:PATH``): each `curate embed` process imports torch, not open_clip's libraries."""
    from conftest import COLORS, make_tiny_dataset

    from curate.embed.store import embeddings_info, made_by
    from training.data.features import FeatureTable
    from training.models.mini_clip import save_random_mini
    from training.zeroshot import _from_dataset

    ds = make_tiny_dataset(tmp_path / "ds")
    words = [" ".join(COLORS), "circle square star", "a photo of"]
    spec = save_random_mini(tmp_path / "m", words, seed=0)
    emb = ds / "embeddings"

    def embed() -> None:
        r = curate("-q", "embed", str(ds / "shards"), "--model", spec, "--out", str(emb), "--workers", "1")
        assert r.returncode == 0, r.stderr

    embed()
    assert made_by(embeddings_info(emb), spec) and FeatureTable.load(emb).made_by(spec)
    assert _from_dataset(ds, "all", None, spec, False).emb is not None  # the stored embeddings are used
    before = task_markers(emb)
    embed()
    assert task_markers(emb) == before  # same weights: nothing re-embedded
    save_random_mini(tmp_path / "m", words, seed=1)  # same path
    assert not made_by(embeddings_info(emb), spec) and not FeatureTable.load(emb).made_by(spec)
    stale = _from_dataset(ds, "all", None, spec, False)
    assert stale.emb is None and stale.images  # images are encoded with the model as it is now
    embed()
    assert task_markers(emb) != before and made_by(embeddings_info(emb), spec)
    assert _from_dataset(ds, "all", None, spec, False).emb is not None


def test_the_study_remakes_its_made_once_folders_when_their_inputs_change(tmp_path):
    """bench/curation_study.py: the ground truth, raw draws and CZSL roots were reused whenever their folder
    existed (a reviewed manifest kept the old arms); now each is a ledger step keyed by its inputs."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "curation_study.py"
    spec = importlib.util.spec_from_file_location("curation_study", path)
    study_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_module)  # bench/ is not a package on the tests' path
    made_once = study_module.made_once

    manifest = tmp_path / "manifest.parquet"
    pl.DataFrame({"key": ["a", "b"]}).write_parquet(manifest)
    made = []

    def make(folder: Path) -> None:
        made.append(folder)
        folder.mkdir(parents=True)
        (folder / "keys.txt").write_text(",".join(pl.read_parquet(manifest)["key"]))

    study = tmp_path / "study"
    folder = made_once(study, "raw-0/czsl", [manifest, "backbone"], make)
    assert (folder / "keys.txt").read_text() == "a,b" and len(made) == 1
    made_once(study, "raw-0/czsl", [manifest, "backbone"], make)
    assert len(made) == 1  # same inputs: reused
    pl.DataFrame({"key": ["a"]}).write_parquet(manifest)  # e.g. a review pull rejected b
    made_once(study, "raw-0/czsl", [manifest, "backbone"], make)
    assert (folder / "keys.txt").read_text() == "a" and len(made) == 2
    made_once(study, "raw-0/czsl", [manifest, "other-backbone"], make)
    assert len(made) == 3
