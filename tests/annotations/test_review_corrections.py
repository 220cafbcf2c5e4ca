"""`curate review pull` keeps the dataset consistent, and each folder has its own FiftyOne dataset (issue 27).

A label correction recomputes what the label decides (pair, rare, family, split, auxiliary
attributes) from the folder's own pairs.parquet, vocabulary, manifest and aux_label.jsonl, or
flags the row with the reason; review_time is when the reviewer edited the sample; verdicts of a
dataset made for another folder are refused; `curate review --help` shows the App's options.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import polars as pl
import pytest
from conftest import make_tiny_dataset

from curate.errors import CurateError
from curate.fsutil import write_json
from curate.manifest import read_manifest, write_manifest

CURATE = str(Path(sys.executable).with_name("curate"))
RUN = uuid.uuid4().hex[:8]

FAMILY = {"purple": "colour", "wooden": "material"}
RARE = {"purple tree": "test", "wooden circle": "val", "purple circle": None}  # rare pair -> its split (None: no images)


def make_ao_dataset(root: Path, aux_missing: tuple[str, ...] = ("purple circle",)) -> Path:
    """A folder shaped like an ImageNet-AO build: rare pairs held whole in val/test, seen pairs' images in
    every split, pairs.parquet over the whole vocabulary, dataset.json's vocabulary, aux_label.jsonl."""
    objects, attrs = ("tree", "bell", "circle"), ("purple", "wooden")
    make_tiny_dataset(root, objects=objects, attrs=attrs)
    df = read_manifest(root)
    df = df.filter(pl.col("pair") != "purple circle").with_columns(
        pl.col("pair").is_in(list(RARE)).alias("rare"),
        pl.col("attr").replace_strict(FAMILY).alias("family"),
        pl.col("pair").replace_strict({p: s for p, s in RARE.items() if s}, default=pl.col("split")).alias("split"),
        pl.lit(None, dtype=pl.String).alias("review_status"))
    write_manifest(df, root)
    pl.DataFrame([{"attr": a, "family": FAMILY[a], "obj": o, "cooccurrence": 0 if f"{a} {o}" in RARE else 1514,
                   "attr_count": 5000, "obj_count": 4000, "rare": f"{a} {o}" in RARE}
                  for a in attrs for o in objects]).write_parquet(root / "pairs.parquet")
    write_json(root / "dataset.json", {"name": root.name, "builder": "imagenet-ao",
                                       "vocabulary": {"objects": list(objects), "attributes": list(attrs)}})
    (root / "aux_label.jsonl").write_text("".join(json.dumps({f"{a} {o}": [f"{a}-ish", f"{o}-like", "aux"]}) + "\n"
                                                  for a in attrs for o in objects if f"{a} {o}" not in aux_missing))
    return root


def rows(folder: Path) -> dict[str, dict]:
    return {r["key"]: r for r in read_manifest(folder).iter_rows(named=True)}


