"""`curate triplets`: mining, edit texts, splits, resume and the bad inputs named in issue #7."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import make_tiny_dataset

from builders.triplets import TripletsConfig, build_triplets, read_triplets
from builders.triplets.captions import find_caption_pairs, naive_caption_pairs
from builders.triplets.config import parse_splits
from builders.triplets.edits import TEMPLATES, check_llm_text, mentions, template_texts
from curate.errors import CurateError

CURATE = str(Path(sys.executable).with_name("curate"))


def curate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CURATE, "-q", *args], capture_output=True, text=True, timeout=300)


def write_embeddings(ds: Path, seed: int = 0, noise: float = 0.3) -> dict[str, np.ndarray]:
    """A clip-retrieval embeddings folder where attribute and object each own a block of dimensions."""
    df = pl.read_parquet(ds / "manifest.parquet").sort("key")
    attrs = sorted(set(df["attr"]))
    objs = sorted(set(df["obj"]))
    rng = np.random.default_rng(seed)
    rows = []
    for a, o in zip(df["attr"], df["obj"], strict=True):
        v = np.zeros(len(attrs) + len(objs) + 8, np.float32)
        v[attrs.index(a)] = 1.0
        v[len(attrs) + objs.index(o)] = 1.0
        v[len(attrs) + len(objs):] = rng.normal(0, noise, 8)
        rows.append(v / np.linalg.norm(v))
    mat = np.stack(rows).astype(np.float32)
    (ds / "embeddings" / "img_emb").mkdir(parents=True)
    (ds / "embeddings" / "metadata").mkdir()
    np.save(ds / "embeddings" / "img_emb" / "img_emb_0.npy", mat)
    df.select("key", "shard", "caption").write_parquet(ds / "embeddings" / "metadata" / "metadata_0.parquet")
    (ds / "embeddings" / "embeddings.json").write_text(json.dumps({"model": "test:blocks", "dim": mat.shape[1]}))
    return dict(zip(df["key"].to_list(), mat, strict=True))


def make_cir_dataset(root: Path, per_pair: int = 6, embeddings: bool = True, **kw) -> Path:
    ds = make_tiny_dataset(root, per_pair=per_pair, **kw)
    if embeddings:
        write_embeddings(ds)
    return ds


def config(ds: Path, out: Path, **kw) -> TripletsConfig:
    return TripletsConfig(dataset=str(ds), out=str(out), **kw)


@pytest.fixture(scope="module")
def cir_ds(tmp_path_factory) -> Path:
    return make_cir_dataset(tmp_path_factory.mktemp("cir") / "ds")


@pytest.fixture(scope="module")
def built(cir_ds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cir-out") / "triplets"
    build_triplets(config(cir_ds, out, modes=["attribute", "object", "caption"], max_per_pair=4))
    return out


# -- mining ------------------------------------------------------------------------------

def test_modes_keep_and_change_the_right_word(built):
    df = read_triplets(built)
    assert set(df["mode"]) == {"attribute", "object", "caption"}
    att = df.filter(pl.col("mode") == "attribute")
    assert (att["ref_obj"] == att["tgt_obj"]).all() and (att["ref_attr"] != att["tgt_attr"]).all()
    obj = df.filter(pl.col("mode") == "object")
    assert (obj["ref_attr"] == obj["tgt_attr"]).all() and (obj["ref_obj"] != obj["tgt_obj"]).all()
    cap = df.filter(pl.col("mode") == "caption")
    for r in cap.iter_rows(named=True):
        a, b = r["ref_caption"].split(), r["tgt_caption"].split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1
        assert r["old_word"] in a and r["new_word"] in b


def test_targets_are_nearest_valid_images_and_negatives_are_invalid(built, cir_ds):
    df = read_triplets(built)
    man = pl.read_parquet(cir_ds / "manifest.parquet")
    pair = dict(zip(man["key"], man["pair"], strict=True))
    emb = {k: v for k, v in zip(*_read_emb(cir_ds), strict=True)}
    combo = ["mode", "split", "ref_attr", "ref_obj", "tgt_attr", "tgt_obj"]
    used = {k: set(g["target"]) for k, g in df.group_by(combo)}
    for r in df.filter(pl.col("mode") != "caption").iter_rows(named=True):
        tgt_pair = f"{r['tgt_attr']} {r['tgt_obj']}"
        assert pair[r["target"]] == tgt_pair and pair[r["reference"]] == f"{r['ref_attr']} {r['ref_obj']}"
        assert r["gt"][0] == r["target"] and all(pair[g] == tgt_pair for g in r["gt"])
        assert len(set(r["gt"])) == len(r["gt"])
        assert not set(r["negatives"]) & set(r["gt"]) and r["reference"] not in r["negatives"]
        # the target is the nearest valid image, unless the nearer ones are targets of the same combo
        sim_t = float(emb[r["target"]] @ emb[r["reference"]])
        closer = {g for g in r["gt"] if float(emb[g] @ emb[r["reference"]]) > sim_t + 1e-6}
        assert closer <= used[tuple(r[c] for c in combo)]


def _read_emb(ds: Path):
    from curate.embed.store import read_embeddings

    return read_embeddings(ds / "embeddings")


def test_hard_negatives_come_from_reference_composition_or_distractors(built, cir_ds):
    df = read_triplets(built).filter(pl.col("mode") == "attribute")
    man = pl.read_parquet(cir_ds / "manifest.parquet")
    ao = {k: (a, o) for k, a, o in man.select("key", "attr", "obj").iter_rows()}
    hard = 0
    for r in df.iter_rows(named=True):
        for n in r["negatives"]:
            a, o = ao[n]
            if (a, o) == (r["ref_attr"], r["ref_obj"]) or (a == r["tgt_attr"] and o != r["tgt_obj"]):
                hard += 1
    assert hard > 0.5 * sum(len(n) for n in df["negatives"])


def test_max_per_pair_balances_compositions(built):
    df = read_triplets(built)
    counts = df.group_by("mode", "split", "ref_attr", "ref_obj", "tgt_attr", "tgt_obj", "ref_caption",
                         "tgt_caption").len()
    assert counts["len"].max() <= 4


def test_no_image_of_a_test_triplet_is_in_a_train_triplet(built):
    df = read_triplets(built)

    def images(split):
        sub = df.filter(pl.col("split") == split)
        return set(sub["reference"]) | set(sub["target"]) | set(sub["negatives"].explode().drop_nulls()) | set(
            sub["gt"].explode().drop_nulls())

    assert df.filter(pl.col("split") == "test").height > 0
    assert not images("test") & images("train")
    assert not images("val") & images("train")


def test_deterministic_by_seed(cir_ds, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_triplets(config(cir_ds, a, formats=["cirr"]))
    build_triplets(config(cir_ds, b, formats=["cirr"]))
    build_triplets(config(cir_ds, c, formats=["cirr"], seed=5))
    assert (a / "triplets.parquet").read_bytes() == (b / "triplets.parquet").read_bytes()
    assert (a / "cirr/captions/cap.rc2.train.json").read_bytes() == (b / "cirr/captions/cap.rc2.train.json").read_bytes()
    assert not read_triplets(a).equals(read_triplets(c))


def test_rerun_resumes_and_other_config_is_refused(cir_ds, tmp_path):
    out = tmp_path / "t"
    r1 = curate("triplets", str(cir_ds), "--out", str(out), "--format", "cirr")
    assert r1.returncode == 0, r1.stderr
    before = (out / "triplets.parquet").stat().st_mtime_ns
    r2 = subprocess.run([CURATE, "triplets", str(cir_ds), "--out", str(out), "--format", "cirr"],
                        capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr
    assert "already done" in r2.stderr, r2.stderr
    assert (out / "triplets.parquet").stat().st_mtime_ns == before
    r3 = curate("triplets", str(cir_ds), "--out", str(out), "--format", "cirr", "--seed", "3")
    assert r3.returncode == 2 and "different config" in r3.stderr, r3.stderr
    assert (out / "triplets.parquet").stat().st_mtime_ns == before


def test_rejected_samples_excluded_unless_asked(tmp_path):
    ds = make_cir_dataset(tmp_path / "ds")
    man = pl.read_parquet(ds / "manifest.parquet")
    rejected = set(man.filter(pl.col("attr") == "red")["key"])
    man = man.with_columns(pl.when(pl.col("attr") == "red").then(pl.lit("reject")).otherwise(pl.lit(None))
                           .alias("review_status"))
    man.write_parquet(ds / "manifest.parquet")
    info = build_triplets(config(ds, tmp_path / "o1", formats=[]))
    df = read_triplets(tmp_path / "o1")
    used = set(df["reference"]) | set(df["target"]) | set(df["negatives"].explode())
    assert not used & rejected and info["rejected_excluded"] == len(rejected)
    build_triplets(config(ds, tmp_path / "o2", formats=[], include_rejected=True))
    df2 = read_triplets(tmp_path / "o2")
    assert set(df2["reference"]) & rejected


def test_thumbnail_similarity_without_embeddings(tmp_path):
    ds = make_cir_dataset(tmp_path / "ds", embeddings=False)
    info = build_triplets(config(ds, tmp_path / "o", formats=[]))
    assert info["mining"]["similarity"] == "thumbnail" and info["counts"]["triplets"] > 0


def test_captioned_shards_as_input(tmp_path):
    from conftest import _jpeg

    from curate.shards import ShardWriter

    caps = ["a red car on the road", "a blue car on the road", "a red bus on the road", "a red car on a bridge",
            "", "a red car on the road"]
    with ShardWriter(tmp_path / "shards", prefix="cap") as w:
        for i in range(36):
            w.write({"__key__": f"s{i:03d}", "jpg": _jpeg((10 * i % 255, 80, 120), seed=i), "txt": caps[i % 6]})
    out = tmp_path / "o"
    r = curate("triplets", str(tmp_path / "shards"), "--out", str(out), "--mode", "caption",
               "--format", "shards,circo", "--splits", "train=0.5,val=0.25,test=0.25")
    assert r.returncode == 0, r.stderr
    df = read_triplets(out)
    assert set(df["mode"]) == {"caption"} and df.height > 0
    assert set(zip(df["old_word"], df["new_word"], strict=True)) <= {
        ("red", "blue"), ("blue", "red"), ("car", "bus"), ("bus", "car"), ("the", "a"), ("road", "bridge"),
        ("bridge", "road")}
    info = json.loads((out / "triplets.json").read_text())
    assert info["mining"]["caption_pairs"]["empty"] == 6
    # shards without attr/obj: the triplet JSON still has one type per field ("" for the missing words)
    from curate.hub import scan_shards
    from curate.shards import iter_shard

    shards = sorted((out / "shards").glob("*.tar"))
    assert scan_shards(shards).problems == []
    metas = [json.loads(s["json"]) for p in shards for s in iter_shard(p)]
    assert {m["ref_attr"] for m in metas} == {""} and len(metas) == df.height


# -- captions ----------------------------------------------------------------------------

def test_caption_self_join_equals_naive_pairwise():
    rng = random.Random(3)
    words = ["red", "blue", "cat", "dog", "big", "small", "on", "the", "sofa", "bed", "striped"]
    caps = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) for _ in range(600)]
    caps += ["", "   ", "Red Cat!", "red cat"]
    uniq, pairs, st = find_caption_pairs(pl.DataFrame({"caption": caps}))
    text = dict(zip(uniq["cid"], uniq["text"], strict=True))
    got = {(text[a], text[b]) for a, b in zip(pairs["cid_a"], pairs["cid_b"], strict=True)}
    assert got == naive_caption_pairs(caps) and len(got) > 50
    assert st.empty == 2


def test_identical_and_empty_captions_never_pair():
    caps = ["a red car", "a red car", "A red car.", "", None, "a blue car"]
    uniq, pairs, st = find_caption_pairs(pl.DataFrame({"caption": caps}, schema={"caption": pl.String}))
    assert uniq.height == 2 and st.empty == 2
    assert pairs.select("word_a", "word_b").rows() == [("blue", "red")]


# -- edit texts --------------------------------------------------------------------------

def test_at_least_ten_templates_per_mode_that_name_the_new_word():
    for mode, ts in TEMPLATES.items():
        assert len(set(ts)) >= 10, mode
        for i in range(len(ts)):
            row = {"mode": mode, "id": f"x{i}", "old_word": "dotted", "new_word": "striped", "shared": "heart"}
            t1, t2 = template_texts(row, seed=i)
            assert t1 != t2 and mentions(t1, "striped") and mentions(t2, "striped")
            # the templates pass the same checks LLM answers must pass
            keep = None if mode == "caption" else "heart"
            assert check_llm_text(t1, "dotted", "striped", "a dotted heart", keep) is None, t1


def test_templates_vary_across_triplets(built):
    df = read_triplets(built)
    for mode in ("attribute", "object"):
        texts = df.filter(pl.col("mode") == mode)["edit_text"]
        assert texts.n_unique() >= 10


def test_llm_text_validation():
    assert check_llm_text("make the heart striped", "dotted", "striped", "a dotted heart") is None
    assert check_llm_text("Make the hearts Striped.", "dotted", "striped", "a dotted heart") is None
    assert check_llm_text("make it dotted", "dotted", "striped", "a dotted heart") is not None
    assert check_llm_text("a dotted heart", "dotted", "striped", "a dotted heart") is not None
    assert check_llm_text("", "dotted", "striped", "a dotted heart") is not None
    assert check_llm_text("keep it dotted, not striped", "dotted", "striped", "a dotted heart") is not None
    assert check_llm_text("stripedness " * 30, "dotted", "striped", "a dotted heart") is not None
    assert check_llm_text("make the heart striped instead of dotted", "dotted", "striped", "a dotted heart") is None
    # SmolLM2's favourite failures on the demo: contrasting with the wrong word
    assert check_llm_text("make the heart red instead of red", "house", "heart", "a red house") is not None
    assert check_llm_text("make the umbrella pink instead of red", "large", "pink", "a large umbrella") is not None
    assert check_llm_text("make it a heart instead of a house", "house", "heart", "a red house") is None
    assert check_llm_text("replace the heart with a heart, keep it a heart", "cup", "heart", "a wavy cup",
                          "wavy") is not None
    assert check_llm_text("replace the fish with a fish, keep it striped", "heart", "fish", "a wavy heart",
                          "wavy") is not None
    assert check_llm_text("replace the arrow with a pen, keep it red", "paper plane", "arrow",
                          "a red paper plane", "red") is not None
    assert check_llm_text("replace the paper plane with an arrow, keep it red", "paper plane", "arrow",
                          "a red paper plane", "red") is None
    assert check_llm_text("an arrow rather than a paper plane", "paper plane", "arrow", "a red paper plane",
                          "red") is None
    assert check_llm_text("change the umbrella from large to pink", "large", "pink", "a large umbrella",
                          "umbrella") is None


# -- bad input (issue #7) ------------------------------------------------------------------

def test_no_object_with_two_attributes_exits_2_with_counts(tmp_path):
    ds = make_tiny_dataset(tmp_path / "ds", objects=("circle",), attrs=("red",), per_pair=4)
    r = curate("triplets", str(ds), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "no object has images with two different attributes" in r.stderr
    assert "4 usable images" in r.stderr and "1 compositions" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_image_files_are_skipped_and_listed(tmp_path):
    ds = make_cir_dataset(tmp_path / "ds")
    man = pl.read_parquet(ds / "manifest.parquet")
    extra = pl.DataFrame([{**man.row(0, named=True), "key": "ghost_001"},
                          {**man.row(1, named=True), "key": "ghost_002", "shard": "gone-000000.tar"}])
    pl.concat([man, extra]).write_parquet(ds / "manifest.parquet")
    out = tmp_path / "o"
    r = curate("triplets", str(ds), "--out", str(out), "--format", "cirr")
    assert r.returncode == 0, r.stderr
    listed = (out / "missing_images.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == ["ghost_001", "ghost_002"]
    assert "gone-000000.tar missing" in listed[1]
    df = read_triplets(out)
    assert not {"ghost_001", "ghost_002"} & (set(df["reference"]) | set(df["target"]))
    assert json.loads((out / "triplets.json").read_text())["missing_images"] == 2


def test_duplicate_manifest_keys_exit_2(tmp_path):
    ds = make_cir_dataset(tmp_path / "ds", embeddings=False)
    man = pl.read_parquet(ds / "manifest.parquet")
    pl.concat([man, man.head(2)]).write_parquet(ds / "manifest.parquet")
    r = curate("triplets", str(ds), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "duplicate key" in r.stderr
    assert not (tmp_path / "o" / "triplets.parquet").exists()


@pytest.mark.parametrize("spec", ["train=0.8,val=0.1,test=0.2", "train=0.5,val=0.1", "train=1.2,test=-0.2",
                                  "train=0.8,dev=0.2", "train=abc"])
def test_bad_split_ratios(spec):
    with pytest.raises(CurateError):
        parse_splits(spec)


def test_split_ratios_not_summing_to_one_exit_2(cir_ds, tmp_path):
    r = curate("triplets", str(cir_ds), "--out", str(tmp_path / "o"), "--splits", "train=0.7,val=0.1,test=0.1")
    assert r.returncode == 2 and "sum to 0.9" in r.stderr


def test_missing_demo_dataset_tells_how_to_build_it(tmp_path):
    r = subprocess.run([CURATE, "triplets"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={**__import__("os").environ, "CURATE_DEMO_DIR": str(tmp_path / "nope")})
    assert r.returncode == 2 and "curate build imagenet-ao" in r.stderr


def test_manifest_splits(cir_ds, tmp_path):
    build_triplets(config(cir_ds, tmp_path / "o", formats=[], splits="manifest"))
    df = read_triplets(tmp_path / "o")
    split = dict(pl.read_parquet(cir_ds / "manifest.parquet").select("key", "split").iter_rows())
    assert all(split[r] == s for r, s in zip(df["reference"], df["split"], strict=True))
    assert all(split[t] == s for t, s in zip(df["target"], df["split"], strict=True))


@pytest.mark.slow
def test_model_spec_computes_features_when_dataset_has_no_embeddings(tmp_path):
    from curate.embed.random_models import TINY_OPEN_CLIP, save_random_open_clip

    ds = make_cir_dataset(tmp_path / "ds", per_pair=3, embeddings=False)
    spec = save_random_open_clip(tmp_path / "clip", arch="triplets-tiny", config=TINY_OPEN_CLIP)
    info = build_triplets(config(ds, tmp_path / "o", formats=["shards"], model=spec, device="cpu"))
    assert info["mining"]["similarity"] == f"model:{spec} decode=fast"  # the default decode, recorded
    feats = json.loads((tmp_path / "o" / ".curate" / "features" / "features.json").read_text())
    assert len(feats["keys"]) == 36 and info["counts"]["triplets"] > 0
    # --decode exact: the folder holds fast features' triplets, so it is refused without --overwrite
    with pytest.raises(CurateError, match="differs in: decode"):
        build_triplets(config(ds, tmp_path / "o", formats=["shards"], model=spec, device="cpu", decode="exact"))
    info = build_triplets(config(ds, tmp_path / "o", formats=["shards"], model=spec, device="cpu", decode="exact"),
                          overwrite=True)
    assert info["mining"]["similarity"] == f"model:{spec}" and info["config"]["decode"] == "exact"


def test_decode_option_is_checked_and_pins_a_folder_only_when_not_the_default(tmp_path):
    """`curate triplets --decode`: an unknown mode is refused before anything is written; the default (fast)
    is left out of the folder's pinned config, so folders made before the option resume unchanged."""
    from builders.triplets.pipeline import folder_config

    assert "decode" not in folder_config(config(tmp_path, tmp_path / "o"))
    assert folder_config(config(tmp_path, tmp_path / "o", decode="exact"))["decode"] == "exact"
    with pytest.raises(CurateError, match="unknown --decode 'quick'"):
        config(tmp_path, tmp_path / "o", decode="quick").validate()
    r = curate("triplets", str(tmp_path), "--out", str(tmp_path / "o"), "--decode", "quick")
    assert r.returncode == 2 and "unknown --decode 'quick'" in r.stderr and not (tmp_path / "o").exists()


