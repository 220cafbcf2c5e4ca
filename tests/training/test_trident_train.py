"""`curate train trident` / `curate eval czsl` end to end on a tiny CZSL root and a tiny random CLIP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trident_helpers import make_czsl_root

from curate.cli import main
from curate.errors import CurateError
from training.trident.data import SPLIT_NAME, load_metadata


def run(*argv: str) -> int:
    try:
        main(["-q", *argv])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module")
def words(tmp_path_factory) -> str:
    """A GloVe-style file for the tiny vocabulary (no model to load)."""
    import numpy as np

    names = ["red", "blue", "green", "circle", "square", "paper", "plane", "bright", "shiny", "plain", "dark", "matte"]
    rng = np.random.default_rng(0)
    f = tmp_path_factory.mktemp("words") / "vectors.txt"
    f.write_text("".join(f"{w} " + " ".join(f"{x:.4f}" for x in rng.normal(size=8)) + "\n" for w in names))
    return f"glove:{f}"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_czsl_root(tmp_path_factory.mktemp("czsl") / "root")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, root, words, tiny_clip_spec):
    """One 2-epoch run shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "run"
    cache = tmp_path_factory.mktemp("cache")
    assert run("train", "trident", "--data", str(root), "--out", str(out), "--backbone", tiny_clip_spec,
               "--word-embeddings", words, "--epochs", "2", "--batch-size", "4", "--cache-dir", str(cache),
               "--device", "cpu", "--threads", "1") == 0
    return out, cache


def _train(root, out, spec, words, *extra: str, cache=None) -> int:
    args = ["train", "trident", "--data", str(root), "--out", str(out), "--backbone", spec, "--word-embeddings", words,
            "--device", "cpu", "--threads", "1", *extra]
    return run(*args, *(["--cache-dir", str(cache)] if cache else []))