# -- no database needed ----------------------------------------------------------------------
def test_correction_recomputes_rare_family_split_or_flags_the_reason(tmp_path):
    from annotations.verdicts import Verdict, apply_verdicts

    folder = make_ao_dataset(tmp_path / "imagenet-ao")
    before = rows(folder)
    seen_train = next(k for k, r in before.items() if r["pair"] == "wooden bell" and r["split"] == "train")
    seen_test = next(k for k, r in before.items() if r["pair"] == "wooden tree" and r["split"] == "test")
    assert before["purple_tree_000"]["rare"] and before["purple_tree_000"]["split"] == "test"
    verdicts = [
        Verdict("purple_tree_000", None, "purple", "bell", "2026-01-02T03:04:05+00:00"),  # the tree -> bell
        Verdict("wooden_bell_002", None, "wooden", "circle"),     # becomes a rare pair held in val: moves there
        Verdict(seen_test, None, "purple", "circle"),             # a rare pair with no images: opens it in test
        Verdict(seen_train, None, "purple", "circle"),            # ... but never in train: flagged, kept
        Verdict("purple_bell_000", None, "golden", "bell"),       # not in the vocabulary: unknown, flagged
        Verdict("wooden_tree_000", "reject", "wooden", "tree"),   # a plain verdict: nothing derived
    ]
    out, rep = apply_verdicts(read_manifest(folder), verdicts, "2099-01-01T00:00:00+00:00", folder)
    got = {r["key"]: r for r in out.iter_rows(named=True)}
    bell = got["purple_tree_000"]
    assert (bell["pair"], bell["rare"], bell["family"], bell["split"], bell["review_flag"]) == (
        "purple bell", False, "colour", "test", None)  # seen pairs have test images: its split stays
    assert (bell["obj_original"], bell["review_status"], bell["review_time"]) == (
        "tree", "accept", "2026-01-02T03:04:05+00:00")  # the reviewer's time, not the pull's
    moved = got["wooden_bell_002"]
    assert (moved["pair"], moved["rare"], moved["family"], moved["review_flag"]) == (
        "wooden circle", True, "material", None)
    assert moved["split"] == "val" != before["wooden_bell_002"]["split"]  # with the rest of its rare pair
    opened = got[seen_test]
    assert (opened["rare"], opened["split"], opened["family"]) == (True, "test", "colour")
    assert "aux_label.jsonl" in opened["review_flag"]  # purple circle has no auxiliary attributes
    kept = got[seen_train]
    assert kept["rare"] is True and kept["split"] == "train"
    assert "'train' holds no rare-pair images" in kept["review_flag"] and "aux_label.jsonl" in kept["review_flag"]
    gold = got["purple_bell_000"]
    assert (gold["pair"], gold["rare"], gold["family"]) == ("golden bell", None, None)
    assert "attribute 'golden' is not in the vocabulary" in gold["review_flag"]
    assert "'golden bell' is not in pairs.parquet" in gold["review_flag"]
    assert gold["split"] == before["purple_bell_000"]["split"]
    assert got["wooden_tree_000"]["review_flag"] is None and got["wooden_tree_000"]["rare"] is False
    assert set(rep.flagged) == {seen_test, seen_train, "purple_bell_000"} and rep.corrected == 5
    assert got["purple_tree_001"] == {**before["purple_tree_001"], **{c: None for c in got["purple_tree_001"]
                                                                      if c not in before["purple_tree_001"]}}
    # pulling the same verdicts again changes nothing (derivations are recomputed the same way)
    again, rep2 = apply_verdicts(out, verdicts, "2100-01-01T00:00:00+00:00", folder)
    assert rep2.changed == 0 and again.equals(out)
    # once the folder knows the pair's auxiliary attributes, the next pull clears that reason
    with (folder / "aux_label.jsonl").open("a") as f:
        f.write(json.dumps({"purple circle": ["violet", "round", "flat"]}) + "\n")
    third, rep3 = apply_verdicts(out, verdicts, "2100-01-01T00:00:00+00:00", folder)
    cleared = {r["key"]: r for r in third.iter_rows(named=True)}
    assert rep3.changed == 2 and cleared[seen_test]["review_flag"] is None
    assert "aux_label.jsonl" not in cleared[seen_train]["review_flag"] and "rare-pair" in cleared[seen_train]["review_flag"]
    assert cleared[seen_test]["review_time"] == opened["review_time"]  # no new verdict: the review time stays


