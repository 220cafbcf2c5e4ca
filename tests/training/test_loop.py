"""``training.loop.fit``: resume is exact (kill -9 included), checkpoints are checked, metrics are kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from curate.errors import CurateError
from training.loop import FitConfig, fit, latest_checkpoint

CURATE = str(Path(sys.executable).with_name("curate"))


def _problem(seed: int = 0, width: int = 4):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(width, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    data = torch.randn(40, 3)
    target = data.sum(1, keepdim=True)
    gen = torch.Generator().manual_seed(1)

    def batches(epoch):
        perm = torch.randperm(40, generator=gen)
        for i in range(0, 40, 8):
            yield perm[i:i + 8]

    def loss(m, idx):
        return torch.nn.functional.mse_loss(m(data[idx]), target[idx]), len(idx)

    return model, opt, sched, batches, loss, gen


def _run(run: Path, epochs: int, resume: bool = False, **kw):
    model, opt, sched, batches, loss, gen = _problem(**kw)
    res = fit(model, opt, loss, batches, run, FitConfig(epochs=epochs, seed=0, resume=resume), scheduler=sched,
              generators={"g": gen}, evaluate=lambda m, e: {"val": -float(e)}, )
    return model, res


def test_resume_equals_an_uninterrupted_run(tmp_path):
    full, res = _run(tmp_path / "a", 6)
    assert res.epochs_done == 6 and len(res.history) == 6
    _run(tmp_path / "b", 3)  # stop after epoch 3 ...
    resumed, res_b = _run(tmp_path / "b", 6, resume=True)  # ... and carry on
    for (k, v), (_, w) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5, 6]  # no epoch written twice
    assert latest_checkpoint(tmp_path / "b").name == "epoch-0005"
    assert len(list((tmp_path / "b" / "checkpoints").glob("epoch-*"))) == 2  # older ones pruned


def test_grad_accumulation_and_best_model(tmp_path):
    model, opt, sched, batches, loss, gen = _problem()
    res = fit(model, opt, loss, batches, tmp_path / "r", FitConfig(epochs=2, grad_accum=2, select="val"),
              evaluate=lambda m, e: {"val": [0.5, 0.9][e]})
    assert res.steps == 6  # 5 batches per epoch: 2 full accumulations + the partial last one
    assert json.loads((tmp_path / "r" / "best" / "best.json").read_text())["epoch"] == 2


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    _run(tmp_path / "r", 2)
    ckpt = latest_checkpoint(tmp_path / "r")
    with pytest.raises(CurateError, match="another model") as e:
        _run(tmp_path / "r", 3, resume=True, width=5)
    assert str(ckpt / "model.safetensors") in str(e.value)
    (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:50])
    with pytest.raises(CurateError, match="not a readable checkpoint") as e:
        _run(tmp_path / "r", 3, resume=True)
    assert "model.safetensors" in str(e.value)
    (ckpt / "state.pt").write_bytes(b"\x80\x04 definitely not a state")
    with pytest.raises(CurateError, match="not a readable training state"):
        _run(tmp_path / "r", 3, resume=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.system
def test_kill_9_mid_training_then_resume_gives_identical_weights(tmp_path):
    from test_mini_clip import make_world

    world = make_world(tmp_path / "world", per_pair=8)
    args = ["model", "train-mini", "--world", str(world), "--epochs", "4", "--threads", "1"]  # killed after 2
    env = {**os.environ, "CURATE_NO_PROGRESS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([CURATE, *args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    latest = killed.with_name(".killed.run") / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() >= "epoch-0002":
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch: the run is somewhere after epoch 3's checkpoint
    proc.wait()
    assert not (killed / "model.safetensors").exists()
    r = subprocess.run([CURATE, *args, "--out", str(killed)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming after epoch" in r.stderr
    clean = tmp_path / "clean"
    r = subprocess.run([CURATE, *args, "--out", str(clean)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (killed / "model.safetensors").read_bytes() == (clean / "model.safetensors").read_bytes()


def test_saved_weights_with_metadata_are_the_same_bytes_in_every_process(tmp_path):
    """safetensors keeps metadata in a hash map whose order changes from process to process: with two
    keys the same weights were different bytes half the time (a resumed TRIDENT run's best model differed
    from an uninterrupted run's). save_model writes one key of sorted JSON. Saved 4 times in this process
    and 4 times in another: the hash map's seed also changes from map to map within a process (with the
    four keys below as metadata, 8 saves in one process gave 8 different files), so 8 saves in two
    processes catch an unordered write more surely than 4 processes saving once, at the cost of one
    interpreter start instead of four."""
    import subprocess
    import sys

    code = """
import sys, torch
from pathlib import Path
from training.loop import save_model, model_metadata
class M(torch.nn.Linear):
    def checkpoint_metadata(self):
        return {"bn_groups": "official", "partners": "official", "z": "1", "a": "2"}
def saves(prefix):
    for i in range(4):
        torch.manual_seed(0)
        path = Path(f"{prefix}-{i}.safetensors")
        save_model(M(3, 2), path)
        assert model_metadata(path) == {"a": "2", "bn_groups": "official", "partners": "official", "z": "1"}
if __name__ == "__main__":
    saves(sys.argv[1])
"""
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "other")], check=True)
    here: dict = {"__name__": "saves_here"}
    exec(compile(code, "<saves>", "exec"), here)
    here["saves"](str(tmp_path / "here"))
    outs = [p.read_bytes() for p in sorted(tmp_path.glob("*.safetensors"))]
    assert len(outs) == 8 and len(set(outs)) == 1
