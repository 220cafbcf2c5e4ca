"""What CIR reports say beside their numbers (issue #27 point 6): query and gallery counts over every
table, a warning (report and log) when the gallery is not larger than some K, the metric values
themselves untouched, and one output folder per split for `eval cir` and training."""

from __future__ import annotations

import logging
from pathlib import Path

from test_cir_eval import FixedRetriever, random_split

from training.cir.benchmark import default_out
from training.cir.evaluate import evaluate_split, score
from training.cir.report import metric_table, saturated, write_eval_report


def test_a_gallery_smaller_than_k_is_flagged_and_the_numbers_are_unchanged(caplog, tmp_path):
    split, qv, gallery = random_split("cirr", n_q=30, n_g=51)
    names = list(split.index)
    dense = score(split, qv, names, gallery)
    with caplog.at_level(logging.WARNING, logger="training.cir.evaluate"):
        res = evaluate_split(FixedRetriever(qv, gallery, names), split)
    assert res.metrics == dense  # reporting only: the metric code's values as they were
    assert res.metrics["recall_at50"] == 1.0
    assert res.saturated == ["recall_at50"]  # 51 images, reference removed: 50 candidates
    assert any("R@50" in r.getMessage() and "trivially 100" in r.getMessage() for r in caplog.records)
    d = res.to_dict()
    assert d["saturated"] == ["recall_at50"]
    report = write_eval_report(tmp_path, "m", [d]).read_text()
    assert "**cirr val**: 30 queries, gallery 51 images" in report
    assert "WARNING cirr val" in report and "R@50" in report


def test_a_large_gallery_gets_counts_and_no_warning(caplog):
    split, qv, gallery = random_split("cirr", n_q=20, n_g=200)
    with caplog.at_level(logging.WARNING, logger="training.cir.evaluate"):
        res = evaluate_split(FixedRetriever(qv, gallery, list(split.index)), split)
    assert res.saturated == [] and not caplog.records
    table = metric_table({"m": {"cirr val": res.to_dict()}}, "cirr val")
    assert table.startswith("**cirr val**: 20 queries, gallery 200 images") and "WARNING" not in table


def test_saturation_rules_per_format():
    keys = dict.fromkeys(["recall_at10", "recall_at50", "map_at25", "group_recall_at3", "hard_recall_at3"])
    assert saturated("cirr", 51, keys) == ["recall_at50"]
    assert saturated("circo", 51, keys) == []  # CIRCO keeps the reference among the candidates
    assert saturated("fashioniq", 40, keys) == ["recall_at50"]
    assert saturated("ours", 11, keys) == ["recall_at10", "recall_at50"]  # mAP@K still ranks
    assert saturated("genecis", 3, dict.fromkeys(["recall_at1", "recall_at2", "recall_at3"])) == ["recall_at3"]
    assert saturated("fashioniq", "per category", keys) == []


def test_eval_cir_writes_the_folder_training_writes():
    assert default_out("runs/x", "cirr", "test") == Path("runs/x/eval/cirr-test1")
    assert default_out("runs/x", "cirr", "test1") == Path("runs/x/eval/cirr-test1")
    assert default_out("runs/x", "circo", "test") == Path("runs/x/eval/circo-test")


def test_an_average_over_a_trivial_category_is_flagged():
    from training.cir.benchmark import summary_rows

    def cat(name, r50, sat):
        return {"name": f"fashioniq {name} test", "format": "fashioniq", "split": "test", "queries": 10,
                "gallery": 30 if sat else 80, "metrics": {"recall_at10": 0.5, "recall_at50": r50},
                "saturated": ["recall_at50"] if sat else []}

    (avg,) = summary_rows("fashioniq", "test", [cat("dress", 1.0, True), cat("shirt", 0.8, False)])
    assert avg["metrics"]["average_recall_at50"] == 0.9  # the value is the official average, untouched
    assert avg["saturated"] == ["average_recall_at50", "average_recall"]
    table = metric_table({"m": {avg["name"]: avg}}, avg["name"])
    assert "gallery per category" in table and "gallery per category images" not in table
    assert "WARNING fashioniq average test: a gallery this row averages over" in table
    (clean,) = summary_rows("fashioniq", "test", [cat("dress", 0.7, False), cat("shirt", 0.8, False)])
    assert clean["saturated"] == [] and "WARNING" not in metric_table({"m": {clean["name"]: clean}}, clean["name"])