def test_train_writes_checkpoints_metrics_best_report_and_eval_agrees(trained, root):
    out, _ = trained
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all("val_auc" in r for r in lines)
    assert (out / "checkpoints" / "epoch-0001" / "model.safetensors").exists()
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["metric"] == "val_auc"
    results = json.loads((out / "results.json").read_text())
    closed = results["closed"]["test"]
    for k in ("best_seen", "best_unseen", "best_hm", "auc", "attr_acc", "obj_acc"):
        assert 0.0 <= closed[k] <= 1.0
    assert closed["auc"] > 0 and closed["best_unseen"] > 0  # it learned something in 6 steps
    assert results["open"]["test"]["seen_curve"] and results["feasibility"]["kind"] == "words"
    report = (out / "report.md").read_text()
    assert "| closed | test |" in report and "| open | val |" in report and "curves.png" in report
    assert (out / "curves.png").stat().st_size > 5000
    state = load_file(str(out / "best" / "model.safetensors"))
    assert "local_agg.3.0.weight" in state and not any(k.startswith("_frozen") for k in state)
    # `curate eval czsl` on the same run and data gives the numbers of the run's own final evaluation
    assert run("eval", "czsl", str(out), "--data", str(root), "--split", "test", "--open-world", "--device", "cpu") == 0
    again = json.loads((out / "eval-test.json").read_text())
    assert again["closed"]["test"]["auc"] == pytest.approx(closed["auc"], abs=1e-9)
    assert again["open"]["test"]["auc"] == pytest.approx(results["open"]["test"]["auc"], abs=1e-9)


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, root, words, tiny_clip_spec, trained):
    _, cache = trained
    out = tmp_path / "run"
    assert _train(root, out, tiny_clip_spec, words, "--epochs", "1", "--batch-size", "4", cache=cache) == 0
    assert _train(root, out, tiny_clip_spec, words, "--epochs", "2", cache=cache) == 2  # no --resume: refused
    assert _train(root, out, tiny_clip_spec, words, "--epochs", "2", "--batch-size", "4", "--resume", cache=cache) == 0
    a = load_file(str(out / "checkpoints" / "epoch-0001" / "model.safetensors"))
    b = load_file(str(trained[0] / "checkpoints" / "epoch-0001" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_preset_or_backbone_names_the_mismatch(tmp_path, root, words, tiny_clip_spec, trained,
                                                                   capsys):
    from curate.embed.random_models import save_random_hf_clip

    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    capsys.readouterr()
    assert _train(root, out, tiny_clip_spec, words, "--preset", "cgqa", "--resume", cache=trained[1]) == 2
    assert "preset 'demo' vs 'cgqa'" in capsys.readouterr().err
    other = save_random_hf_clip(tmp_path / "hf")
    assert _train(root, out, other, words, "--resume", cache=tmp_path / "c2") == 2
    assert re.search(r"backbone 'open_clip:.*' vs 'hf:", capsys.readouterr().err)


def test_a_checkpoint_from_another_preset_is_named(tmp_path, root, words, tiny_clip_spec, trained, capsys):
    other = tmp_path / "other"
    assert _train(root, other, tiny_clip_spec, words, "--preset", "mit-states", "--epochs", "1",
                  cache=trained[1]) == 0
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    shutil.copy(other / "best" / "model.safetensors", out / "best" / "model.safetensors")
    capsys.readouterr()
    assert run("eval", "czsl", str(out), "--data", str(root), "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "TRIDENT G=6, L=12, dim=1024" in err and "preset 'demo'" in err


def test_corrupted_or_truncated_checkpoints_are_clear_errors(tmp_path, root, words, tiny_clip_spec, trained, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    model = out / "best" / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    capsys.readouterr()
    assert run("eval", "czsl", str(out), "--data", str(root), "--device", "cpu") == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    state = out / "checkpoints" / "epoch-0001" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    assert _train(root, out, tiny_clip_spec, words, "--epochs", "3", "--resume", cache=trained[1]) == 2
    assert "not a readable training state" in capsys.readouterr().err


def test_empty_splits(tmp_path, words, tiny_clip_spec, trained, capsys):
    root = make_czsl_root(tmp_path / "root")
    meta = root / f"metadata_{SPLIT_NAME}.t7"
    torch.save([r for r in load_metadata(meta) if r["set"] != "val"], meta)
    out = tmp_path / "run"
    assert _train(root, out, tiny_clip_spec, words, "--epochs", "1", cache=tmp_path / "cache") == 0
    assert not (out / "best").exists()  # no validation images: no selection, the last epoch is evaluated
    assert json.loads((out / "results.json").read_text())["model_file"] == "last epoch"
    torch.save([r for r in load_metadata(meta) if r["set"] != "test"], meta)
    capsys.readouterr()
    assert run("eval", "czsl", str(out), "--data", str(root), "--split", "test", "--device", "cpu") == 2
    assert "the test split has no images" in capsys.readouterr().err


def test_online_backbone_linear_model_and_zero_shot(tmp_path, root, words, tiny_clip_spec):
    out = tmp_path / "online"
    assert _train(root, out, tiny_clip_spec, words, "--epochs", "1", "--online") == 0
    assert json.loads((out / "run.json").read_text())["cache_dir"] is None
    lin = tmp_path / "linear"
    assert _train(root, lin, tiny_clip_spec, words, "--epochs", "1", "--model", "linear",
                  cache=tmp_path / "cache") == 0
    assert "image_embedder.weight" in load_file(str(lin / "best" / "model.safetensors"))
    from training.trident.results import evaluate_zero_shot

    res = evaluate_zero_shot(tiny_clip_spec, root, "test", True, "cpu", feasibility="none")
    assert 0.0 <= res["closed"]["test"]["auc"] <= 1.0 and len(res["open"]["test"]["seen_curve"]) >= 1


def test_dataset_folder_trains_with_manifest_splits(tmp_path, tiny_dataset, words, tiny_clip_spec):
    out = tmp_path / "run"
    assert _train(tiny_dataset, out, tiny_clip_spec, words, "--epochs", "1", cache=tmp_path / "cache") == 0
    spec = json.loads((out / "run.json").read_text())
    assert spec["data"]["kind"] == "dataset" and spec["data"]["images"]["train"] > 0


def test_unknown_preset_and_missing_backbone(tmp_path, root, words):
    assert run("train", "trident", "--data", str(root), "--out", str(tmp_path / "r"), "--preset", "nope") == 2
    from training.trident.train import TrainRequest, train_trident

    with pytest.raises(CurateError, match="no --backbone"):
        train_trident(TrainRequest(data=root, out=tmp_path / "r", word_embeddings=words, device="cpu"))


@pytest.mark.slow
def test_torchrun_two_ranks_train_and_agree(tmp_path, root, words, tiny_mini_spec):
    """Two torchrun ranks train and agree. The backbone is the session's mini-CLIP (``tiny_mini_spec``):
    each rank is a process of its own, and the tiny open_clip model would make each import open_clip's
    libraries (the `trained` run above is the CLI run with the open_clip model)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CURATE_NO_PROGRESS": "1", "COLUMNS": "400"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "curate.cli", "-v", "train", "trident", "--data", str(root), "--out", str(out),
           "--backbone", tiny_mini_spec, "--word-embeddings", words, "--epochs", "2", "--batch-size", "4",
           "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    logs = re.findall(r"trident epoch (\d)/2: loss [\d.]+.*?val_auc ([\d.]+)", r.stderr + r.stdout)
    by_epoch: dict[str, set[str]] = {}
    for epoch, auc in logs:
        by_epoch.setdefault(epoch, set()).add(auc)
    assert sorted(by_epoch) == ["1", "2"] and all(len(v) == 1 for v in by_epoch.values())  # ranks agree
    assert len(logs) == 4  # both ranks logged both epochs
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]  # 12 images, global batch 4: 2 per rank, 6 images per rank


def test_eval_decodes_as_the_run_was_trained_or_as_told(trained, root):
    """`curate eval czsl RUN` decodes as the run trained (its config: fast) and reads the run's token cache;
    `--decode exact` decodes at full size into a cache of its own and leaves the run's untouched."""
    import os

    out, cache = trained
    own_cache = {p: p.read_bytes() for p in cache.rglob("features.json")}
    assert own_cache and all(json.loads(b)["decode"] == "fast" for b in own_cache.values())
    assert run("eval", "czsl", str(out), "--data", str(root), "--split", "test", "--device", "cpu") == 0
    fast = json.loads((out / "eval-test.json").read_text())
    assert run("eval", "czsl", str(out), "--data", str(root), "--split", "test", "--device", "cpu",
               "--decode", "exact") == 0
    exact = json.loads((out / "eval-test.json").read_text())
    assert (fast["decode"], exact["decode"]) == ("fast", "exact")
    assert exact["closed"]["test"]["auc"] == pytest.approx(fast["closed"]["test"]["auc"], abs=1e-9)  # 32 px: same pixels
    made = Path(os.environ["CURATE_CACHE"]) / "trident-features"
    assert any(json.loads(p.read_text())["decode"] == "exact" for p in made.glob("*/features.json"))
    assert {p: p.read_bytes() for p in cache.rglob("features.json")} == own_cache
    assert run("eval", "czsl", str(out), "--data", str(root), "--decode", "quick") == 2
