"""`curate attributes` output lands where TRIDENT's loader looks, keyed as it looks."""

from __future__ import annotations

import json

from llm_server import FakeChatServer
from trident_helpers import make_czsl_root

from curate.cli import main
from training.trident.data import load_czsl, parse_pairs


def run(*argv: str) -> int:
    try:
        main(["-q", "attributes", *argv])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def trident_reads(root, pairs):
    """TRIDENT's dataset.py ``get_aux_by_pair`` in behaviour (test oracle): the file at
    ROOT/aux_label/aux_label.jsonl, one key per line, looked up as ``pair[0] + ' ' + pair[1]``."""
    aux_dic = {}
    with open(root / "aux_label" / "aux_label.jsonl") as f:
        for line in f:
            data = json.loads(line)
            aux_dic[list(data.keys())[0]] = list(data.values())[0]
    return [{pair: aux_dic[pair[0] + " " + pair[1]]} for pair in pairs]


def test_dataset_with_a_czsl_export_gets_the_file_trident_reads(tmp_path):
    import polars as pl
    from conftest import make_tiny_dataset

    from builders.imagenet_ao.exports import export
    from curate.manifest import read_manifest, write_manifest

    ds = make_tiny_dataset(tmp_path / "ds", objects=("plane", "circle"), attrs=("red", "blue"))
    df = read_manifest(ds).with_columns(pl.col("obj").str.replace("plane", "paper plane"))  # a two-word object
    write_manifest(df, ds)
    export("czsl", ds)
    czsl = ds / "exports" / "czsl"
    with FakeChatServer() as srv:
        assert run(str(ds), "--llm", srv.spec()) == 0
        prompts = " ".join(m["content"] for _, _, req in srv.log for m in req["messages"])
    assert "red paper plane" in prompts and "paper_plane" not in prompts
    assert '"red paper plane"' in (ds / "aux_label.jsonl").read_text()  # the dataset's own file, names as given
    pairs = parse_pairs(czsl / "compositional-split-natural" / "train_pairs.txt")
    assert ("red", "paper_plane") in pairs or ("blue", "paper_plane") in pairs
    got = trident_reads(czsl, pairs)  # no FileNotFoundError, no KeyError
    assert all(len(next(iter(d.values()))) == 3 for d in got)
    assert len(load_czsl(czsl).aux) == len(load_czsl(czsl).train_pairs)


def test_czsl_root_with_vaw_plus_separators(tmp_path):
    root = make_czsl_root(tmp_path / "vaw-czsl", aux=False, sep="+")
    assert "+" in (root / "compositional-split-natural" / "train_pairs.txt").read_text()
    with FakeChatServer() as srv:
        assert run(str(root), "--llm", srv.spec()) == 0
        prompts = " ".join(m["content"] for _, _, req in srv.log for m in req["messages"])
    assert "paper plane" in prompts
    pairs = parse_pairs(root / "compositional-split-natural" / "train_pairs.txt")
    assert all(len(next(iter(d.values()))) == 3 for d in trident_reads(root, pairs))
    data = load_czsl(root)
    assert len(data.aux) == len(data.train_pairs) == 6 and not data.problems
