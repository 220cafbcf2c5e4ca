"""A URL pool served by a misbehaving local server: every fault is counted by reason, none is fatal,
nothing hangs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from build_helpers import relaxed_toml

CURATE = str(Path(sys.executable).with_name("curate"))
# a 3 s download timeout (the build's default is 10 s): the slow URL times out as it would at 10 s, in 3
RELAXED = relaxed_toml(max_pairs=4, common_pairs=2, generator_images=None, export=[], download_timeout=3)
FAULTS = [404, 500, 5.0, "reset", "redirect-loop", "html", "truncate", "dead"]  # 5 s: past the 3 s timeout


@pytest.mark.slow
@pytest.mark.system
@pytest.mark.timeout(600)
def test_every_network_fault_is_counted_and_none_is_fatal(tmp_path, small_world, tiny_mini_spec):
    from builders.synthetic.httpserver import serve_folder, write_url_list

    pool = small_world.path / "pool"
    paths = pl.read_parquet(pool / "pool.parquet")["path"].to_list()
    faults = dict(zip(paths, FAULTS, strict=False))
    (tmp_path / "build.toml").write_text(RELAXED)
    wj = small_world.path / "world.json"
    out = tmp_path / "ao"
    with serve_folder(pool, faults=faults) as base:
        urls, _ = write_url_list(pool, base, tmp_path)
        r = subprocess.run([CURATE, "build", "imagenet-ao", "--objects", str(wj), "--attributes", str(wj),
                            "--captions", str(small_world.path / "captions"), "--pool", str(urls),
                            "--model", tiny_mini_spec, "--config", str(tmp_path / "build.toml"), "--out", str(out),
                            "--workers", "1"], capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((out / "dataset.json").read_text())["sources"]["pool"]
    assert stats["successes"] == len(paths) - len(FAULTS)
    assert stats["failed_to_download"] + stats["failed_to_resize"] == len(FAULTS)
    reasons = stats["failures_by_reason"]
    assert sum(reasons.values()) == len(FAULTS) and len(reasons) >= 5, reasons
    assert any("404" in k for k in reasons) and any("500" in k for k in reasons)
    assert any("timed out" in k.lower() or "timeout" in k.lower() for k in reasons), reasons
