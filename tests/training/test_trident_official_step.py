"""TRIDENT's training step in train mode against the official one (``official_trident_step.py``):
the loss, its parts, the gradients and the FAA BatchNorm's running statistics, on the same
weights and batch; the joint-batch option differs and is named by its checkpoints."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from official_trident_step import train_forward

from curate.errors import CurateError
from training.loop import save_model
from training.trident.config import preset
from training.trident.data import Partners
from training.trident.features import TrainTable, epoch_plans
from training.trident.model import Trident, load_weights, set_vocabulary
from training.trident.run import RunSpec

ALPHA = 0.09
PAIRS = [(0, 2), (0, 3), (1, 2), (1, 3)]  # (attribute word, object word) of the 4 training pairs


def _model(**options):
    torch.manual_seed(0)
    cfg = preset("demo", dim=16, proj_dim=20, global_masks=3, local_poolings=5, alpha=ALPHA, local_tokens=0,
                 faa_dropout=0.0, compose_dropout=0.0, **options)  # no dropout: both sides see the same numbers
    model = Trident(cfg, 10, 12, 8, 6)
    model.word_embedder.weight.data.normal_()
    set_vocabulary(model, [a for a, _ in PAIRS], [o for _, o in PAIRS],
                   [[4, 5, 6], [5, 6, 7], [6, 7, 8], [7, 8, 9]], ALPHA)
    return model.double().train()


def _batch():
    """9 distinct images, 6 anchors; partners repeat anchors (and each other). Anchors 2 and 5 have
    no same-attribute partner, anchor 4 no same-object one: they get image 8, the last training
    image, as the official loader's ``self.data[-1]``."""
    g = torch.Generator().manual_seed(1)
    img_pair = torch.tensor([0, 1, 2, 3, 0, 1, 3, 2, 1])
    inv = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 0, 8, 2, 1, 8], [2, 3, 0, 1, 8, 3]])
    attr_mask = torch.tensor([True, True, False, True, True, False])
    obj_mask = torch.tensor([True, True, True, True, False, True])
    pair = img_pair[inv]
    attr = torch.tensor([PAIRS[p][0] for p in pair.reshape(-1).tolist()]).reshape(3, -1)
    obj = torch.tensor([PAIRS[p][1] for p in pair.reshape(-1).tolist()]).reshape(3, -1)
    return {"g": torch.randn(9, 6, generator=g, dtype=torch.float64),
            "l": torch.randn(9, 7, 8, generator=g, dtype=torch.float64),
            "inv": inv, "pair": pair, "attr": attr, "obj": obj, "attr_mask": attr_mask, "obj_mask": obj_mask}


def _official_batch(b):
    inv = b["inv"]
    out = {f"{x}_{name}": b[x][inv[k]] for x in ("l", "g") for k, name in enumerate(("img", "img1_a", "img1_o"))}
    out.update(pair=b["pair"][0], pair1_a=b["pair"][1], pair1_o=b["pair"][2], attr=b["attr"][0], obj=b["obj"][0],
               attr1_o=b["attr"][2], obj1_a=b["obj"][1], attr_mask_task=b["attr_mask"].long(),
               obj_mask_task=b["obj_mask"].long())
    return out


def _bn(model):
    return [model.faa[1].running_mean, model.faa[1].running_var, model.dis.word_mlp[1].running_mean,
            model.dis.word_mlp[1].running_var]


def test_default_step_equals_the_official_train_forward_in_train_mode():
    base, b = _model(), _batch()
    assert (base.cfg.bn_groups, base.cfg.partners) == ("official", "official")
    ours, off = copy.deepcopy(base), copy.deepcopy(base)
    out = ours(b)
    loss, pair_loss, ortho, dis = train_forward(off, _official_batch(b), off.aux_words, ALPHA)
    for mine, theirs in ((out["loss"], loss), (out["pair_loss"], pair_loss), (out["ortho_loss"], ortho),
                         (out["dis_loss"], dis)):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)
    for mine, theirs in zip(_bn(ours), _bn(off), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)
    assert int(ours.faa[1].num_batches_tracked) == int(off.faa[1].num_batches_tracked) == 3
    out["loss"].backward()
    loss.backward()
    for (name, p), q in zip(ours.named_parameters(), off.parameters(), strict=True):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=0, msg=name)


