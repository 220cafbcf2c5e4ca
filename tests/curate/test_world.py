"""curate.world: the one reader of the demo world (fast: hand-written world.json files)."""

from __future__ import annotations

import pytest

from curate.errors import CurateError
from curate.fsutil import write_json
from curate.world import HELDOUT, World, is_world, pool_table_in, shards, split_dir, world_dir


def _minimal(folder):
    write_json(folder / "world.json", {"objects": [{"name": "heart", "plural": "hearts"}, {"name": "star"}],
                                       "attributes": [{"name": "red", "family": "colour"},
                                                      {"name": "striped", "family": "pattern"}]})
    return folder


def test_a_minimal_world_json_loads_with_families_from_the_attributes(tmp_path):
    w = World.load(_minimal(tmp_path / "w"))
    assert w.objects == ["heart", "star"] and w.attributes == ["red", "striped"]
    assert w.families == {"colour": ["red"], "pattern": ["striped"]} and w.plurals == {"heart": "hearts"}
    assert w.all_pairs() == [("red", "heart"), ("red", "star"), ("striped", "heart"), ("striped", "star")]
    assert w.rare_pairs == [] and w.ground_truth() == {}
    assert World.load(tmp_path / "w" / "world.json").path == tmp_path / "w"  # its world.json names it too


def test_where_things_are(tmp_path):
    w = _minimal(tmp_path / "w")
    assert is_world(w) and not is_world(tmp_path)
    assert world_dir(w) == w and world_dir(w / "world.json") == w and world_dir(tmp_path) is None
    (w / "heldout").mkdir()
    for name in ("heldout-000001.tar", "heldout-000000.tar", "other.tar"):
        (w / "heldout" / name).write_bytes(b"")
    assert [p.name for p in shards(w, HELDOUT)] == ["heldout-000000.tar", "heldout-000001.tar"]
    assert split_dir(w, HELDOUT) == w / "heldout"
    with pytest.raises(ValueError):
        split_dir(w, "val")
    assert pool_table_in(w) is None
    (w / "pool").mkdir()
    (w / "pool" / "pool.parquet").write_bytes(b"")
    assert pool_table_in(w) == pool_table_in(w / "pool") == w / "pool" / "pool.parquet"


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read world.json"),
    ("[1, 2]", "not a JSON object"),
    ('{"objects": [], "attributes": [{"name": "red"}]}', "no objects list"),
    ('{"objects": [{"plural": "x"}], "attributes": ["red"]}', "needs a name"),
    ('{"objects": ["heart"], "attributes": ["red"], "rare_pairs": [["red"]]}', "rare_pairs is not a list"),
    ('{"objects": ["heart"], "attributes": ["red"], "seed": "zero"}', "malformed"),
])
def test_a_malformed_world_json_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "world.json").write_text(content)
    with pytest.raises(CurateError, match=message) as e:
        World.load(tmp_path)
    assert e.value.fix and "curate demo world" in e.value.fix


def test_not_a_world_is_a_clear_error(tmp_path):
    with pytest.raises(CurateError, match="no world.json"):
        World.load(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(CurateError, match="not a demo world's world.json"):
        World.load(tmp_path / "vocab.json")
