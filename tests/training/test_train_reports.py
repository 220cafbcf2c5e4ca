"""Trainer reports say what they measured (issue #27 point 6): the best checkpoint by the folder it
is in, the data, split sizes, seeds and which baselines ran (the filter model's zero-shot marked
biased); `eval czsl --zero-shot` writes its table to a file like every other eval."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_loop import _problem
from test_trident_train import words  # noqa: F401 - the GloVe-style fixture

from training.loop import FitConfig, checkpoint_name, fit, latest_checkpoint


def test_best_names_the_checkpoint_folder_it_was_saved_from(tmp_path):
    model, opt, sched, batches, loss, gen = _problem()
    run = tmp_path / "r"
    res = fit(model, opt, loss, batches, run, FitConfig(epochs=2, select="val"), scheduler=sched,
              generators={"g": gen}, evaluate=lambda m, e: {"val": [0.5, 0.9][e]})
    best = json.loads((run / "best" / "best.json").read_text())
    assert best["epoch"] == 2 and best["checkpoint"] == "epoch-0001" == res.best["checkpoint"]
    assert latest_checkpoint(run).name == best["checkpoint"]  # the folder the 2nd epoch wrote
    a = load_file(str(run / "checkpoints" / best["checkpoint"] / "model.safetensors"))
    b = load_file(str(run / "best" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoint_name(28) == "epoch-0028"


def _cir_results(backbone: str, filter_model: str | None) -> dict:
    metrics = {"recall_at1": 0.25, "recall_at50": 1.0}
    row = {"name": "ours test", "format": "ours", "split": "test", "queries": 20, "gallery": 40, "metrics": metrics,
           "saturated": ["recall_at50"], "skipped": {}}
    return {
        "run": {"model": "combiner", "backbone": backbone, "triplets": "/d/triplets", "train_triplets": 300},
        "training": {"epochs": 30, "steps": 60, "seconds": 3.0, "samples_per_s": 900.0,
                     "best": {"epoch": 29, "checkpoint": "epoch-0028", "metric": "val_recall_mean", "value": 0.5}},
        "seed": 7,
        "data": {"triplets": "/d/triplets", "source_dataset": "/d", "filter_model": filter_model,
                 "triplets_seed": 0,
                 "split": {"split_by": "composition", "triplets": {"train": 300, "val": 30, "test": 20},
                           "images": {"train": 200, "val": 20, "test": 15},
                           "compositions": {"train": 40, "val": 4, "test": 4},
                           "edits": {"train": 90, "val": 6, "test": 5},
                           "test_shared_with_train": {"edits": 0, "references_that_are_train_images": 0,
                                                      "images_that_are_train_images": 0, "compositions": 0}}},
        "test": {"Combiner": {"ours test": row}, "zero-shot sum": {"ours test": row}},
    }


def test_cir_report_names_data_splits_seeds_baselines_and_best_folder(tmp_path):
    from training.cir.report import write_report

    text = write_report(tmp_path, _cir_results("mini:/m", "mini:/m")).read_text()
    assert "`/d/triplets`" in text and "`/d`" in text
    assert "split by composition" in text and "triplets train/val/test 300/30/20" in text
    assert "test shares with train: 0 edits, 0 reference images, 0 compositions" in text
    assert "seed 7" in text and "triplets seed 0" in text
    assert "`checkpoints/epoch-0028`" in text and "epoch 29 of 30" in text
    assert "| zero-shot sum (biased) |" in text and "biased: this model filtered the data" in text
    assert "| Combiner |" in text
    assert "**ours test**: 20 queries, gallery 40 images" in text and "WARNING" in text


def test_cir_report_with_an_independent_backbone_marks_nothing_biased(tmp_path):
    from training.cir.report import write_report

    text = write_report(tmp_path, _cir_results("open_clip:ViT-B-32/openai", "mini:/m")).read_text()
    assert "| zero-shot sum |" in text and "(biased)" not in text
    assert "independent of the filter model `mini:/m`" in text


def test_czsl_zero_shot_writes_its_table(tmp_path, tiny_clip_spec, capsys):
    from test_trident_train import run
    from trident_helpers import make_czsl_root

    from training.trident.report import zero_shot_stem

    root = make_czsl_root(tmp_path / "root")
    out = tmp_path / "ev"
    assert run("eval", "czsl", "--zero-shot", tiny_clip_spec, "--data", str(root), "--out", str(out),
               "--device", "cpu") == 0
    stem = zero_shot_stem(tiny_clip_spec, "test")
    saved = json.loads((out / f"{stem}.json").read_text())
    assert saved["model"] == tiny_clip_spec and saved["split"] == "test" and "auc" in saved["closed"]["test"]
    md = (out / f"{stem}.md").read_text()
    assert "| closed | test |" in md
    assert str(out / f"{stem}.md") in capsys.readouterr().err.replace("\n", "")
    # without --out: beside the other evals, DATA/eval/
    assert run("eval", "czsl", "--zero-shot", tiny_clip_spec, "--data", str(root), "--device", "cpu") == 0
    assert (root / "eval" / f"{stem}.md").is_file()
    assert Path(stem).name.startswith("czsl-zero-shot-")


def test_trident_report_names_splits_seed_best_folder_and_the_biased_backbone(tmp_path, words,  # noqa: F811
                                                                              tiny_clip_spec):
    from conftest import make_tiny_dataset
    from test_trident_train import _train

    ds = make_tiny_dataset(tmp_path / "ds")
    info = json.loads((ds / "dataset.json").read_text())
    (ds / "dataset.json").write_text(json.dumps({**info, "config": {"model": tiny_clip_spec}}))  # it filtered ds
    out = tmp_path / "run"
    assert _train(ds, out, tiny_clip_spec, words, "--epochs", "2", cache=tmp_path / "cache") == 0
    report = (out / "report.md").read_text()
    best = json.loads((out / "best" / "best.json").read_text())
    assert f"best: `checkpoints/{best['checkpoint']}` (epoch {best['epoch']} of 2" in report
    assert best["checkpoint"] == f"epoch-{best['epoch'] - 1:04d}"
    assert "Seed 124." in report and f"`{ds}`" in report
    res = json.loads((out / "results.json").read_text())
    test = res["splits"]["test"]
    assert test["pairs_seen"] + test["pairs_unseen"] > 0 and test["images_seen"] + test["images_unseen"] > 0
    assert (f"test {test['pairs_seen']} seen / {test['pairs_unseen']} unseen pairs, {test['images_seen']} / "
            f"{test['images_unseen']} images") in report
    assert "biased: this model filtered the data" in report and res["filter_model"] == tiny_clip_spec


def test_czsl_zero_shot_by_the_filter_model_is_marked_biased(tmp_path):
    from training.trident.report import write_zero_shot_report, zero_shot_stem

    data = tmp_path / "ds"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"config": {"model": "mini:/m"}}))
    md = write_zero_shot_report(tmp_path / "a", {"closed": {}, "open": {}}, "mini:/m", data, "test").read_text()
    assert "biased: this model filtered the data" in md
    saved = json.loads((tmp_path / "a" / f"{zero_shot_stem('mini:/m', 'test')}.json").read_text())
    assert saved["biased"] is True and saved["filter_model"] == "mini:/m"
    md = write_zero_shot_report(tmp_path / "b", {"closed": {}, "open": {}}, "open_clip:ViT-B-32/openai", data,
                                "test").read_text()
    assert "biased" not in md and "independent" in md
