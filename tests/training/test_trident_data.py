"""TRIDENT's data: the CZSL layout as TRIDENT reads it, bad inputs, partners, words, backbones, aux files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import polars as pl
import pytest
import torch
from trident_helpers import TRAIN_PAIRS, UNSEEN, make_czsl_root

from curate.errors import CurateError
from training.trident.data import (
    AUX_FILE,
    SPLIT_NAME,
    Partners,
    load_czsl,
    load_metadata,
    parse_pairs,
    read_aux_file,
)


@pytest.fixture
def root(tmp_path):
    return make_czsl_root(tmp_path / "czsl")


def test_standard_layout_is_read_as_trident_reads_it(root):
    meta = load_metadata(root / f"metadata_{SPLIT_NAME}.t7")
    meta += [{"image": "x.jpg", "attr": "NA", "obj": "circle", "set": "train"},
             {"image": "y.jpg", "attr": "purple", "obj": "circle", "set": "test"}]
    torch.save(meta, root / f"metadata_{SPLIT_NAME}.t7")
    data = load_czsl(root)
    # vocabulary: sorted attributes / objects / pairs of the three pair files (TRIDENT's parse_split)
    assert data.attrs == ["blue", "green", "red"] and data.objs == ["circle", "paper_plane", "square"]
    assert data.pairs == sorted(set(TRAIN_PAIRS + UNSEEN)) and data.train_pairs == sorted(TRAIN_PAIRS)
    assert len(data.items["train"]) == 12 and len(data.items["val"]) == 12 and len(data.items["test"]) == 12
    assert data.problems == {"metadata_rows_skipped_pair_not_in_pair_files": 1}  # the NA row is silently dropped
    # words: attributes, objects, then the auxiliary words that are neither
    assert data.words[:6] == data.attrs + data.objs and data.aux_words == ["bright", "dark", "matte", "plain", "shiny"]
    assert data.aux[("red", "circle")] == ["bright", "shiny", "plain"]


def test_vaw_pair_files_use_plus_and_names_with_spaces(tmp_path):
    p = tmp_path / "train_pairs.txt"
    p.write_text("light blue+sky\nwooden+picture frame\nlight blue+sky\n")
    assert parse_pairs(p) == [("light blue", "sky"), ("wooden", "picture frame")]
    p.write_text("red circle\nbroken+cup\n")
    with pytest.raises(CurateError, match="expected 'attr obj'"):
        parse_pairs(p)


def test_pair_files_naming_attributes_absent_from_the_metadata(root):
    pairs = root / SPLIT_NAME / "test_pairs.txt"
    pairs.write_text(pairs.read_text() + "redd circle\n")
    data = load_czsl(root)
    assert data.problems["attributes_without_images"] == 1
    assert data.problems["test_pairs_without_images"] == 1
    assert any("'redd'" in n and "did you mean 'red'" in n for n in data.notes)
    assert "redd" in data.attrs  # still a candidate, as in TRIDENT: it can just never be right


def test_images_listed_but_missing_on_disk_are_counted_and_skipped(root):
    gone = sorted((root / "images").rglob("*.jpg"))[:3]
    for p in gone:
        p.unlink()
    data = load_czsl(root)
    assert data.problems["images_missing_on_disk"] == 3
    assert sum(len(v) for v in data.items.values()) == 36 - 3


def test_t7_holding_arbitrary_pickled_objects_is_refused(root, tmp_path):
    meta = root / f"metadata_{SPLIT_NAME}.t7"

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save([{"image": "a.jpg", "attr": "red", "obj": "circle", "set": "train", "x": Exploit()}], meta)
    with pytest.raises(CurateError, match="refused"):
        load_czsl(root)
    with open(meta, "wb") as f:  # a plain pickle with a global: refused too
        pickle.dump([Exploit()], f)
    with pytest.raises(CurateError, match="refused"):
        load_metadata(meta)
    with open(meta, "wb") as f:  # a plain pickle of plain data is fine
        pickle.dump([{"image": "a.jpg", "attr": "red", "obj": "circle", "set": "train"}], f)
    assert load_metadata(meta)[0]["attr"] == "red"
    torch.save({"image": "a.jpg"}, meta)
    with pytest.raises(CurateError, match="not a list of dicts"):
        load_metadata(meta)


def test_aux_labels_missing_for_some_pairs_warn_and_fall_back_to_plain_ce(root):
    from training.trident.model import smoothed_ce

    lines = (root / "aux_label" / AUX_FILE).read_text().splitlines()
    (root / "aux_label" / AUX_FILE).write_text("\n".join(lines[:4]) + "\n")
    data = load_czsl(root)
    assert data.problems["train_pairs_without_aux"] == 2 and len(data.aux) == 4
    z, y = torch.randn(3, 6), torch.tensor([0, 1, 2])
    no_aux = smoothed_ce(z, y, torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.bool),
                         torch.zeros(3))
    assert torch.allclose(no_aux, torch.nn.functional.cross_entropy(z, y, reduction="none"), atol=1e-6)
    (root / "aux_label" / AUX_FILE).write_text(json.dumps({"nothing here": ["a", "b", "c"]}) + "\n")
    with pytest.raises(CurateError, match="none of the 6 training pairs"):
        load_czsl(root)


def test_an_aux_file_that_is_not_jsonl_is_a_clear_error(tmp_path, root):
    bad = tmp_path / "aux.jsonl"
    bad.write_text('{"red circle": ["a", "b", "c"]}\nred square: a, b, c\n')
    with pytest.raises(CurateError, match=r"aux.jsonl:2: line 2 is not JSON"):
        read_aux_file(bad)
    bad.write_text('{"red circle": "bright"}\n')
    with pytest.raises(CurateError, match="line 1: the words of 'red circle' are not a list"):
        load_czsl(root, aux=bad)
    bad.write_text('{"red circle": ["a"]}\n{"red circle": ["b"]}\n')
    with pytest.raises(CurateError, match=r"pair 'red circle' given twice \(lines 1 and 2\)"):
        load_czsl(root, aux=bad)
    with pytest.raises(CurateError, match="not found"):
        load_czsl(root, aux=tmp_path / "nope.jsonl")


def test_aux_keys_with_spaces_or_plus_match_czsl_names(root):
    lines = [json.dumps({f"{a} {o.replace('_', ' ')}": ["x", "y", "z"]}) for a, o in TRAIN_PAIRS]
    (root / "aux_label" / AUX_FILE).write_text("\n".join(lines) + "\n")
    assert len(load_czsl(root).aux) == 6


def test_empty_train_split_is_an_error(root):
    meta = [r for r in load_metadata(root / f"metadata_{SPLIT_NAME}.t7") if r["set"] != "train"]
    torch.save(meta, root / f"metadata_{SPLIT_NAME}.t7")
    with pytest.raises(CurateError, match="train split has no images"):
        load_czsl(root)


def test_dataset_folder_honours_review_verdicts(tiny_dataset):
    from curate.manifest import read_manifest, write_manifest

    df = read_manifest(tiny_dataset)
    rejected = df["key"][0]
    df = df.with_columns(pl.when(pl.col("key") == rejected).then(pl.lit("reject")).otherwise(None).alias("review_status"))
    write_manifest(df, tiny_dataset)
    data = load_czsl(tiny_dataset)
    keys = {it.ref for v in data.items.values() for it in v}
    assert data.kind == "dataset" and rejected not in keys and len(keys) == df.height - 1
    assert data.shards[next(iter(keys))].exists()


def test_partners_share_one_factor_and_are_uniform():
    rng = np.random.default_rng(0)
    attr, obj = rng.integers(0, 4, 120), rng.integers(0, 5, 120)
    attr[0], obj[0] = 9, 0  # attribute 9 has a single object: no same-attribute partner
    part = Partners(attr, obj)
    rows = np.arange(120)
    hits = np.zeros(120)
    for _ in range(300):
        s = part.sample(rows, rng.random(120), rng.random(120))
        a, ma, o, mo = s["same_attr"], s["attr_mask"], s["same_obj"], s["obj_mask"]
        assert (attr[a][ma] == attr[ma]).all() and (obj[a][ma] != obj[ma]).all()
        assert (obj[o][mo] == obj[mo]).all() and (attr[o][mo] != attr[mo]).all()
        assert (a[~ma] == rows[~ma]).all() and not ma[0]
        hits[a[1]] += 1
    cands = np.flatnonzero((attr == attr[1]) & (obj != obj[1]))
    assert set(np.flatnonzero(hits)) == set(cands)  # every candidate drawn, nothing else
    assert hits[cands].min() > 300 / len(cands) / 3


def test_glove_file_words_multiword_and_missing(tmp_path):
    from training.trident.words import embed_words

    f = tmp_path / "vec.txt"
    f.write_text("red 1 0 0\npaper 0 2 0\nplane 0 0 2\nt 1 1 1\nshirt 3 3 3\n")
    vecs, stats = embed_words(f"glove:{f}", ["red", "paper_plane", "t-shirt", "zorp"])
    np.testing.assert_allclose(vecs, [[1, 0, 0], [0, 1, 1], [2, 2, 2], [0, 0, 0]])
    assert stats == {"words": 4, "missing": 1, "dim": 3}
    f.write_text("red 1 0 0\npaper 0 2\n")
    with pytest.raises(CurateError, match="has 2 values"):
        embed_words(f"glove:{f}", ["red", "paper"])
    with pytest.raises(CurateError, match="unknown word embeddings"):
        embed_words("word2vec:x", ["red"])


def test_hf_word_embeddings_mean_the_last_hidden_state_without_special_tokens(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    from training.trident.words import embed_words

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "paper", "plane", "pl", "##ane"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32)).eval()
    model.save_pretrained(str(tmp_path))
    vecs, stats = embed_words(f"hf:{tmp_path}", ["red", "paper_plane"])
    with torch.no_grad():
        h = model(input_ids=torch.tensor([[2, 5, 3]])).last_hidden_state[0]  # [CLS] red [SEP]
        p1 = model(input_ids=torch.tensor([[2, 6, 3]])).last_hidden_state[0, 1]
        p2 = model(input_ids=torch.tensor([[2, 7, 3]])).last_hidden_state[0, 1]
    np.testing.assert_allclose(vecs[0], h[1].numpy(), atol=1e-5)
    np.testing.assert_allclose(vecs[1], ((p1 + p2) / 2).numpy(), atol=1e-5)
    assert stats["dim"] == 16


@pytest.mark.skipif(not __import__("curate.paths", fromlist=["find_gguf"]).find_gguf(),
                    reason="the bundled SmolLM2 GGUF is not installed")
def test_gguf_word_embeddings_through_llama_cpp():
    from training.trident.words import embed_words

    vecs, stats = embed_words("gguf", ["red", "paper", "plane", "paper_plane"])
    assert stats["dim"] == 576 and stats["missing"] == 0
    np.testing.assert_allclose(vecs[3], (vecs[1] + vecs[2]) / 2, atol=1e-5)
    assert np.linalg.norm(vecs[0]) > 2  # the raw hidden state, not a normalised embedding


def test_open_clip_tokens_are_the_penultimate_layer(tmp_path):
    import open_clip

    from curate.embed.backends import load_model
    from curate.embed.random_models import save_random_open_clip

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    spec = save_random_open_clip(tmp_path, arch="tok-test-clip", config=cfg)
    enc = load_model(spec, "cpu")
    x = torch.randn(2, 3, 32, 32)
    g, loc = enc.tokens(x)
    v = enc.model.visual
    with torch.no_grad():
        h = v.conv1(x).flatten(2).transpose(1, 2)
        h = torch.cat([open_clip.transformer._expand_token(v.class_embedding, 2), h], 1) + v.positional_embedding
        h = v.ln_pre(h)
        for blk in v.transformer.resblocks[:-1]:
            h = blk(h)
    assert g.shape == (2, 64) and loc.shape == (2, 16, 64)
    torch.testing.assert_close(g, h[:, 0]) and torch.testing.assert_close(loc, h[:, 1:])


def test_hf_tokens_are_hidden_states_minus_two(tmp_path):
    from curate.embed.backends import load_model
    from curate.embed.random_models import save_random_hf_clip

    enc = load_model(save_random_hf_clip(tmp_path), "cpu")
    x = torch.randn(2, 3, 32, 32)
    g, loc = enc.tokens(x)
    with torch.no_grad():
        hs = enc.model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(g, hs[:, 0]) and torch.testing.assert_close(loc, hs[:, 1:])


def test_llava_projector_weights_load_in_both_layouts(tmp_path):
    from safetensors.torch import save_file

    from training.trident.backbone import load_projector

    w = {"0.weight": torch.randn(12, 8), "0.bias": torch.randn(12), "2.weight": torch.randn(12, 12),
         "2.bias": torch.randn(12)}
    torch.save({f"model.mm_projector.{k}": v for k, v in w.items()}, tmp_path / "mm_projector.bin")  # LLaVA
    save_file(w, str(tmp_path / "mm_projector.safetensors"))  # TRIDENT's extracted keys
    x = torch.randn(3, 8)
    want = torch.relu(x @ w["0.weight"].T + w["0.bias"]) @ w["2.weight"].T + w["2.bias"]
    for name in ("mm_projector.bin", "mm_projector.safetensors"):
        proj = load_projector(tmp_path / name)
        torch.testing.assert_close(proj(x), want)
        assert not any(p.requires_grad for p in proj.parameters())
    torch.save({"fc.weight": torch.randn(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(CurateError, match="not an mm_projector"):
        load_projector(tmp_path / "other.pt")


def test_mini_clip_tokens_are_its_last_feature_map_and_pooled_embedding(tmp_path):
    from safetensors.torch import save_file

    from curate.embed.backends import load_model
    from curate.fsutil import write_json
    from training.models.mini_clip import MiniClipConfig, build_model

    cfg = MiniClipConfig()
    torch.manual_seed(0)
    model = build_model(cfg, 3).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    write_json(tmp_path / "config.json", {**cfg.__dict__, "vocab_size": 3})
    write_json(tmp_path / "vocab.json", ["red", "circle"])
    enc = load_model(f"mini:{tmp_path}", "cpu")
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        g, loc = enc.tokens(x)
        torch.testing.assert_close(g, model.visual(x))
    side = cfg.image_size // 8
    assert loc.shape == (2, side * side, 8 * cfg.width)
