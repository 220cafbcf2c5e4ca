"""`curate train cir` (the Combiner through fit) and `curate eval cir` on a tiny triplets folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cir_data import shared_tiny_triplets
from torch import nn
from torch.nn import functional as F

from curate.errors import CurateError
from training.cir.models import BASELINES, Combiner, CombinerConfig, combine_baseline
from training.cir.train import CirTrainConfig, RunOptions, train_cir

CURATE = str(Path(sys.executable).with_name("curate"))


# ABaldrati/CLIP4Cir src/combiner.py, Combiner (transcribed as the oracle; only the class name and the
# super() call changed). Used to check ours is the same network: same parameter names, same outputs.
class OfficialCombiner(nn.Module):
    def __init__(self, clip_feature_dim: int, projection_dim: int, hidden_dim: int):
        super().__init__()
        self.text_projection_layer = nn.Linear(clip_feature_dim, projection_dim)
        self.image_projection_layer = nn.Linear(clip_feature_dim, projection_dim)
        self.dropout1 = nn.Dropout(0.5)
        self.dropout2 = nn.Dropout(0.5)
        self.combiner_layer = nn.Linear(projection_dim * 2, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, clip_feature_dim)
        self.dropout3 = nn.Dropout(0.5)
        self.dynamic_scalar = nn.Sequential(nn.Linear(projection_dim * 2, hidden_dim), nn.ReLU(), nn.Dropout(0.5),
                                            nn.Linear(hidden_dim, 1), nn.Sigmoid())
        self.logit_scale = 100

    def forward(self, image_features, text_features, target_features):
        predicted_features = self.combine_features(image_features, text_features)
        target_features = F.normalize(target_features, dim=-1)
        logits = self.logit_scale * predicted_features @ target_features.T
        return logits

    def combine_features(self, image_features, text_features):
        text_projected_features = self.dropout1(F.relu(self.text_projection_layer(text_features)))
        image_projected_features = self.dropout2(F.relu(self.image_projection_layer(image_features)))
        raw_combined_features = torch.cat((text_projected_features, image_projected_features), -1)
        combined_features = self.dropout3(F.relu(self.combiner_layer(raw_combined_features)))
        dynamic_scalar = self.dynamic_scalar(raw_combined_features)
        output = self.output_layer(combined_features) + dynamic_scalar * text_features + (
            1 - dynamic_scalar) * image_features
        return F.normalize(output, dim=-1)


def test_combiner_is_clip4cirs():
    ours = Combiner(CombinerConfig(dim=12))
    assert (ours.cfg.projection_dim, ours.cfg.hidden_dim) == (48, 96)
    official = OfficialCombiner(12, 48, 96)
    official.load_state_dict(ours.state_dict())  # same parameter names and shapes
    img, txt, tgt = torch.randn(5, 12), torch.randn(5, 12), torch.randn(5, 12)
    ours.eval()
    official.eval()
    assert torch.allclose(ours(img, txt, tgt), official(img, txt, tgt), atol=1e-6)
    ours.train()
    official.train()
    torch.manual_seed(3)
    a = ours(img, txt, tgt)
    torch.manual_seed(3)
    assert torch.allclose(a, official(img, txt, tgt), atol=1e-6)  # dropout in the same places


def test_zero_shot_baselines():
    img = np.array([[3.0, 0, 0, 0]], np.float32)
    txt = np.array([[0, 0.5, 0, 0]], np.float32)
    assert np.allclose(combine_baseline("image", img, txt), [[1, 0, 0, 0]])
    assert np.allclose(combine_baseline("text", img, txt), [[0, 1, 0, 0]])
    assert np.allclose(combine_baseline("sum", img, txt), [[2 ** -0.5, 2 ** -0.5, 0, 0]])
    assert BASELINES == ("image", "text", "sum")
    with pytest.raises(CurateError, match="unknown baseline"):
        combine_baseline("both", img, txt)


@pytest.fixture(scope="module")
def trip(tmp_path_factory, tiny_clip_spec) -> Path:
    return shared_tiny_triplets(tmp_path_factory, tiny_clip_spec)


def curate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CURATE, "-q", *args], capture_output=True, text=True, timeout=300)


def curate_here(*args: str, capsys) -> tuple[int, str]:
    """The CLI entry point in this process (no interpreter start-up): (exit code, stderr)."""
    from curate.cli import main

    try:
        main(["-q", *args])
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_train_cli_writes_the_run_and_resumes(trip, tiny_clip_spec, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "cir", "--triplets", str(trip), "--out", str(run), "--backbone", tiny_clip_spec,
            "--epochs", "6", "--batch-size", "32", "--device", "cpu"]
    r = curate(*args)
    assert r.returncode == 0, r.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["model"] == "combiner" and info["combiner"]["dim"] == 32 and info["backbone"] == tiny_clip_spec
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, 7))
    assert "val_recall_at1" in lines[0] and "val_recall_mean" in lines[0]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert (run / "best" / "model.safetensors").exists()
    assert (run / "checkpoints" / "latest").exists()
    assert (run / "features" / "ours").is_dir()  # images encoded once with the backbone, cached
    results = json.loads((run / "results.json").read_text())
    assert set(results["test"]) == {"Combiner", "zero-shot image", "zero-shot text", "zero-shot sum"}
    assert {"ours test", "cirr test1", "circo test"} <= set(results["test"]["Combiner"])
    report = (run / "report.md").read_text()
    assert "| Combiner |" in report and "zero-shot sum" in report and "recall_vs_k.png" in report
    assert (run / "recall_vs_k.png").stat().st_size > 10_000
    assert (run / "eval" / "cirr-test1" / "recall_submission_test1.json").exists()
    assert (run / "eval" / "circo-test" / "circo_submission_test.json").exists()
    # a second start needs --resume (or --overwrite); --resume finds every epoch done and re-reports
    code, err = curate_here(*args, capsys=capsys)
    assert code == 2 and "--resume" in err
    code, err = curate_here(*args, "--resume", "--no-baselines", capsys=capsys)
    assert code == 0, err
    assert json.loads((run / "results.json").read_text())["test"].keys() == {"Combiner"}
    code, err = curate_here(*args, "--overwrite", "--epochs", "6", "--no-baselines", capsys=capsys)  # start again
    assert code == 0, err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6
    # evaluate the run on the CIRR export: the same numbers as the final test evaluation
    code, err = curate_here("eval", "cir", str(run), "--data", str(trip), "--format", "cirr", "--split", "test",
                            "--device", "cpu", capsys=capsys)
    assert code == 0, err
    m = json.loads((run / "eval" / "cirr-test1" / "metrics.json").read_text())  # the folder training wrote
    assert not (run / "eval" / "cirr-test").exists()  # one folder per split, not cirr-test beside cirr-test1
    assert m["results"][0]["metrics"]["recall_at1"] == results["test"]["Combiner"]["cirr test1"]["metrics"]["recall_at1"]


def test_checkpoint_dimension_mismatch_is_a_clear_error(trip, tiny_clip_spec, tmp_path):
    from curate.embed.random_models import TINY_OPEN_CLIP, save_random_open_clip
    from training.cir.benchmark import evaluate_cir

    run = tmp_path / "run"
    train_cir(CirTrainConfig(triplets=str(trip), out=str(run), backbone=tiny_clip_spec, epochs=1, batch_size=32),
              RunOptions(device="cpu", baselines=False))
    wide = save_random_open_clip(tmp_path / "wide", arch="tiny-wide-clip", config={**TINY_OPEN_CLIP, "embed_dim": 48})
    with pytest.raises(CurateError, match=r"expects 32-d features but the backbone .* gives 48-d") as e:
        evaluate_cir(str(run), trip, "ours", "test", out=tmp_path / "ev", backbone=wide, device="cpu")
    assert "run.json" in str(e.value) and "fix:" in str(e.value)


def test_train_refuses_bad_options(trip, tmp_path):
    with pytest.raises(CurateError, match="unknown --model"):
        train_cir(CirTrainConfig(triplets=str(trip), out=str(tmp_path / "r"), model="vit"), RunOptions())
    with pytest.raises(CurateError, match="needs --mllm"):
        train_cir(CirTrainConfig(triplets=str(trip), out=str(tmp_path / "r"), model="mllm"), RunOptions())
    with pytest.raises(CurateError, match="no triplets.parquet"):
        train_cir(CirTrainConfig(triplets=str(tmp_path), out=str(tmp_path / "r")), RunOptions())
