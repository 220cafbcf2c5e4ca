"""SIGKILL at random (seeded) moments of `curate triplets` and the trainers, then rerun: the triplets'
outputs are byte-identical to an uninterrupted run's, a training run ends with the same weights and test
metrics (kill_helpers.py says how). Split from test_kill_anywhere.py so the two test workers share them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from kill_helpers import check_same, kill_attempts, leftover_processes, run

pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def triplets_ref(small_build, tmp_path_factory):
    """``curate triplets`` on the build, uninterrupted: (args, output folder, seconds)."""
    args = ["triplets", str(small_build.out), "--format", "cirr,circo,fashioniq,shards"]
    out = tmp_path_factory.mktemp("trip-ref") / "out"
    return args, out, run(args, out)


def test_triplets_killed_anywhere(triplets_ref, tmp_path):
    args, ref, duration = triplets_ref
    kills, attempts = kill_attempts(args, tmp_path / "trip-killed" / "out", duration, seed=3, sure=1)
    run(args, tmp_path / "trip-killed" / "out")
    check_same(ref, tmp_path / "trip-killed" / "out")
    assert kills >= 1, (kills, attempts)


def _trained(run_dir: Path) -> dict[str, str]:
    """What a training run must reproduce exactly: its weights and its test metrics."""
    last = (run_dir / "checkpoints" / "latest").read_text().strip()
    out = {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
           for name in (f"checkpoints/{last}/model.safetensors", "best/model.safetensors")
           if (run_dir / name).exists()}
    results = json.loads((run_dir / "results.json").read_text())
    out["test metrics"] = json.dumps({k: v for k, v in results.items() if k not in ("training", "run", "model_file")},
                                     sort_keys=True)
    return out


@pytest.mark.parametrize("trainer", ["cir", "trident"])
def test_training_killed_anywhere(small_build, triplets_ref, trainer, tmp_path):
    if trainer == "cir":
        args = ["train", "cir", "--triplets", str(triplets_ref[1]), "--epochs", "8", "--resume"]
    else:  # 4 epochs: the kills land after the start-up (sure=1), in the training
        args = ["train", "trident", "--data", str(small_build.out), "--epochs", "4", "--resume"]
    duration = run(args, tmp_path / f"{trainer}-ref" / "out")
    kills, attempts = kill_attempts(args, tmp_path / f"{trainer}-killed" / "out", duration, seed=4, sure=1)
    run(args, tmp_path / f"{trainer}-killed" / "out")
    assert _trained(tmp_path / f"{trainer}-ref" / "out") == _trained(tmp_path / f"{trainer}-killed" / "out")
    assert not [p for p in (tmp_path / f"{trainer}-killed").rglob("*") if ".tmp-" in p.name]
    assert not leftover_processes(tmp_path / f"{trainer}-killed" / "out")
    assert kills >= 1, (kills, attempts)
