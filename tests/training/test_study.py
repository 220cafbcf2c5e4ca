"""`curate eval study` (issue 22): many models, one table; the logit fit; the score cache; bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import COLORS, make_tiny_dataset

from curate.errors import CurateError

CURATE = str(Path(sys.executable).with_name("curate"))


def test_logit_fit_and_effective_robustness_by_hand():
    from training.metrics.robustness import effective_robustness, fit_logit_line, logit, sigmoid

    # logit(0.5) = 0, logit(sigmoid(1)) = 1; OoD logits -1 and 0: the line is y = x - 1
    s1 = 1 / (1 + math.exp(-1))
    fit = fit_logit_line([0.5, s1], [1 - s1, 0.5])
    assert fit.slope == pytest.approx(1.0) and fit.intercept == pytest.approx(-1.0) and fit.points == 2
    # a model at ID logit 2 is predicted sigmoid(1) = 0.7311 OoD; it has 0.8: ER = 0.0689
    id_acc = 1 / (1 + math.exp(-2))
    assert effective_robustness(id_acc, 0.8, fit) == pytest.approx(0.8 - s1)
    assert logit(0.5) == 0.0 and sigmoid(0.0) == 0.5 and math.isfinite(logit(1.0)) and math.isfinite(logit(0.0))
    # three points not on a line, x 0,1,2 / y -1,1,2: slope Sxy/Sxx = 3/2, intercept mean(y) - 1.5 mean(x) = -5/6
    xs = [0.5, s1, id_acc]
    ys = [sigmoid(-1.0), sigmoid(1.0), sigmoid(2.0)]
    fit3 = fit_logit_line(xs, ys)
    assert fit3.slope == pytest.approx(1.5) and fit3.intercept == pytest.approx(-5 / 6)
    assert fit_logit_line([0.5], [0.4]) is None and fit_logit_line([0.5, 0.5], [0.4, 0.3]) is None
    assert effective_robustness(0.5, 0.4, None) is None


def test_topk_and_nmi_are_one_function():
    from builders.imagenet_ao import rarity
    from curate import stats
    from training.metrics.robustness import topk

    assert rarity.nmi is stats.nmi
    m = stats.cooccurrence([("red", "star"), ("red", "star"), ("blue", "circle")])
    assert m.tolist() == [[1, 0], [0, 2]] and stats.nmi(m) == pytest.approx(1.0)
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.4]])
    assert topk(scores, [1, 2, 0], (1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}


def test_models_file_rows_and_refusals(tmp_path):
    from training.study.rows import check_rows, make_row, read_models_file

    f = tmp_path / "models.csv"
    f.write_text("spec,label,group,method,corpus,nmi\nmini:/a,A,clip,,,0.2\nmini:/a,,,probe-k4,,\n# a comment\n")
    rows = read_models_file(f)
    assert [(r.label, r.group, r.method, r.nmi, r.shots) for r in rows] == [
        ("A", "clip", "zeroshot", 0.2, None), ("probe-k4 mini:/a", "few-shot", "probe-k4", None, 4)]
    assert rows[1].seeds == (0, 1, 2)
    with pytest.raises(CurateError, match="duplicate label 'A'"):
        check_rows([make_row("mini:/a", "A"), make_row("mini:/b", "A")])
    f.write_text("model,label\nmini:/a,A\n")
    with pytest.raises(CurateError, match="header"):
        read_models_file(f)
    with pytest.raises(CurateError, match="unknown method"):
        make_row("mini:/a", method="finetune-everything")
    # epochs: scratch and finetune rows only, a whole number >= 1
    f.write_text("spec,label,method,epochs\nscratch,cnn,scratch,5\nmini:/a,ft,finetune,\n")
    assert [r.epochs for r in read_models_file(f)] == [5, None]
    for bad, msg in (("0", "at least 1"), ("2.5", "not a whole number"), ("many", "not a whole number")):
        with pytest.raises(CurateError, match=msg):
            make_row("scratch", method="scratch", epochs=bad)
    with pytest.raises(CurateError, match="epochs applies to scratch and finetune rows, not to probe"):
        make_row("mini:/a", method="probe", epochs=3)


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory, tiny_mini_spec):
    """OoD dataset (filtered by the tiny mini-CLIP), a reference with an extra object, a training set, a
    second random mini-CLIP (another seed) and a models file with a missing checkpoint. Mini-CLIPs, not
    open_clip models: each `curate eval study` process then imports torch, not open_clip's libraries."""
    from training.models.mini_clip import save_random_mini

    root = tmp_path_factory.mktemp("study")
    ds = make_tiny_dataset(root / "ds", objects=("circle", "square", "star"), per_pair=2)
    info = json.loads((ds / "dataset.json").read_text())
    (ds / "dataset.json").write_text(json.dumps({**info, "config": {"model": tiny_mini_spec}}))
    ref = make_tiny_dataset(root / "ref", objects=("circle", "square", "star", "hexagon"), per_pair=2)
    train = make_tiny_dataset(root / "train", objects=("circle", "square", "star"), per_pair=3)
    other = save_random_mini(root / "other", [" ".join(COLORS), "circle square star hexagon",
                                              "a photo of the an itap my with on in"], seed=1)
    models = root / "models.csv"
    models.write_text("spec,label,group,method,corpus,epochs\n"  # short training: the run is what is tested
                      f"{tiny_mini_spec},filter,clip,,,\n"
                      f"{other},independent,clip,,{train},\n"
                      f"mini:{root / 'gone'},missing,clip,,,\n"
                      f"{other},probe,supervised,probe,,\n"
                      f"{other},probe k1,few-shot,probe-k1,,\n"
                      "scratch,cnn,supervised,scratch,,3\n"
                      f"{other},ft,,finetune,,2\n")
    return {"root": root, "ds": ds, "ref": ref, "train": train, "models": models, "other": other,
            "filter": tiny_mini_spec}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([CURATE, "eval", "study", *args, "--device", "cpu"], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "CURATE_NO_PROGRESS": "1"})