def test_max_triplets_takes_round_robin_over_compositions(cir_ds, tmp_path):
    full = build_triplets(config(cir_ds, tmp_path / "a", formats=[], max_per_pair=3))
    combos = full["mining"]["combos_attribute"] + full["mining"]["combos_object"]
    build_triplets(config(cir_ds, tmp_path / "b", formats=[], max_per_pair=3, max_triplets=combos))
    df = read_triplets(tmp_path / "b")
    assert df.height == combos
    # one triplet per (reference composition -> target composition) before any combo gets a second
    assert df.group_by("mode", "split", "ref_attr", "ref_obj", "tgt_attr", "tgt_obj").len()["len"].max() == 1


def test_caption_mode_without_usable_captions_says_why(tmp_path):
    ds = make_tiny_dataset(tmp_path / "ds", per_pair=2)
    man = pl.read_parquet(ds / "manifest.parquet")
    man.with_columns(pl.when(pl.col("attr") == "red").then(pl.lit("")).otherwise(pl.lit("same caption"))
                     .alias("caption")).write_parquet(ds / "manifest.parquet")
    with pytest.raises(CurateError) as e:
        build_triplets(config(ds, tmp_path / "o", modes=["caption"]))
    assert "6 empty" in str(e.value) and "1 unique" in str(e.value) and "0 pairs differing" in str(e.value)


def test_model_features_cached_with_another_decode_are_not_reused():
    """The triplet miner's feature cache records how the images were decoded: features from full-size
    decodes (caches made before the fast default: tag without a decode) are not read back as fast ones."""
    from builders.triplets.source import model_tag

    assert model_tag("mini:/m", "exact") == "model:mini:/m"
    assert model_tag("mini:/m", "fast") == "model:mini:/m decode=fast" != model_tag("mini:/m", "exact")
