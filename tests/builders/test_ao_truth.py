"""Ground truth in `curate build imagenet-ao` (issue 17, parts 1-2): label precision and rare-pair
recall per funnel row (a demo world, `--truth FILE`) and `--calibrate`, with the bad inputs the
issue names: a truth file with keys not in the pool (counted), a truth file missing columns (clear
error), a pool without truth (precision columns absent, not zero), a calibration sample with no
positives (clear message)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from build_helpers import curate_in, relaxed_toml

from builders.imagenet_ao.calibrate import calibrate, choose, sweep
from builders.imagenet_ao.truth import (
    RareUnits,
    Truth,
    evaluate_funnel,
    label_precision,
    read_truth_file,
    stage_metrics,
    stratified_share,
    world_truth,
)
from curate.errors import CurateError

CURATE = str(Path(sys.executable).with_name("curate"))
FAMILIES = ("colour", "pattern", "state")

# a random model judges nothing: keep every candidate up to the per-pair cap
RELAXED = relaxed_toml(images_per_pair=4, retrieve_k=12, generator_images=None, export=[])


def curate(*args, check=True):
    r = subprocess.run([CURATE, *map(str, args)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "CURATE_NO_PROGRESS": "1"})
    if check and r.returncode != 0:
        raise AssertionError(f"curate {' '.join(map(str, args))} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def pool_truth_rows(world) -> list[dict]:
    """The world's pool as a user's truth file: one (key, attr, obj) row per family value shown."""
    pool = pl.read_parquet(world.path / "pool" / "pool.parquet")
    return [{"key": r["key"], "attr": r[f], "obj": r["obj"]} for r in pool.iter_rows(named=True) for f in FAMILIES]


# -- truth files and verdicts ------------------------------------------------------------------------
def test_truth_file_keys_not_in_pool_are_counted_and_paths_match_folder_keys(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text("key,attr,obj,extra\n"
                    "a,Red,Heart,x\n"          # labels compare case-insensitively
                    "a,striped,heart,x\n"      # an image may show several attributes
                    "sub/b.jpg,blue,star,x\n"  # a folder pool's file path: its key is sub_b
                    "ghost1,red,heart,x\n"
                    "ghost2,red,heart,x\n"
                    "ghost2,blue,heart,x\n"
                    ",red,heart,x\n"           # no key: skipped and counted
                    "c,,lemon,x\n")
    truth = read_truth_file(path)
    assert truth.stats["rows"] == 8 and truth.stats["bad_rows"] == 2
    aligned = truth.aligned({"pool": {"a", "sub_b", "other"}, "generator": {"g"}})
    assert aligned.stats["keys_not_in_pool"] == 2 and aligned.stats["keys_matched"] == 2
    rows = pl.DataFrame({"source": ["pool", "pool", "pool", "pool", "pool", "generator"],
                         "src_key": ["a", "a", "a", "sub_b", "other", "g"],
                         "attr": ["red", "striped", "blue", "blue", "red", "red"],
                         "obj": ["heart", "heart", "heart", "lemon", "heart", "heart"]})
    assert aligned.verdicts(rows).to_list() == ["right", "right", "wrong attribute", "wrong object", None, None]
    p = label_precision(rows, aligned)
    assert p["images"] == 6 and p["unknown"] == 2
    assert p["precision"] == 0.5 and p["wrong_attribute"] == 0.25 and p["wrong_object"] == 0.25


def test_truth_file_source_column_keeps_sources_apart(tmp_path):
    path = tmp_path / "truth.jsonl"
    path.write_text('{"key": "k", "attr": "red", "obj": "heart", "source": "pool"}\n'
                    '{"key": "k", "attr": "blue", "obj": "star", "source": "generator"}\n')
    truth = read_truth_file(path)
    rows = pl.DataFrame({"source": ["pool", "generator"], "src_key": ["k", "k"], "attr": ["red", "red"],
                         "obj": ["heart", "heart"]})
    assert truth.verdicts(rows).to_list() == ["right", "wrong object"]


def test_truth_file_missing_columns_is_a_clear_error(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text("key,attribute,object\na,red,heart\n")
    with pytest.raises(CurateError) as e:
        read_truth_file(path)
    msg = str(e.value)
    assert "lacks column(s) attr, obj" in msg and "columns found: key, attribute, object" in msg
    assert "key, attr, obj" in msg  # the fix names the format
    (tmp_path / "truth.txt").write_text("a red heart\n")
    with pytest.raises(CurateError, match="unsupported truth file type"):
        read_truth_file(tmp_path / "truth.txt")
    (tmp_path / "empty.csv").write_text("key,attr,obj\n,,\n")
    with pytest.raises(CurateError, match="no usable row"):
        read_truth_file(tmp_path / "empty.csv")
    with pytest.raises(CurateError, match="not found"):
        read_truth_file(tmp_path / "nope.parquet")


def test_truth_file_missing_columns_fails_the_build_before_any_stage(tmp_path, small_world, tiny_mini_spec, capfd):
    bad = tmp_path / "truth.csv"
    bad.write_text("key,attr\npool_0000000,red\n")
    wj = small_world.path / "world.json"
    out = tmp_path / "ao"
    # every other option is valid (the options are checked before any stage: a missing model would be named first)
    r = curate_in(capfd, "build", "imagenet-ao", "--objects", wj, "--attributes", wj, "--captions",
                  small_world.path / "captions", "--generator", "demo", "--model", tiny_mini_spec, "--truth", bad,
                  "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "lacks column(s) obj" in r.stderr
    assert not (out / ".curate" / "ledger").exists()  # nothing ran
    r = curate_in(capfd, "build", "imagenet-ao", "--objects", wj, "--attributes", wj,
                  "--captions", small_world.path / "captions", "--pool", tmp_path, "--model", tiny_mini_spec,
                  "--truth", "none", "--calibrate", "--out", tmp_path / "ao2")
    assert r.returncode == 2 and "--calibrate needs labelled images" in r.stderr and "Traceback" not in r.stderr


def test_world_truth_is_the_renderers_record(small_world):
    truth = world_truth(small_world.path)
    pool = pl.read_parquet(small_world.path / "pool" / "pool.parquet")
    assert truth.images == pool.height
    r = pool.row(0, named=True)
    other_obj = next(o for o in small_world.objects if o != r["obj"])
    other_colour = next(c for c in small_world.families["colour"] if c != r["colour"])
    rows = pl.DataFrame({"source": ["pool"] * 4, "src_key": [r["key"]] * 4,
                         "attr": [r["colour"], r["pattern"], other_colour, r["colour"]],
                         "obj": [r["obj"], r["obj"], r["obj"], other_obj]})
    assert truth.verdicts(rows).to_list() == ["right", "right", "wrong attribute", "wrong object"]


def test_stage_metrics_and_funnel_rows_by_hand():
    """Four candidates, two filter rows: precision over the labelled ones, recall over the rare units."""
    labels = pl.DataFrame({"source": ["pool"] * 4, "key": ["a", "b", "c", "d"],
                           "attr": ["red", "red", "blue", "red"], "obj": ["heart", "heart", "star", "star"]})
    truth = Truth(labels, "test")
    record = pl.DataFrame({"source": ["pool"] * 5, "src_key": ["a", "b", "c", "d", "e"],
                           "attr": ["red", "red", "red", "red", "red"],
                           "obj": ["heart", "star", "star", "star", "heart"],
                           "rare": [True, True, True, False, True],
                           "removed_at": [-1, 0, 1, -1, 1]})
    written = record.filter(pl.col("removed_at") < 0)
    cands, after, final = evaluate_funnel(record, 2, written, truth, RareUnits({"pool": 2}, {"pool": 1.0}))
    # candidates: a right, b wrong object, c wrong attribute, d right (not rare), e unknown
    assert (cands["known"], cands["right"], cands["precision"]) == (4, 2, 0.5)
    assert (cands["wrong_object"], cands["wrong_attribute"]) == (1, 1)
    assert cands["rare_right"] == 1 and cands["recall"] == 0.5
    assert (after[0]["images"], after[0]["precision"]) == (4, round(2 / 3, 4))  # b removed by row 0
    assert (after[1]["images"], after[1]["precision"], after[1]["recall"]) == (2, 1.0, 0.5)
    assert final == after[1]
    empty = stage_metrics(record.head(0).with_columns(pl.lit(None, pl.String).alias("verdict")),
                          RareUnits({"pool": 0}, {"pool": 1.0}))
    assert empty["precision"] is None and empty["recall"] is None  # absent truth is no zero


def test_precision_and_recall_are_estimated_per_source():
    """A sample that labels every generated image but a quarter of the pool must not let the generator
    decide: each source's labelled images stand for that source's share of the images."""
    df = pl.DataFrame({"source": ["generator"] * 8 + ["pool"] * 40,
                       "verdict": ["right"] * 8 + ["right"] * 5 + ["wrong object"] * 5 + [None] * 30})
    assert stratified_share(df) == round((8 * 1.0 + 40 * 0.5) / 48, 4)  # not the labelled share 13/18
    assert stratified_share(df.filter(pl.col("source") == "generator")) == 1.0
    assert stratified_share(df.filter(pl.col("verdict").is_null())) is None
    units = RareUnits({"pool": 4, "generator": 8}, {"pool": 0.25, "generator": 1.0})
    assert units.total == 12
    assert units.recall({"pool": 2, "generator": 8}) == round((2 * 4 + 8) / (4 * 4 + 8), 4)
    assert RareUnits({"pool": 0}, {"pool": 1.0}).recall({}) is None


# -- calibration --------------------------------------------------------------------------------------
def _frame(verdicts: list[str | None]) -> pl.DataFrame:
    """Five pairs, eight candidates each, composition scores 0.9 .. 0.2; verdicts by score rank."""
    rows = []
    for p in range(5):
        for j, score in enumerate(np.round(np.arange(0.9, 0.15, -0.1), 2)):
            rows.append({"source": "pool", "src_key": f"k{p}-{j}", "attr": f"a{p}", "obj": "o", "rare": True,
                         "score_comp": float(score), "attr_margin": 1.0, "verdict": verdicts[j]})
    return pl.DataFrame(rows)


def test_calibration_chooses_the_largest_dataset_at_the_target_precision():
    # the four best-scoring images of every pair are right, the rest wrong; cap 6/pair: below a
    # threshold of 0.4 each pair keeps 4 right + 2 wrong (66.7 %), at (0.4, 0.5] 4 + 1 (80 %), at
    # (0.5, 0.6] 4 + 0 (100 %)
    frame = _frame(["right"] * 4 + ["wrong attribute"] * 4)
    points = sweep(frame, images_per_pair=6, min_images_per_pair=1)
    best, reached = choose(points, 0.8)
    assert reached and best.dataset_images == 25 and best.dataset_precision == 0.8 and 0.4 < best.comp <= 0.5
    best, reached = choose(points, 0.95)
    assert reached and best.dataset_images == 20 and best.dataset_precision == 1.0 and 0.5 < best.comp <= 0.6
    cal = calibrate(frame, 6, 1, 0.8, configured=(0.0, -1.0))
    assert cal["chosen"]["dataset_images"] == 25 and cal["configured"]["dataset_precision"] == round(20 / 30, 4)
    assert cal["sample"] == {"candidates": 40, "labelled": 40, "positives": 20, "rare_labelled": 40}
    # a target nothing reaches: the most precise point, said so
    frame = _frame(["right", "wrong object"] * 4)
    best, reached = choose(sweep(frame, 6, 1), 0.9)
    assert not reached and best.dataset_precision == max(p.dataset_precision for p in sweep(frame, 6, 1)
                                                         if p.dataset_labelled >= 10)


def test_calibration_sample_with_no_positives_is_a_clear_error():
    with pytest.raises(CurateError) as e:
        calibrate(_frame(["wrong object"] * 8), 6, 1, 0.8, configured=(0.0, 0.0))
    assert "no positives" in str(e.value) and "40 labelled" in str(e.value)
    with pytest.raises(CurateError, match="no labelled sample"):
        calibrate(_frame([None] * 8), 6, 1, 0.8, configured=(0.0, 0.0))


# -- end to end -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_pool(small_world, tmp_path_factory) -> Path:
    """60 of the world's pool images in a folder (keys pool_NNNNNNN), no world.json beside them."""
    folder = tmp_path_factory.mktemp("pool") / "images"
    folder.mkdir()
    for p in sorted((small_world.path / "pool" / "images").glob("*.jpg"))[:60]:
        shutil.copy(p, folder / p.name)
    return folder