def test_study_table_cache_and_bad_rows(study_inputs, tmp_path, capsys):
    x = study_inputs
    out = tmp_path / "study"
    base = [str(x["ds"]), "--out", str(out), "--reference", str(x["ref"]), "--train", str(x["train"]),
            "--unfiltered", str(x["ref"])]
    r = _run([*base, "--models", str(x["models"])])
    assert r.returncode == 1, r.stderr[-2000:]  # one row failed: the exit code says so, the others ran
    rep = json.loads((out / "study.json").read_text())
    rows = {row["label"]: row for row in rep["rows"]}
    assert rep["failed"] == ["missing"] and "does not exist" in rows["missing"]["error"]
    assert all(rows[k]["ok"] for k in ("filter", "independent", "probe", "probe k1", "cnn", "ft")), rows
    assert rows["filter"]["filter_model"] and not rows["independent"]["filter_model"]
    assert not rows["probe"]["filter_model"]
    # the reference's hexagons are not objects of the dataset: counted, left out, reported
    assert rep["excluded_objects"] == {"reference": {"hexagon": 8}, "unfiltered": {"hexagon": 8}}
    assert rep["sizes"]["reference"] == {"images": 24, "pairs": 12, "objects": 3}
    assert rep["sizes"]["rare"]["images"] == 24 and rep["object_classes"] == 3
    for name in ("filter", "independent"):
        m = rows[name]["sets"]
        for s in ("reference", "rare"):
            assert 0 <= m[s]["object_top1"] <= m[s]["object_top5"] <= 1 and m[s]["composition_top1"] is not None
    assert len(rows["probe"]["sets"]["rare"]["object_top1_seeds"]) == 3
    assert rows["probe"]["sets"]["rare"]["composition_top1"] is None  # a probe knows objects only
    # NMI of the independent model's corpus (the training set: every colour with every object) by curate.stats
    from curate.stats import cooccurrence, nmi

    want = nmi(cooccurrence([(a, o) for o in ("circle", "square", "star") for a in ("red", "blue", "green", "yellow")
                             for _ in range(3)]))
    assert rows["independent"]["nmi"] == pytest.approx(want) and rows["filter"]["nmi"] is None
    # the bias check ran (filter vs independent, the reference standing in for the unfiltered images)
    assert rep["filter_bias"]["filter"] == "filter" and "bias" in rep["filter_bias"]["object_top1"]
    md = (out / "study.md").read_text()
    assert "filter model: biased upwards" in md and "hexagon 8" in md and "missing failed" in md
    assert "24 images" in md and "## Filter-model bias" in md
    assert (out / "id_vs_ood.png").stat().st_size > 10_000 and (out / "ood_vs_nmi.png").is_file()
    # the baseline (supervised + few-shot: two probes, the scratch CNN) gives a line and every row an ER
    assert rep["baseline"]["models"] == ["probe", "probe k1", "cnn"]
    assert len(rows["cnn"]["sets"]["rare"]["object_top1_seeds"]) == 3 and not rows["cnn"]["filter_model"]
    cnn_run = out / "runs" / rows["cnn"]["key"][:16] / "cnn-seed2"  # trained through fit(), for 3 epochs
    assert [json.loads(ln)["epoch"] for ln in (cnn_run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert rows["ft"]["group"] == "fine-tuned" and len(rows["ft"]["sets"]["reference"]["object_top1_seeds"]) == 3
    assert (out / "runs" / rows["ft"]["key"][:16] / "ft-seed0" / "metrics.jsonl").is_file()
    if rep["baseline"]["fit"]:
        assert rows["independent"]["effective_robustness"] is not None
    # adding one model scores only that one; the others come from their cached scores
    r = _run([*base, "--models", str(x["models"]), "--model", f"again={x['other']}"])
    assert r.returncode == 1
    rows2 = {row["label"]: row for row in json.loads((out / "study.json").read_text())["rows"]}
    assert [k for k, v in rows2.items() if v.get("cached") is False] == ["again"]
    assert all(rows2[k]["cached"] for k in ("filter", "independent", "probe", "probe k1", "cnn", "ft"))
    assert rows2["again"]["sets"] == rows["independent"]["sets"]  # same weights, same numbers
    # a study folder reused with another dataset is refused, naming the mismatch (the CLI in this process:
    # it refuses before loading a model)
    from curate.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["eval", "study", str(x["ref"]), "--out", str(out), "--reference", str(x["ref"]), "--train",
              str(x["train"]), "--unfiltered", str(x["ref"]), "--model", x["filter"], "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "another dataset" in err and str(x["ref"]) in err


def test_study_refuses_bad_input(study_inputs, tmp_path):
    from training.study.rows import make_row
    from training.study.run import StudyRequest, run_study

    x = study_inputs
    req = StudyRequest(dataset=x["ds"], reference=x["ref"], out=tmp_path / "s",
                       rows=[make_row(x["filter"], "a", corpus=str(tmp_path / "no-corpus"))])
    with pytest.raises(CurateError, match="training corpus does not exist"):
        run_study(req)
    req.rows = [make_row(x["filter"], "a"), make_row(x["other"], "a")]
    with pytest.raises(CurateError, match="duplicate label"):
        run_study(req)
    assert not (tmp_path / "s").exists()  # refused before the folder was made


def test_eval_zeroshot_labels_the_filter_model(study_inputs, tmp_path):
    """`curate eval zeroshot` by the model that filtered the data says so; by another model it does not."""
    from training.zeroshot import FILTER_NOTE, evaluate_dataset, markdown_table

    x = study_inputs
    rep = evaluate_dataset(x["ds"], x["filter"], reference=x["ref"], device="cpu", out=tmp_path / "a")
    assert rep["biased"] and rep["filter_model"] == x["filter"] and FILTER_NOTE in markdown_table(rep)
    assert FILTER_NOTE in (tmp_path / "a" / "zeroshot.md").read_text()
    rep = evaluate_dataset(x["ds"], x["other"], reference=x["ref"], device="cpu", out=tmp_path / "b")
    assert not rep["biased"] and FILTER_NOTE not in markdown_table(rep)


def test_cached_rows_read_no_image(study_inputs, tmp_path, monkeypatch):
    """A rerun whose rows are all cached reads the sets' labels from sets.json, not the images."""
    from training.study import run as study_run
    from training.study.rows import make_row
    from training.study.run import StudyRequest, run_study

    x = study_inputs
    req = StudyRequest(dataset=x["ds"], reference=x["ref"], out=tmp_path / "s", rows=[make_row(x["filter"], "a")],
                       device="cpu")
    first = run_study(req)
    calls = []
    real = study_run.load_sets
    monkeypatch.setattr(study_run, "load_sets", lambda r: calls.append(1) or real(r))
    again = run_study(req)
    assert calls == [] and again["rows"][0]["cached"] and again["rows"][0]["sets"] == first["rows"][0]["sets"]
    req.rows.append(make_row(x["other"], "b"))
    third = run_study(req)
    assert calls == [1] and [r["cached"] for r in third["rows"]] == [True, False]


def test_a_row_cached_with_another_decode_is_not_reused(tiny_mini_spec):
    """Scores made from full-size decodes are other scores than from DCT-scaled ones: the decode mode is
    part of a row's cache key (a study cached before the fast default must not be read back as fast)."""
    from training.study.rows import make_row
    from training.study.run import row_key

    row = make_row(tiny_mini_spec, method="scratch")
    inputs = {"rare": "r", "reference": "f", "train": "t"}
    assert row_key(row, inputs) == row_key(row, inputs, "fast")
    assert row_key(row, inputs, "exact") != row_key(row, inputs, "fast")
    # so is the training length: a row trained for other epochs is other scores (and another runs folder)
    assert row_key(make_row(tiny_mini_spec, method="scratch", epochs=12), inputs) == row_key(row, inputs)  # the default
    assert row_key(make_row(tiny_mini_spec, method="scratch", epochs=3), inputs) != row_key(row, inputs)


def test_decode_exact_scores_rows_again_keeps_both_and_is_recorded(study_inputs, tmp_path, capsys):
    """`curate eval study --decode exact`: every row is scored again from full-size decodes (the mode is in
    its cache key), the fast scores stay cached beside them, and study.json/.md say which mode made the table."""
    import dataclasses

    from curate.cli import main
    from training.study.rows import make_row
    from training.study.run import StudyRequest, run_study

    x = study_inputs
    req = StudyRequest(dataset=x["ds"], reference=x["ref"], out=tmp_path / "s", rows=[make_row(x["filter"], "a")],
                       device="cpu")
    fast = run_study(req)
    assert fast["decode"] == "fast" and "Images decoded fast" in (tmp_path / "s" / "study.md").read_text()
    exact = run_study(dataclasses.replace(req, decode="exact"))
    assert exact["decode"] == "exact" and not exact["rows"][0]["cached"]
    assert exact["rows"][0]["key"] != fast["rows"][0]["key"]
    assert "Images decoded exact" in (tmp_path / "s" / "study.md").read_text()
    assert run_study(req)["rows"][0]["cached"]                           # the fast scores are still there
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["eval", "study", str(x["ds"]), "--out", str(tmp_path / "t"), "--decode", "quick"])
    assert e.value.code == 2 and "unknown --decode 'quick'" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