def test_correction_without_pairs_file_flags_rare_and_family(tmp_path):
    from annotations.verdicts import Verdict, apply_verdicts

    folder = make_ao_dataset(tmp_path / "ds")
    (folder / "pairs.parquet").unlink()
    out, rep = apply_verdicts(read_manifest(folder), [Verdict("purple_tree_000", None, "purple", "bell")], "t", folder)
    row = out.filter(pl.col("key") == "purple_tree_000").row(0, named=True)
    assert (row["pair"], row["rare"], row["family"], row["split"]) == ("purple bell", None, None, "test")
    assert "the folder has no pairs.parquet" in row["review_flag"] and list(rep.flagged) == ["purple_tree_000"]
    (folder / "pairs.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(CurateError, match="pairs.parquet"):
        apply_verdicts(read_manifest(folder), [Verdict("purple_tree_000", None, "purple", "bell")], "t", folder)


def test_review_help_shows_port_no_launch_and_the_dataset_url():
    r = subprocess.run([CURATE, "review", "--help"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "120"})
    assert r.returncode == 0, r.stderr
    assert "--port" in r.stdout and "--no-launch" in r.stdout and "--name" in r.stdout
    assert "http://127.0.0.1:5151/datasets/NAME" in r.stdout


# -- with the database -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fo():
    from annotations.database import connect

    fo = connect()
    made: list[str] = []
    yield fo, made
    for name in fo.list_datasets():
        if name.endswith(RUN) or name in made:
            fo.delete_dataset(name)


def sample(fo, name: str, key: str):
    return fo.load_dataset(name).match(fo.ViewField("key") == key).first()


def test_pulled_correction_is_consistent_in_manifest_and_app(fo, tmp_path):
    from annotations.sync import SyncConfig, sync_dataset
    from annotations.verdicts import pull_verdicts

    fo, made = fo
    folder = make_ao_dataset(tmp_path / "imagenet-ao")
    name = f"t-fix-{RUN}"
    cfg = SyncConfig(dataset=folder, name=name, media_dir=tmp_path / "media")
    sync_dataset(cfg)
    s = sample(fo, name, "purple_tree_000")
    assert s.aux_attrs == ["purple-ish", "tree-like", "aux"] and s.rare is True
    s.obj.label = "bell"  # the reviewer's correction in the App
    s.save()
    rep = pull_verdicts(folder, name=name)
    row = rows(folder)["purple_tree_000"]
    assert (row["pair"], row["rare"], row["family"], row["split"], row.get("review_flag")) == (
        "purple bell", False, "colour", "test", None)
    assert rep.corrected == 1 and not rep.flagged
    sync_dataset(cfg)  # the App shows the recomputed fields, the new pair and its auxiliary attributes
    s = sample(fo, name, "purple_tree_000")
    assert (s.obj.label, s.pair.label, s.rare, s.aux_attrs) == ("bell", "purple bell", False,
                                                                ["purple-ish", "bell-like", "aux"])
    assert fo.load_dataset(name).load_saved_view("pair purple bell").count() == 3 + 1


def test_review_time_is_when_the_reviewer_tagged_not_when_pull_ran(fo, tmp_path):
    from annotations.sync import SyncConfig, sync_dataset
    from annotations.verdicts import pull_verdicts

    fo, made = fo
    folder = make_tiny_dataset(tmp_path / "ds-time", objects=("circle",), attrs=("red", "blue"))
    name = f"t-time-{RUN}"
    cfg = SyncConfig(dataset=folder, name=name, media_dir=tmp_path / "media")
    sync_dataset(cfg)
    s = sample(fo, name, "red_circle_001")
    s.tags.append("reject")
    s.save()
    tagged = sample(fo, name, "red_circle_001").last_modified_at
    time.sleep(1.2)
    # a push between the tag and the pull (the manifest changed): it writes the sample, keeping the tag's time
    df = read_manifest(folder)
    write_manifest(df.with_columns((pl.col("score_comp") + 0.5).alias("score_comp")), folder)
    assert sync_dataset(cfg).updated == df.height
    assert sample(fo, name, "red_circle_001").last_modified_at > tagged
    time.sleep(1.2)
    pull_verdicts(folder, name=name)
    row = rows(folder)["red_circle_001"]
    assert row["review_status"] == "reject"
    assert row["review_time"] == tagged.replace(microsecond=0).isoformat() + "+00:00"


def test_each_folder_has_its_own_dataset_and_foreign_verdicts_are_refused(fo, tmp_path):
    from annotations.sync import SyncConfig, sync_dataset
    from annotations.verdicts import pull_verdicts

    fo, made = fo
    first = make_tiny_dataset(tmp_path / "demo-out" / "imagenet-ao", objects=("circle",), attrs=("red", "blue"))
    other = make_tiny_dataset(tmp_path / "other" / "imagenet-ao", objects=("circle",), attrs=("red", "blue"))
    a = sync_dataset(SyncConfig(dataset=first)).name
    made.append(a)
    b = sync_dataset(SyncConfig(dataset=other)).name
    made.append(b)
    assert a != b and a.startswith("imagenet-ao-") and b.startswith("imagenet-ao-")
    assert fo.load_dataset(a).info["curate_dataset"] == str(first.resolve())
    assert fo.load_dataset(b).info["curate_dataset"] == str(other.resolve())
    s = sample(fo, a, "red_circle_000")
    s.tags.append("reject")
    s.save()
    before = (other / "manifest.parquet").read_bytes()
    with pytest.raises(CurateError, match="another folder") as e:
        pull_verdicts(other, name=a)  # the first folder's verdicts into the second
    assert str(first.resolve()) in str(e.value) and b in str(e.value)
    assert (other / "manifest.parquet").read_bytes() == before
    with pytest.raises(CurateError, match="another folder"):
        sync_dataset(SyncConfig(dataset=other, name=a))  # nor are the folders' samples mixed
    assert pull_verdicts(other).changed == 0
    assert pull_verdicts(first).rejected == 1 and rows(first)["red_circle_000"]["review_status"] == "reject"


def test_dataset_named_by_an_older_curate_is_kept_or_asked_for(fo, tmp_path, caplog):
    """Before names were unique, a folder's dataset was named after the folder alone: one recording this
    folder is still used; one recording no folder is only pulled when named."""
    from annotations.sync import FOLDER_INFO, SyncConfig, default_name, resolve_name, sync_dataset
    from annotations.verdicts import pull_verdicts

    fo, made = fo
    folder = make_tiny_dataset(tmp_path / f"legacy-{RUN}", objects=("circle",), attrs=("red",))
    legacy = folder.name
    made.append(default_name(folder))
    sync_dataset(SyncConfig(dataset=folder, name=legacy))  # what the older default made
    s = sample(fo, legacy, "red_circle_000")
    s.tags.append("accept")
    s.save()
    assert sync_dataset(SyncConfig(dataset=folder)).name == legacy and not fo.dataset_exists(default_name(folder))
    assert pull_verdicts(folder).accepted == 1
    ds = fo.load_dataset(legacy)
    del ds.info[FOLDER_INFO]  # made before folders were recorded
    ds.save()
    with pytest.raises(CurateError, match=f"--name {legacy}"):
        pull_verdicts(folder)
    with caplog.at_level(logging.WARNING, logger="annotations.sync"):
        assert resolve_name(fo, folder, None) == default_name(folder)
    assert f"pass --name {legacy}" in caplog.text
    s = sample(fo, legacy, "red_circle_001")
    s.tags.append("reject")
    s.save()
    assert pull_verdicts(folder, name=legacy).rejected == 1


def test_no_launch_prints_the_url_that_opens_the_dataset(fo, tmp_path):
    from annotations.sync import default_name

    fo, made = fo
    folder = make_tiny_dataset(tmp_path / "ds-url", objects=("star",), attrs=("green",))
    made.append(default_name(folder))
    r = subprocess.run([CURATE, "review", str(folder), "--no-launch", "--port", "5199", "--media-dir",
                        str(tmp_path / "media")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"http://127.0.0.1:5199/datasets/{default_name(folder)}" in r.stderr
    assert f"FiftyOne dataset '{default_name(folder)}'" in r.stderr  # the summary names it
