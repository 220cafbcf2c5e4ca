"""The offline demo world: renderer, caption corpus + ground truth, pool, HTTP server, CLI."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from builders.synthetic.generator import DemoGenerator
from builders.synthetic.httpserver import serve_folder, write_url_list
from builders.synthetic.render import TYPICAL_COLOUR_P, render, render_sample, sample_visible
from builders.synthetic.vocab import (
    ATTRIBUTE_NAMES,
    FAMILIES,
    FAMILY_OF,
    OBJECT_NAMES,
    OBJECTS,
    PALETTE,
    PLURALS,
    TYPICAL,
    choose_rare_pairs,
    typical_pairs,
)
from builders.synthetic.world import SCALES, World, ensure_world
from curate.errors import CurateError
from curate.images import encode_jpeg as to_jpeg
from curate.shards import iter_shard

CURATE = str(Path(sys.executable).with_name("curate"))


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([CURATE, *args], capture_output=True, text=True, **kw)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file of a world except curate's bookkeeping (.curate/)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".curate" not in p.parts}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "world"
    r = run_cli("demo", "world", "--out", str(out), "--scale", "small", "--seed", "0", "-w", "2")
    assert r.returncode == 0, r.stderr
    return out


# --- renderer ---------------------------------------------------------------------------------

def test_vocabulary_shape():
    assert len(OBJECTS) >= 10 and sum(" " in o.name for o in OBJECTS) >= 2
    assert len(ATTRIBUTE_NAMES) >= 16 and len(FAMILIES) >= 3
    assert len(set(OBJECT_NAMES)) == len(OBJECT_NAMES) and len(set(ATTRIBUTE_NAMES)) == len(ATTRIBUTE_NAMES)


def test_render_is_deterministic_by_seed():
    a = to_jpeg(render("striped", "heart", seed=7))
    b = to_jpeg(render("striped", "heart", seed=7))
    c = to_jpeg(render("striped", "heart", seed=8))
    assert a == b
    assert a != c
    gen = DemoGenerator()
    first, again = gen.generate("red", "crescent moon", 3, seed=1), gen.generate("red", "crescent moon", 3, seed=1)
    assert [x[1] for x in first] == [x[1] for x in again]
    assert len({x[0] for x in first}) == 3
    assert all(m["attr"] == "red" and m["obj"] == "crescent moon" and m["colour"] == "red" for _, _, m in first)
    img = Image.open(io.BytesIO(first[0][1]))
    assert img.format == "JPEG" and img.size == (112, 112)


def _colour_fraction(img: Image.Image, colour: str) -> float:
    arr = np.asarray(img, np.float32)
    d = np.linalg.norm(arr - np.array(PALETTE[colour], np.float32), axis=2)
    return float((d < 60).mean())


@pytest.mark.parametrize("obj", OBJECT_NAMES)
def test_every_attribute_renders_on_every_object(obj):
    for i, attr in enumerate(ATTRIBUTE_NAMES):
        img, meta = render_sample(attr, obj, seed=100 + i, size=112)
        assert img.mode == "RGB" and img.size == (112, 112)
        assert meta["attr"] == attr and meta["obj"] == obj
        fam = FAMILY_OF[attr]
        shown = {"colour": meta["colour"], "pattern": meta["pattern"], "state": meta["state"]}
        assert shown[fam] == attr, (attr, obj, meta)
        if meta["state"] == "outlined":
            assert meta["pattern"] == "plain"
        if fam == "pattern":
            assert meta["state"] not in ("outlined", "small")
        # the object's colour is really on the image (an outline or a small object still shows some)
        assert _colour_fraction(img, meta["colour"]) > 0.004, (attr, obj, meta)


def test_states_change_the_object_size():
    def area(attr: str, seed: int) -> float:
        img, meta = render_sample(attr, "heart", seed)
        return _colour_fraction(img, meta["colour"])

    small = np.mean([area("small", s) for s in range(8)])
    large = np.mean([area("large", s) for s in range(8)])
    assert large > 3 * small


def test_unknown_names_are_clear_errors():
    with pytest.raises(CurateError, match="did you mean 'striped'"):
        render("stripped", "heart", 0)
    with pytest.raises(CurateError, match="unknown demo object"):
        DemoGenerator().generate("red", "dragon", 1)


def test_rare_pairs_by_seed():
    a, b = choose_rare_pairs(0), choose_rare_pairs(1)
    n_pairs = len(OBJECT_NAMES) * len(ATTRIBUTE_NAMES)
    assert a == choose_rare_pairs(0) and a != b
    assert 0.15 <= len(a) / n_pairs <= 0.25
    typical = set(typical_pairs())
    for rare in (a, b):
        rare = set(rare)
        assert not rare & typical
        for attr in ATTRIBUTE_NAMES:
            assert sum((attr, o) not in rare for o in OBJECT_NAMES) >= 4
        for obj in OBJECT_NAMES:
            assert sum((x, obj) not in rare for x in ATTRIBUTE_NAMES) >= 4
    # atypical colours are preferred: over ten seeds, colour pairs are a larger share of the
    # rare pairs than of the pairs that may be rare (the non-typical ones)
    candidates = [p for p in (set((x, o) for x in ATTRIBUTE_NAMES for o in OBJECT_NAMES) - typical)]
    base = sum(FAMILY_OF[x] == "colour" for x, _ in candidates) / len(candidates)
    rare_all = [p for seed in range(10) for p in choose_rare_pairs(seed)]
    assert sum(FAMILY_OF[x] == "colour" for x, _ in rare_all) / len(rare_all) > base + 0.05


def test_every_object_has_typical_attributes():
    assert set(TYPICAL) == set(OBJECT_NAMES)
    for obj, by_family in TYPICAL.items():
        assert set(by_family) == set(FAMILIES)
        assert all(FAMILY_OF[a] == fam for fam, a in by_family.items()), obj
    # typical colours are as distinct as 7 colours allow for the objects: none shared by more than 2
    colours = Counter(t["colour"] for t in TYPICAL.values())
    assert max(colours.values()) <= -(-len(OBJECT_NAMES) // len(FAMILIES["colour"]))
    assert len(typical_pairs()) == len(OBJECT_NAMES) * len(FAMILIES)


def test_colour_follows_the_object_when_it_is_not_the_target():
    rng = np.random.default_rng(0)
    for attr in ("striped", "broken"):
        shown = [sample_visible(attr, rng, "lemon")["colour"] for _ in range(2000)]
        frac = shown.count("yellow") / len(shown)
        # typical with TYPICAL_COLOUR_P, plus 1/7 of the uniform rest
        expected = TYPICAL_COLOUR_P + (1 - TYPICAL_COLOUR_P) / len(PALETTE)
        assert abs(frac - expected) < 0.03, (attr, frac)
        assert set(shown) == set(PALETTE)  # every colour still occurs
    # a colour target always wins, and without an object the colour is uniform
    assert {sample_visible("blue", rng, "lemon")["colour"] for _ in range(50)} == {"blue"}
    assert len({sample_visible("striped", rng)["colour"] for _ in range(200)}) == len(PALETTE)


# --- the world on disk ------------------------------------------------------------------------

def _word(w: str) -> str:
    return r"\b" + re.escape(w) + r"\b"


def test_caption_ground_truth_is_exact(world_dir):
    world = World.load(world_dir)
    gt = world.ground_truth()
    caps: list[str] = []
    for part in world.caption_files():
        t = pq.read_table(part)
        assert t.column_names == ["url", "caption", "width", "height"]
        assert t.num_rows <= 200_000
        caps.extend(t.column("caption").to_pylist())
    assert len(caps) == gt["n_captions"] == world.counts["captions"]
    # independent recount: one whole-word, case-insensitive regex per word
    attr_re = {a: re.compile(_word(a), re.I) for a in world.attributes}
    obj_re = {o: re.compile(_word(o) + "|" + _word(world.plurals[o]), re.I) for o in world.objects}
    attr_n, obj_n, pair_n = Counter(), Counter(), Counter()
    for c in caps:
        found_a = [a for a, r in attr_re.items() if r.search(c)]
        found_o = [o for o, r in obj_re.items() if r.search(c)]
        attr_n.update(found_a)
        obj_n.update(found_o)
        pair_n.update((a, o) for a in found_a for o in found_o)
    assert gt["attr_count"] == {a: attr_n[a] for a in world.attributes}
    assert gt["obj_count"] == {o: obj_n[o] for o in world.objects}
    assert len(gt["pairs"]) == len(world.attributes) * len(world.objects)
    rare = set(world.rare_pairs)
    for row in gt["pairs"]:
        key = (row["attr"], row["obj"])
        assert row["count"] == pair_n[key], row
        assert row["attr_count"] == attr_n[row["attr"]] and row["obj_count"] == obj_n[row["obj"]]
        assert row["rare"] == (key in rare)
        if key in rare:
            assert row["count"] == 0
        else:
            assert row["count"] >= 3
    assert sorted(map(tuple, gt["rare_pairs"])) == sorted(rare)
    # typical pairs are the corpus's popular ones ("yellow lemon" is everywhere on the web)
    typical = set(world.typical_pairs)
    typ_counts = [pair_n[p] for p in typical]
    other_counts = [pair_n[p] for p in world.common_pairs if p not in typical]
    assert min(typ_counts) > np.median(other_counts)


def test_corpus_has_the_hard_cases(world_dir):
    caps = [c for p in World.load(world_dir).caption_files() for c in pq.read_table(p).column("caption").to_pylist()]
    text = "\n".join(caps)
    for near in ("starfish", "hearty", "lemonade", "keyboard", "stripes", "moonlight", "bluebell"):
        assert re.search(_word(near), text, re.I), near
    assert any(c.isupper() for c in caps)
    assert any(re.search(_word("crescent moons") + "|" + _word("paper planes"), c, re.I) for c in caps)
    assert any(re.search(r"[!,.:|()]", c) for c in caps)
    words = [_word(w) for o in OBJECTS for w in (o.name, o.plural)] + [_word(a) for a in ATTRIBUTE_NAMES]
    vocab = re.compile("|".join(words), re.I)
    assert sum(not vocab.search(c) for c in caps) > 0.05 * len(caps)
    two_obj = [c for c in caps if sum(bool(re.search(_word(o) + "|" + _word(PLURALS[o]), c, re.I))
                                      for o in OBJECT_NAMES) >= 2]
    two_attr = [c for c in caps if sum(bool(re.search(_word(a), c, re.I)) for a in ATTRIBUTE_NAMES) >= 2]
    assert len(two_obj) > 100 and len(two_attr) > 100


def test_world_json_and_shards(world_dir):
    world = World.load(world_dir)
    assert len(world.objects) == len(OBJECT_NAMES) and set(world.families) == {"colour", "pattern", "state"}
    common, rare = set(world.common_pairs), set(world.rare_pairs)
    assert not common & rare and len(common | rare) == len(world.objects) * len(world.attributes)
    assert world.typical == TYPICAL and set(world.typical_pairs) == set(typical_pairs()) <= common
    scale = SCALES[world.scale]
    per_pair = {"train": (scale.train_typical, scale.train_per_pair),
                "heldout": (scale.heldout_typical, scale.heldout_per_pair),
                "rare": (scale.rare_per_pair, scale.rare_per_pair)}
    keys: dict[str, set[str]] = {}
    off_target_colours: Counter = Counter()
    for split, allowed in (("train", common), ("heldout", common), ("rare", rare)):
        seen = set()
        pairs = Counter()
        for shard in world.shards(split):
            for s in iter_shard(shard, strict=True):
                meta = json.loads(s["json"])
                caption = s["txt"].decode()
                assert (meta["attr"], meta["obj"]) in allowed
                assert meta["attr"] in caption and meta["obj"] in caption and meta["caption"] == caption
                assert {"colour", "pattern", "state"} <= set(meta)
                assert Image.open(io.BytesIO(s["jpg"])).size == (world.image_size,) * 2
                seen.add(s["__key__"])
                pairs[(meta["attr"], meta["obj"])] += 1
                if split == "train" and FAMILY_OF[meta["attr"]] != "colour":
                    off_target_colours[meta["colour"] == TYPICAL[meta["obj"]]["colour"]] += 1
        assert len(seen) == world.counts[split]
        assert set(pairs) == allowed
        # the skew: an object's typical pairs get many images, every other pair a few
        many, few = per_pair[split]
        assert many > few or split == "rare"
        for pair, n in pairs.items():
            assert n == (many if pair in world.typical_pairs else few), (split, pair, n)
        keys[split] = seen
    assert not keys["train"] & keys["heldout"]
    # where the target is not a colour, the colour shown is mostly the object's typical one
    typical_share = off_target_colours[True] / sum(off_target_colours.values())
    assert 0.75 < typical_share < 0.95, typical_share


def test_pool_and_url_list(world_dir, tmp_path):
    world = World.load(world_dir)
    t = pq.read_table(world.pool_dir / "pool.parquet").to_pylist()
    assert len(t) == world.counts["pool"] and len({r["key"] for r in t}) == len(t)
    rare, typical = set(world.rare_pairs), set(world.typical_pairs)
    n_rare = n_typical = 0
    for r in t:
        assert r["path"] == f"images/{r['key']}.jpg"
        assert Image.open(world.pool_dir / r["path"]).size == (world.image_size,) * 2
        is_rare = (r["attr"], r["obj"]) in rare
        assert r["rare"] == is_rare
        n_rare += is_rare
        n_typical += (r["attr"], r["obj"]) in typical
        if is_rare:  # a rare pair's caption never names its attribute
            assert not re.search(_word(r["attr"]), r["caption"], re.I)
    assert 0 < n_rare < 0.15 * len(t)
    # the pool follows the world's skew: typical pairs (<20 % of all pairs) are most of it
    assert n_typical > 0.5 * len(t)
    assert len(list((world.pool_dir / "images").glob("*.jpg"))) == len(t)
    pq_path, txt_path = write_url_list(world.pool_dir, "http://127.0.0.1:9999/", tmp_path)
    urls = pq.read_table(pq_path)
    assert urls.column_names[:2] == ["url", "caption"]
    assert urls.column("url").to_pylist() == [f"http://127.0.0.1:9999/images/{r['key']}.jpg" for r in t]
    assert txt_path.read_text().splitlines() == urls.column("url").to_pylist()


def test_http_server_serves_and_injects_faults(world_dir):
    pool = World.load(world_dir).pool_dir
    rows = pq.read_table(pool / "pool.parquet").to_pylist()[:6]
    p = [r["path"] for r in rows]
    faults = {p[1]: 500, "/" + p[2]: 404, p[3]: "dead", p[4]: 0.6, p[5]: "truncate"}
    with serve_folder(pool, faults=faults) as base:
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{base}/{p[0]}", timeout=10) as resp:
            assert resp.read() == (pool / p[0]).read_bytes()
        for i, code in ((1, 500), (2, 404)):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"{base}/{p[i]}", timeout=10)
            assert e.value.code == code
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            urllib.request.urlopen(f"{base}/{p[3]}", timeout=10)
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"{base}/{p[4]}", timeout=10) as resp:
            assert resp.read() == (pool / p[4]).read_bytes()
        assert time.perf_counter() - t0 >= 0.6
        with pytest.raises(http.client.IncompleteRead):
            with urllib.request.urlopen(f"{base}/{p[5]}", timeout=10) as resp:
                resp.read()
        # the server survives all of that
        with urllib.request.urlopen(f"{base}/{p[0]}", timeout=10) as resp:
            assert resp.status == 200
    with pytest.raises(CurateError, match="unknown fault"):
        with serve_folder(pool, faults={p[0]: "explode"}):
            pass


def test_ensure_world_loads_a_complete_world(world_dir):
    t0 = time.perf_counter()
    w = ensure_world(world_dir, scale="small", seed=0)
    assert time.perf_counter() - t0 < 1.0
    assert w.path == world_dir and w.scale == "small" and len(w.rare_pairs) > 0
    with pytest.raises(CurateError, match="no world.json"):
        World.load(world_dir / "train")


# --- CLI --------------------------------------------------------------------------------------

def test_cli_rerun_does_nothing_and_refuses_other_options(world_dir):
    before = tree_digest(world_dir)
    r = run_cli("demo", "world", "--out", str(world_dir), "--scale", "small", "--seed", "0")
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stderr
    assert tree_digest(world_dir) == before
    r = run_cli("demo", "world", "--out", str(world_dir), "--scale", "small", "--seed", "1")
    assert r.returncode == 2 and "different config" in r.stderr
    assert tree_digest(world_dir) == before


def test_cli_bad_inputs(tmp_path):
    r = run_cli("demo", "world", "--out", str(tmp_path / "w"), "--scale", "huge")
    assert r.returncode == 2 and "unknown scale" in r.stderr
    assert not (tmp_path / "w" / "world.json").exists()
    r = run_cli("demo", "world", "--out", str(tmp_path / "w2"), "--size", "8")
    assert r.returncode == 2 and "out of range" in r.stderr
    r = run_cli("demo", "serve", str(tmp_path))
    assert r.returncode == 2 and "no image pool" in r.stderr
    r = run_cli("demo", "render", "stripped heart", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "did you mean 'striped'" in r.stderr
    r = run_cli("demo", "world", "--help")
    assert r.returncode == 0 and "Example" in r.stdout


def test_cli_render(tmp_path):
    r = run_cli("demo", "render", "dotted paper plane", "-n", "2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    jpgs = sorted(tmp_path.glob("*.jpg"))
    assert len(jpgs) == 2 and len(list(tmp_path.glob("*.json"))) == 2


def test_cli_serve(world_dir):
    proc = subprocess.Popen([CURATE, "demo", "serve", str(world_dir), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else base
        urls = pq.read_table(world_dir / "pool" / "urls.parquet").column("url").to_pylist()
        assert urls[0].startswith(base)
        with urllib.request.urlopen(urls[0], timeout=10) as resp:
            assert resp.read()[:2] == b"\xff\xd8"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)  # exits in about 1 s; generous for a loaded machine
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"`curate demo serve` did not stop on Ctrl-C; its stderr: {proc.communicate()[1][-3000:]}")
        finally:  # the module's world is shared: leave it as made (the killed-run test compares with it)
            for name in ("urls.parquet", "urls.txt"):
                (world_dir / "pool" / name).unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]


@pytest.mark.slow
@pytest.mark.system
def test_cli_killed_run_resumes_to_identical_world(world_dir, tmp_path):
    out = tmp_path / "world"
    proc = subprocess.Popen([CURATE, "demo", "world", "--out", str(out), "--scale", "small", "-w", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ledger = out / ".curate" / "ledger" / "demo-world"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ledger.exists() and len(list(ledger.glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(ledger.glob("*.json")))
    assert not (out / "world.json").exists()
    r = run_cli("demo", "world", "--out", str(out), "--scale", "small", "-w", "1")
    assert r.returncode == 0, r.stderr
    assert "already done" in r.stderr and done_before >= 2
    assert tree_digest(out) == tree_digest(world_dir)
