"""Issue 22 point 3: the demo world's dependence knobs, the training-caption NMI, and the decomposability
sweep driver (bench/decomposability_study.py) end to end on tiny worlds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curate.errors import CurateError


@pytest.mark.parametrize("knobs, message", [
    ({"typical_share": 1.5}, "--typical-share 1.5 is outside [0, 1]"),
    ({"typical_share": -0.1}, "--typical-share -0.1 is outside [0, 1]"),
    ({"typical_colour_p": 2}, "--typical-colour-p 2 is outside [0, 1]"),
    ({"typical_share": True}, "--typical-share True is outside [0, 1]"),
    ({"train_images": 5}, "--train-images 5 is outside [13, 1,000,000]"),
    ({"train_images": 2.5}, "--train-images 2.5 is outside"),
])
def test_a_knob_outside_its_range_is_refused_before_anything_is_written(tmp_path, knobs, message):
    from builders.synthetic.world import build_world

    out = tmp_path / "w"
    with pytest.raises(CurateError) as e:
        build_world(out, "tiny", size=32, knobs=knobs)
    assert message in str(e.value) and e.value.fix
    assert not out.exists()


def test_default_knobs_leave_the_scale_alone():
    from builders.synthetic.world import SCALES, with_knobs

    small = SCALES["small"]
    assert with_knobs(small) is small and small.knobs() == {}
    # train_images alone keeps the scale's typical share: 39 typical pairs x 24 of 39 x 24 + 138 x 2 images
    k = with_knobs(small, train_images=1212)
    assert k.typical_share == pytest.approx(39 * 24 / 1212) and k.knobs()["train_images"] == 1212


def test_typical_share_sets_the_counts_and_lowers_the_nmi():
    from builders.synthetic.vocab import all_pairs, choose_rare_pairs, typical_pairs
    from builders.synthetic.world import RARE_FRACTION, SCALES, train_counts, with_knobs
    from curate.stats import nmi

    rare = set(choose_rare_pairs(0, RARE_FRACTION))
    common = [p for p in all_pairs() if p not in rare]
    typical = typical_pairs()
    nmis = []
    for share in (1.0, 0.6, 39 / 177):
        counts = train_counts(with_knobs(SCALES["tiny"], typical_share=share, train_images=1300), common, typical)
        assert sum(counts.values()) == 1300
        for o in {o for _, o in common}:  # 100 images per object, round(share * 100) of them typical
            assert sum(n for (a, ob), n in counts.items() if ob == o) == 100
            assert sum(n for p, n in counts.items() if p[1] == o and p in typical) == round(share * 100)
        attrs, objs = sorted({a for a, _ in common}), sorted({o for _, o in common})
        m = np.zeros((len(attrs), len(objs)))
        for (a, o), n in counts.items():
            m[attrs.index(a), objs.index(o)] += n
        nmis.append(nmi(m))
    assert nmis[0] > nmis[1] > nmis[2] > 0  # the floor stays above 0: rare pairs are absent


def test_knobs_are_recorded_and_read_back_and_change_the_world_nmi(tmp_path):
    from builders.synthetic.world import build_world
    from curate.shards import iter_shard
    from curate.stats import cooccurrence, nmi
    from curate.world import World

    def labels(w):
        return [(m["attr"], m["obj"]) for sh in w.shards("train")
                for m in (json.loads(s["json"]) for s in iter_shard(sh, exts=("json",)))]

    high, _ = build_world(tmp_path / "hi", "tiny", size=32, knobs={"typical_share": 1.0, "train_images": 130})
    low, _ = build_world(tmp_path / "lo", "tiny", size=32,
                         knobs={"typical_share": 0.2, "train_images": 130, "typical_colour_p": 0.0})
    assert high.knobs == {"typical_share": 1.0, "train_images": 130, "typical_colour_p": 0.85}
    assert World.load(low.path).knobs["typical_colour_p"] == 0.0 and low.counts["train"] == 130
    assert nmi(cooccurrence(labels(high))) > 0.5 > 0.2 > nmi(cooccurrence(labels(low)))
    # every train image of the typical-only world is a typical pair; the colour shortcut follows the knob
    assert set(labels(high)) <= set(high.typical_pairs)


def test_spearman_and_its_bootstrap_by_hand():
    from training.study.sweep import spearman, spearman_bootstrap

    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [2, 1]) is None
    # seeds without spread: every resample is the same ranking, the interval is the point
    b = spearman_bootstrap([0.3, 0.2, 0.1], [[0.5, 0.5], [0.6, 0.6], [0.7, 0.7]], n_boot=50)
    assert b["rho"] == pytest.approx(-1.0) and b["ci95"] == [pytest.approx(-1.0), pytest.approx(-1.0)]
    # overlapping seeds: means 0.65, 0.61, 0.71 (rho -0.5); resampling world 1's seeds moves it past both others
    b = spearman_bootstrap([0.3, 0.2, 0.1], [[0.5, 0.8], [0.6, 0.62], [0.7, 0.72]], n_boot=200)
    assert b["rho"] == pytest.approx(-0.5) and b["ci95"] == [pytest.approx(-1.0), pytest.approx(0.5)]
    assert b["seeds"] == [2, 2, 2] and b["n_boot"] == 200


def test_the_sweep_driver_runs_end_to_end_and_reruns_from_its_caches(tmp_path):
    from bench.decomposability_study import main

    argv = ["--tiny", "--out", str(tmp_path / "s"), "--results", str(tmp_path / "r"), "--levels", "1", "0.5", "0",
            "--sizes", "65", "--train-images", "65", "--size-level", "1", "--seeds", "0", "1", "--samples", "64",
            "--no-scratch", "--jobs", "1", "--workers", "1", "--boot", "50", "--iso-product", "0"]
    res = main(argv)
    worlds = {w["world"]: w for w in res["worlds"]}
    assert set(worlds) == {"d1.00-n65", "d0.50-n65", "d0.00-n65"} and worlds["d1.00-n65"]["sweep"] == "nmi,size"
    assert worlds["d1.00-n65"]["atypical_images"] == 0 < worlds["d0.50-n65"]["atypical_images"]
    assert all(w["train_images"] == 65 and w["models"] == 2 for w in worlds.values())
    assert worlds["d1.00-n65"]["nmi"] > worlds["d0.50-n65"]["nmi"] > worlds["d0.00-n65"]["nmi"]
    for w in worlds.values():
        s = w["rare/object_top1"]
        assert len(s["seeds"]) == 2 and s["mean"] == pytest.approx(np.mean(s["seeds"])) and 0 <= s["mean"] <= 1
    # the NMI the model recorded is its training captions' (one model per world and seed)
    assert {m["training"]["caption_nmi"] for m in res["models"].values() if m["world"] == "d0.00-n65"} == \
        {worlds["d0.00-n65"]["nmi"]}
    c = res["correlations"]["rare/object_top1 vs nmi"]
    assert c["worlds"] == 3 and -1 <= c["ci95"][0] <= c["ci95"][1] <= 1
    # the supervised group: a linear probe on each world's seed-0 tower (object labels); the ER line is fitted over it
    assert {r["label"] for r in res["supervised"]} == {f"probe {w}" for w in worlds} and res["baseline"]["fit"]
    assert all(w["effective_robustness"] is not None for w in worlds.values())
    assert res["sizes"]["rare"]["images"] == 44 and not res["failed"]
    assert res["timing"]["steps"]["mini-CLIP training (all, in workers)"]["calls"] == 6
    assert all(m["cpu_s"] > 0 and m["training"]["steps"] == 2 for m in res["models"].values())  # 64 images, batch 32
    for name in res["plots"]:
        assert (tmp_path / "r" / name).stat().st_size > 10_000
    md = (tmp_path / "r" / "decomposability_study.md").read_text()
    assert "| d0.50-n65 | nmi | 0.50 | 65 |" in md and "rare 44 images" in md
    again = main(argv)  # everything cached: no mini-CLIP is trained again, the numbers are the same
    assert all(m["cached"] for m in again["models"].values())
    assert again["timing"]["steps"]["mini-CLIP training (all, in workers)"]["calls"] == 0
    assert again["worlds"] == res["worlds"]
    assert json.loads(Path(tmp_path / "r" / "decomposability_study.json").read_text())["config"]["samples"] == 64


def test_the_fixed_atypical_sweep_holds_n_times_one_minus_d():
    """The third sweep's worlds have N (1 - d) = P, hence the same number of atypical-pair images; a world it
    shares with the NMI or size sweep is made once (its sweeps joined)."""
    from bench.decomposability_study import parse, world_specs

    specs = {w["name"]: w for w in world_specs(parse([]))}
    iso = {n: w for n, w in specs.items() if "atypical" in w["sweep"]}
    assert sorted(iso) == ["d0.25-n1000", "d0.50-n1500", "d0.75-n3000", "d0.875-n6000"]
    assert all(w["train_images"] * (1 - w["knob"]) == 750 for w in iso.values())
    assert specs["d0.50-n1500"]["sweep"] == ["nmi", "atypical"] and specs["d0.75-n3000"]["sweep"] == ["size", "atypical"]
    assert not any("atypical" in w["sweep"] for w in world_specs(parse(["--iso-product", "0"])))
    with pytest.raises(SystemExit):
        parse(["--iso-sizes", "500", "1000", "--iso-product", "750"])  # d = 1 - 750/500 < 0