def test_joint_batch_option_differs_and_updates_once():
    base, b = _model(), _batch()
    joint = copy.deepcopy(base)
    joint.cfg = preset("demo", **{**base.cfg.to_dict(), "bn_groups": "joint"})
    official = copy.deepcopy(base)
    lo, lj = official(b)["loss"], joint(b)["loss"]
    assert abs(float((lo - lj).detach())) > 1e-4  # one BatchNorm batch of the 9 distinct images is another step
    assert int(joint.faa[1].num_batches_tracked) == 1
    assert not torch.allclose(joint.faa[1].running_mean, official.faa[1].running_mean)


def test_drop_partners_leaves_partnerless_rows_out_of_pair_and_ortho():
    b = _batch()
    kept, dropped = _model()(b), _model(partners="drop")(b)
    torch.testing.assert_close(kept["dis_loss"], dropped["dis_loss"])  # the masks rule the dis terms in both
    assert abs(float(kept["pair_loss"] - dropped["pair_loss"])) > 1e-6
    b["attr_mask"][:] = True
    b["obj_mask"][:] = True
    torch.testing.assert_close(_model()(b)["loss"], _model(partners="drop")(b)["loss"])


def test_partnerless_anchors_get_the_last_training_image():
    attr = np.array([0, 0, 1, 1, 2])  # image 4: attribute 2 with one object, object 4 with one attribute
    obj = np.array([3, 4, 3, 4, 5])
    part = Partners(attr, obj)
    rows, u = np.arange(5), np.full(5, 0.5)
    official, own = part.sample(rows, u, u, fallback=4), part.sample(rows, u, u)
    assert not official["attr_mask"][4] and not official["obj_mask"][4]
    assert official["same_attr"][4] == 4 and official["same_obj"][4] == 4 and own["same_attr"][4] == 4
    lone = Partners(np.array([0, 1, 1]), np.array([5, 6, 7]))  # image 0 has no partner, image 2 is last
    s = lone.sample(np.arange(3), np.full(3, 0.5), np.full(3, 0.5), fallback=2)
    assert s["same_attr"][0] == 2 and s["same_obj"][0] == 2 and not s["attr_mask"][0]
    table = TrainTable(items=[None] * 3, rows=np.arange(3), pair=np.zeros(3, np.int64), attr_word=np.zeros(3),
                       obj_word=np.zeros(3), partners=lone)
    for rule, want in (("official", 2), ("drop", 0)):
        plan = [p for p in epoch_plans(table, 3, torch.Generator().manual_seed(0), partners=rule)][0]
        i = list(plan["anchor"]).index(0)
        assert plan["same_attr"][i] == want and not plan["attr_mask"][i]


def _spec(cfg):
    return RunSpec(config=cfg, backbone="mini:x", projector=None, word_embeddings="none", attrs=["a0", "a1"],
                   objs=[f"o{i}" for i in range(8)], train_pairs=[("a0", "o0")], words=[f"w{i}" for i in range(10)])


def test_a_joint_batch_checkpoint_is_refused_as_official(tmp_path):
    joint, official = _model(bn_groups="joint"), _model()
    save_model(joint, tmp_path / "joint.safetensors")
    with pytest.raises(CurateError) as e:
        load_weights(official, tmp_path / "joint.safetensors", _spec(official.cfg))
    assert "--bn-groups joint" in e.value.what and "the run says official" in e.value.what
    load_weights(joint, tmp_path / "joint.safetensors", _spec(joint.cfg))  # with its own run: fine
    save_model(official, tmp_path / "official.safetensors")
    load_weights(official, tmp_path / "official.safetensors", _spec(official.cfg))

    from safetensors.torch import save_file  # a checkpoint from before the option: joint, named as such

    save_file({k: v.contiguous() for k, v in official.state_dict().items()}, str(tmp_path / "old.safetensors"))
    with pytest.raises(CurateError, match="--bn-groups joint"):
        load_weights(official, tmp_path / "old.safetensors", _spec(official.cfg))
    spec = _spec(official.cfg)
    d = spec.to_dict()
    for k in ("bn_groups", "partners"):
        d["config"].pop(k)
    (tmp_path / "run.json").write_text(json.dumps(d))
    old = RunSpec.read(tmp_path)  # an older run.json: the step it was trained with, not today's default
    assert (old.config.bn_groups, old.config.partners) == ("joint", "drop")
    load_weights(official, tmp_path / "old.safetensors", old)