def text_vocabulary(world, folder: Path) -> list:
    """The world's vocabulary as plain files (not world.json: no automatic truth)."""
    (folder / "objects.txt").write_text("".join(f"{o}|{world.plurals[o]}\n" for o in world.objects))
    (folder / "attributes.txt").write_text("".join(f"{f}: {a}\n" for f, names in world.families.items()
                                                   for a in names))
    return ["--objects", folder / "objects.txt", "--attributes", folder / "attributes.txt",
            "--captions", world.path / "captions"]


@pytest.mark.slow
def test_pool_without_truth_then_truth_file_adds_numbers_only(tmp_path, small_world, small_pool, tiny_mini_spec):
    cfg = tmp_path / "build.toml"
    cfg.write_text(RELAXED)
    args = ["build", "imagenet-ao", *text_vocabulary(small_world, tmp_path), "--pool", small_pool,
            "--model", tiny_mini_spec, "--config", cfg, "--workers", "1", "--out", tmp_path / "ao"]
    curate(*args)
    out = tmp_path / "ao"
    info = json.loads((out / "dataset.json").read_text())
    assert "truth" not in info and "truth" not in info["config"]
    assert all("precision" not in row and "recall" not in row for row in info["funnel"])  # absent, not zero
    card = (out / "README.md").read_text()
    assert "| stage | kept | removed | note |" in card and "precision" not in card.split("## Funnel")[1]
    assert not (out / "funnel_truth.png").exists()
    dataset_bytes = {p.relative_to(out): p.read_bytes() for p in [out / "manifest.parquet",
                                                                  *sorted((out / "shards").glob("*"))]}

    # the same build with a truth file: it resumes, the samples stay, dataset.json and the card gain numbers
    rows = pool_truth_rows(small_world)
    ghosts = [{"key": f"ghost-{i}", "attr": "red", "obj": "heart"} for i in range(5)]
    pl.DataFrame(rows + ghosts).write_csv(tmp_path / "truth.csv")
    r = curate(*args, "--truth", tmp_path / "truth.csv")
    assert "precision" in r.stdout + r.stderr and "already done" in r.stdout + r.stderr
    assert {p: (out / p).read_bytes() for p in dataset_bytes} == dataset_bytes
    info = json.loads((out / "dataset.json").read_text())
    t = info["truth"]
    assert t["keys_not_in_pool"] == 5 + (len(rows) // 3 - 60)  # the ghosts, and the world's images not copied
    assert t["keys_matched"] == 60
    by_stage = {row["stage"]: row for row in info["funnel"]}
    assert "precision" not in by_stage["vocabulary"]
    written = by_stage["written"]
    # an oracle from pool.parquet: the share of the dataset's images that show their label
    pool = {r["key"]: r for r in pl.read_parquet(small_world.path / "pool" / "pool.parquet").iter_rows(named=True)}
    m = pl.read_parquet(out / "manifest.parquet")
    right = [pool[k]["obj"] == o and a in {pool[k][f] for f in FAMILIES}
             for k, a, o in m.select("src_key", "attr", "obj").iter_rows()]
    assert written["precision"] == round(sum(right) / len(right), 4)
    assert t["precision"] == written["precision"]
    rare_targets = set(pl.read_parquet(out / "targets.parquet").filter(pl.col("rare")).select("attr", "obj").rows())
    units = sum((a, pool[k]["obj"]) in rare_targets for k in (p.stem for p in small_pool.glob("*.jpg"))
                for a in {pool[k][f] for f in FAMILIES})
    assert t["rare_units"] == units
    rare_right = sum(ok for ok, rare in zip(right, m["rare"].to_list(), strict=True) if rare)
    assert written["recall"] == (round(rare_right / units, 4) if units else None)
    for row in info["funnel"][2:]:
        assert row["precision"] is None or 0.0 <= row["precision"] <= 1.0
    card = (out / "README.md").read_text()
    assert "| stage | kept | removed | precision | recall | note |" in card
    assert "![precision and recall per stage](funnel_truth.png)" in card
    assert (out / "funnel_truth.png").stat().st_size > 0

    # and without it again: exactly the card and dataset.json of a build without truth
    curate(*args, "--truth", "none")
    assert "truth" not in json.loads((out / "dataset.json").read_text())
    assert not (out / "funnel_truth.png").exists()


@pytest.mark.slow
def test_calibrate_end_to_end_and_without_positives(tmp_path, small_world, small_pool, tiny_mini_spec):
    cfg = tmp_path / "build.toml"
    cfg.write_text(RELAXED)
    base = ["build", "imagenet-ao", *text_vocabulary(small_world, tmp_path), "--pool", small_pool,
            "--model", tiny_mini_spec, "--config", cfg, "--workers", "1", "--calibrate"]
    # every image labelled with an object it does not show: nothing to calibrate on
    keys = [p.stem for p in small_pool.glob("*.jpg")]
    pl.DataFrame({"key": keys, "attr": ["red"] * len(keys), "obj": ["teapot"] * len(keys)}).write_parquet(
        tmp_path / "wrong.parquet")
    r = curate(*base, "--truth", tmp_path / "wrong.parquet", "--out", tmp_path / "none", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "calibration sample has no positives" in r.stderr

    # the world's truth for the pool; the demo renderer's images bring their own (the positives a random
    # model's retrieval rarely finds)
    pl.DataFrame(pool_truth_rows(small_world)).write_parquet(tmp_path / "truth.parquet")
    out = tmp_path / "cal"
    r = curate(*base, "--generator", "demo", "--truth", tmp_path / "truth.parquet", "--target-precision", "0.5",
               "--out", out)
    assert "calibration:" in r.stdout + r.stderr and "chosen" in r.stdout + r.stderr
    info = json.loads((out / "dataset.json").read_text())
    cal = info["calibration"]
    assert info["config"]["calibrate"] is True and info["config"]["target_precision"] == 0.5
    assert cal["sample"]["labelled"] > 0 and cal["sample"]["positives"] > 0
    chosen = cal["chosen"]
    stages = [row["stage"] for row in info["funnel"]]
    assert f"composition score >= {chosen['comp']:g} (calibrated)" in stages
    curve = json.loads((out / cal["curve"]).read_text())
    assert len(curve["points"]) == cal["grid"]["margins"] * cal["grid"]["comp_thresholds"]
    assert chosen in curve["points"]
    card = (out / "README.md").read_text()
    assert "## Calibration" in card and "(chosen)" in card and (out / "calibration.png").stat().st_size > 0
