"""The build config the end-to-end tests share, and ``curate_in`` (a command run in the test process).

A random model judges nothing, so the filters are relaxed to keep every candidate up to the
per-pair cap: the tests check the filters' plumbing (funnel, resume, outputs), not their verdicts.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

RELAXED_FILTERS: dict[str, Any] = {"object_topk": 1000, "attribute_check": False, "comp_threshold": -1.0,
                                   "dedup_threshold": 1.01, "min_resolution": 32}
SMALL: dict[str, Any] = {"max_pairs": 8, "common_pairs": 4, "generator_images": 3, "images_per_pair": 3,
                         "min_images_per_pair": 1, "retrieve_k": 6, "export": ["czsl", "imagefolder"]}


def relaxed_toml(**keys: Any) -> str:
    """``build.toml`` text: relaxed filters, a small build, then ``keys`` (a None value leaves the key out,
    so the build's default applies)."""
    merged = {**RELAXED_FILTERS, **SMALL, **keys}
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in merged.items() if v is not None)


# The dataset (+ triplets) the output tests share (test_datasets_load, test_exports_official,
# test_zeroshot_reference): built once per test run by conftest's ``ao_with_triplets``.
AO_BUILD = """
object_topk = 1000
attribute_check = false
comp_threshold = -1.0
dedup_threshold = 1.01
min_resolution = 32
max_pairs = 6
common_pairs = 4
generator_images = 3
images_per_pair = 9
min_images_per_pair = 1
retrieve_k = 6
export = ["czsl", "imagefolder"]
"""


def build_ao_with_triplets(base, small_world, model: str):
    """``curate build imagenet-ao`` (AO_BUILD) then ``curate triplets`` into ``base/ao``; returns the folder."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    curate = str(Path(sys.executable).with_name("curate"))
    out = base / "ao"
    if (out / "triplets" / "triplets.json").exists():
        return out
    (base / "build.toml").write_text(AO_BUILD)
    wj = small_world.path / "world.json"
    env = {**os.environ, "CURATE_NO_PROGRESS": "1"}
    r = subprocess.run([curate, "build", "imagenet-ao", "--objects", str(wj), "--attributes", str(wj), "--captions",
                        str(small_world.path / "captions"), "--pool", str(small_world.path / "pool" / "images"),
                        "--generator", "demo", "--model", model, "--config", str(base / "build.toml"),
                        "--out", str(out), "--workers", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # split by image: these tests read every split back; 10 compositions split by composition leave
    # train without an edit (tests/builders/test_triplets_splits.py tests the composition split)
    r = subprocess.run([curate, "-q", "triplets", str(out), "--splits", "train=0.5,val=0.25,test=0.25",
                        "--split-by", "image", "--max-per-pair", "3"], capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def curate_in(capfd, *args) -> subprocess.CompletedProcess:
    """``curate ARGS`` in this process, for the refusals checked before anything runs (a process per case
    would pay curate's imports, and open_clip's, each time): exit status from ``main``'s SystemExit, stdout
    and stderr captured at the file descriptors, so what a spawned worker wrote would be counted too."""
    import pytest

    from curate.cli import main

    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(list(args), stop.value.code, out, err)
