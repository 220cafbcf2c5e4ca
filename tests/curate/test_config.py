"""TOML configs into dataclasses: unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from curate.config import from_dict, load_toml, merge, to_dict
from curate.errors import CurateError
from curate.shards_cli import ReshardConfig

CURATE = str(Path(sys.executable).with_name("curate"))


@dataclass
class Filters:
    min_score: float = 0.2
    words: list[str] = field(default_factory=list)


@dataclass
class BuildConfig:
    name: str
    seed: int = 0
    out: Path | None = None
    filters: Filters = field(default_factory=Filters)


def toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.toml"
    p.write_text(text)
    return p


def test_load_valid_config_with_nested_table(tmp_path):
    p = toml(tmp_path, 'name = "ao"\nseed = 3\nout = "runs/a"\n[filters]\nmin_score = 1\nwords = ["red", "blue"]\n')
    cfg = load_toml(p, BuildConfig)
    assert cfg == BuildConfig("ao", 3, Path("runs/a"), Filters(1.0, ["red", "blue"]))
    assert isinstance(cfg.filters.min_score, float)
    assert to_dict(cfg)["out"] == "runs/a"


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    p = toml(tmp_path, 'name = "ao"\nsed = 3\n')
    with pytest.raises(CurateError, match="unknown key 'sed'") as e:
        load_toml(p, BuildConfig)
    assert e.value.where == str(p) and e.value.fix == "did you mean 'seed'?"
    with pytest.raises(CurateError, match="unknown key 'filters.colour'") as e:
        load_toml(toml(tmp_path, 'name = "x"\n[filters]\ncolour = 1\n'), BuildConfig)
    assert "known keys: min_score, words" in e.value.fix


@pytest.mark.parametrize("text, key, expected", [
    ('name = "a"\nseed = "three"\n', "seed", "int"),
    ('name = "a"\nseed = true\n', "seed", "int"),
    ('name = 7\n', "name", "str"),
    ('name = "a"\n[filters]\nmin_score = "high"\n', "filters.min_score", "float"),
    ('name = "a"\n[filters]\nwords = ["ok", 3]\n', "filters.words[1]", "str"),
    ('name = "a"\nfilters = 5\n', "filters", "Filters"),
])
def test_wrong_type_names_the_key(tmp_path, text, key, expected):
    with pytest.raises(CurateError) as e:
        load_toml(toml(tmp_path, text), BuildConfig)
    assert f"key {key!r} must be {expected}" in e.value.message
    assert str(tmp_path / "cfg.toml") in e.value.message


def test_bad_toml_missing_file_and_missing_required_key(tmp_path):
    with pytest.raises(CurateError, match="not valid TOML.*line 2"):
        load_toml(toml(tmp_path, 'name = "a"\nseed = = 1\n'), BuildConfig)
    with pytest.raises(CurateError, match="config file not found"):
        load_toml(tmp_path / "nope.toml", BuildConfig)
    with pytest.raises(CurateError, match="incomplete config"):
        from_dict(BuildConfig, {"seed": 1})


def test_cli_values_override_the_file(tmp_path):
    cfg = load_toml(toml(tmp_path, "maxcount = 5\nprefix = 'p'\n"), ReshardConfig)
    cfg = merge(cfg, {"maxcount": 7, "prefix": None, "workers": 2})
    assert (cfg.maxcount, cfg.prefix, cfg.workers, cfg.maxsize) == (7, "p", 2, ReshardConfig().maxsize)


@pytest.fixture
def one_shard(tmp_path) -> Path:
    from curate.shards import write_shard

    write_shard(tmp_path / "in" / "a.tar", [{"__key__": f"k{i}", "txt": str(i)} for i in range(5)])
    return tmp_path / "in"


def run_reshard(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "CURATE_NO_PROGRESS": "1"}
    return subprocess.run([CURATE, "shards", "reshard", *map(str, args)], capture_output=True, text=True, env=env)


def test_reshard_config_file_applies_and_flags_win(tmp_path, one_shard):
    cfg = toml(tmp_path, "maxcount = 2\nprefix = 'cfg'\nworkers = 1\n")
    r = run_reshard(one_shard, "--out", tmp_path / "o", "--config", cfg, "--maxcount", "4")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "o" / "shards").glob("*.tar")) == [
        "cfg-000000-000000.tar", "cfg-000000-000001.tar"]  # prefix from the file, 4 per shard from the flag
    assert json.loads((tmp_path / "o" / ".curate" / "run.json").read_text())["config"]["maxcount"] == 4


@pytest.mark.parametrize("text, needle", [
    ("maxcont = 5\n", "unknown key 'maxcont'"),
    ("maxcount = 'many'\n", "key 'maxcount' must be int"),
])
def test_reshard_bad_config_is_one_line_naming_the_key(tmp_path, one_shard, text, needle):
    r = run_reshard(one_shard, "--out", tmp_path / "o", "--config", toml(tmp_path, text))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert str(tmp_path / "cfg.toml") in lines[0]
    assert not (tmp_path / "o").exists()  # nothing written
