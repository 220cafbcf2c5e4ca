"""TRIDENT's network and losses against a transcription of the official code.

The oracles below transcribe xud-yan/Trident ``models/trident.py`` (``normal_cross_entropy``,
``label_smoothing_cross_entropy``, ``orthogonal_regularization``, ``get_local_features``,
``get_global_features``, ``AO_DIS_MODULE.forward_attn/forward`` and the loss of
``train_forward``), loops and all, run on the weights of our vectorised modules.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.trident.config import preset
from training.trident.model import Trident, cosine_logits, orthogonality, set_vocabulary, smoothed_ce

# -- the official code, transcribed (test oracle) -------------------------------------------------------


def off_normal_ce(pred, target):
    output = torch.tensor(0.0, dtype=pred.dtype)
    for i, line in enumerate(pred):
        output += -pred[i][target[i]] + torch.log(torch.exp(line).sum())
    return output / len(target)


def off_ls_ce(pred, target, aux, alpha):
    output = torch.tensor(0.0, dtype=pred.dtype)
    single_alpha = alpha / aux.size(-1)
    for i, line in enumerate(pred):
        output += -(1 - alpha) * pred[i][target[i]] + torch.log(torch.exp(line).sum())
        for aux_idx in aux[i]:
            output += -single_alpha * pred[i][aux_idx]
    return output / len(target)


def off_ortho(templates):
    b, n, _ = templates.size()
    t = F.normalize(templates, p=2, dim=-1)
    return torch.nn.MSELoss()(t @ t.permute(0, 2, 1), torch.eye(n).unsqueeze(0).repeat(b, 1, 1))


def off_local(model, x):  # get_local_features after mm_projector + faa
    feats = model.faa(model.project(x).mT).mT
    out = []
    for m in model.local_agg:
        w = m(feats.mT)
        out.append(torch.mean(feats.mT * w, dim=-1))
    return torch.stack(out).permute(1, 0, 2)


def off_global(model, g):
    feats = model.global_pre(g) if model.global_pre is not None else g
    out = [feats * F.relu(model.global_cond_masks(torch.full((g.size(0),), i))) for i in range(model.cfg.global_masks)]
    return torch.stack(out).permute(1, 0, 2)


def off_dis(dis, img1, img2_a, img2_o, attr1, obj1, attr_2_o, obj_2_a, am, om, aux, aux_a, aux_o, words, alpha):
    def attn(a, b):
        both = torch.cat([a, b], -1)
        w1, w2 = dis.shared_weights_1(both), dis.shared_weights_2(both)
        s1, s2 = torch.mean(w1 * a, 1), torch.mean(w2 * b, 1)
        d1, d2 = torch.mean((1 - w1) * a, 1), torch.mean((1 - w2) * b, 1)
        return dis.ao_2_word(torch.cat([s1, s2], -1)), s1, s2, d1, d2

    sh, s1, s2, d1, d2a = attn(img1, img2_a)
    sh_, s1_, s2_, d1_, d2o_ = attn(img1, img2_o)
    w = dis.word_mlp(words)

    def ce(x, y):
        return off_normal_ce(cosine_logits(x, w, 0.05), y)

    def ls(x, y, a):
        return off_ls_ce(cosine_logits(x, w, 0.05), y, a, alpha)

    terms = [ce(sh[am], attr1[am]), ls(s1[am], attr1[am], aux[am]), ls(s2[am], attr1[am], aux_a[am]),
             ce(d1[am], obj1[am]), ce(d2a[am], obj_2_a[am]), ce(sh_[om], obj1[om]), ce(s1_[om], obj1[om]),
             ce(s2_[om], obj1[om]), ls(d1_[om], attr1[om], aux[om]), ls(d2o_[om], attr_2_o[om], aux_o[om])]
    return sum(terms) / 10.0


# -- the tests -----------------------------------------------------------------------------------------------


def _model(n_words=10, word_dim=12, token_dim=8, global_dim=6, alpha=0.09):
    torch.manual_seed(0)
    cfg = preset("demo", dim=16, proj_dim=20, global_masks=3, local_poolings=5, alpha=alpha, local_tokens=0)
    model = Trident(cfg, n_words, word_dim, token_dim, global_dim)
    model.word_embedder.weight.data.normal_()
    # 4 training pairs over attrs {0, 1} and objs {2, 3}; auxiliaries are words 4..9
    set_vocabulary(model, [0, 0, 1, 1], [2, 3, 2, 3], [[4, 5, 6], [5, 6, 7], [6, 7, 8], [7, 8, 9]], alpha)
    return model


def _batch(u=9, b=6, tokens=9):
    g = torch.Generator().manual_seed(1)
    pair = torch.tensor([[0, 1, 2, 3, 0, 1], [1, 0, 3, 2, 1, 0], [2, 3, 0, 1, 2, 3]])  # anchors, same attr, same obj
    attr = torch.tensor([[0, 1][p // 2] for p in pair.reshape(-1).tolist()]).reshape(3, b)
    obj = torch.tensor([[2, 3][p % 2] for p in pair.reshape(-1).tolist()]).reshape(3, b)
    return {"g": torch.randn(u, 6, generator=g), "l": torch.randn(u, tokens, 8, generator=g),
            "inv": torch.tensor([[0, 1, 2, 3, 4, 5], [6, 7, 8, 0, 1, 2], [3, 4, 5, 6, 7, 8]]),
            "pair": pair, "attr": attr, "obj": obj,
            "attr_mask": torch.ones(b, dtype=torch.bool), "obj_mask": torch.ones(b, dtype=torch.bool)}


def test_pair_ce_and_smoothing_equal_the_official_loops():
    z = torch.randn(7, 11, dtype=torch.float64)
    y = torch.randint(0, 11, (7,))
    aux = torch.randint(0, 11, (7, 3))
    torch.testing.assert_close(F.cross_entropy(z, y), off_normal_ce(z, y))
    mine = smoothed_ce(z, y, aux, torch.ones(7, 3, dtype=torch.bool), torch.full((7,), 0.09)).mean()
    torch.testing.assert_close(mine.double(), off_ls_ce(z, y, aux, 0.09), atol=1e-5, rtol=1e-6)


def test_orthogonality_equals_the_official_regularizer():
    t = torch.randn(5, 4, 16)
    torch.testing.assert_close(orthogonality(t).mean(), off_ortho(t))


def test_local_poolings_are_registered_trained_and_equal_the_official_loop():
    model = _model().eval()
    keys = model.state_dict().keys()
    assert all(f"local_agg.{i}.0.weight" in keys for i in range(5))  # saved (the official list is not)
    b = _batch()
    local, glob = model.templates(b["g"], b["l"])
    with torch.no_grad():
        torch.testing.assert_close(local, off_local(model, b["l"]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(glob, off_global(model, b["g"]), atol=1e-6, rtol=1e-6)
    model.train()
    model(b)["loss"].backward()
    assert all(m[0].weight.grad is not None and m[0].weight.grad.abs().sum() > 0 for m in model.local_agg)
    params = dict(model.named_parameters())
    assert "local_agg.0.0.weight" in params  # the optimizer sees them


def test_training_loss_equals_the_official_train_forward():
    """Eval mode (no dropout, BatchNorm on running statistics) so both see the same numbers."""
    model = _model().eval()
    b = _batch()
    out = model(b)
    inv, pair = b["inv"], b["pair"]
    with torch.no_grad():
        local, glob = off_local(model, b["l"]), off_global(model, b["g"])
        concept = model.compose(torch.cat([model.word_embedder.weight[model.train_obj_word],
                                           model.word_embedder.weight[model.train_attr_word]], -1))
        embs = [model.image_embedder(torch.cat([local[inv[k]].mean(1), glob[inv[k]].mean(1)], -1)) for k in range(3)]
        pair_loss = sum(off_normal_ce(cosine_logits(e, concept, 0.05), pair[k]) for k, e in enumerate(embs)) / 3
        ortho = sum(off_ortho(t[inv[k]]) for k in range(3) for t in (glob, local)) / 6
        toks = torch.cat([local, glob], 1)
        aux = model.aux_words
        dis = off_dis(model.dis, toks[inv[0]], toks[inv[1]], toks[inv[2]], b["attr"][0], b["obj"][0], b["attr"][2],
                      b["obj"][1], b["attr_mask"], b["obj_mask"], aux[pair[0]], aux[pair[1]], aux[pair[2]],
                      model.word_embedder.weight, 0.09)
    torch.testing.assert_close(out["pair_loss"], pair_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["ortho_loss"], ortho, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["dis_loss"], dis, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"], pair_loss + 0.1 * ortho + 0.25 * dis, atol=1e-5, rtol=1e-5)


def test_masked_partners_leave_their_terms_and_never_give_nan():
    model = _model().eval()
    b = _batch()
    b["attr_mask"] = torch.tensor([True, False, True, False, False, False])
    out = model(b)
    with torch.no_grad():
        toks = torch.cat(model.templates(b["g"], b["l"]), 1)
        inv, pair, am, om = b["inv"], b["pair"], b["attr_mask"], b["obj_mask"]
        aux = model.aux_words
        dis = off_dis(model.dis, toks[inv[0]], toks[inv[1]], toks[inv[2]], b["attr"][0], b["obj"][0], b["attr"][2],
                      b["obj"][1], am, om, aux[pair[0]], aux[pair[1]], aux[pair[2]], model.word_embedder.weight, 0.09)
    torch.testing.assert_close(out["dis_loss"], dis, atol=1e-5, rtol=1e-5)
    b["attr_mask"][:] = False
    b["obj_mask"][:] = False  # the official code divides 0 by 0 here
    out = model.train()(b)
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["dis_loss"])


def test_pairs_without_auxiliaries_get_plain_cross_entropy():
    model = _model()
    set_vocabulary(model, [0, 0, 1, 1], [2, 3, 2, 3], [[4, 5, 6], [], [6, 7, 8], []], 0.09)
    assert model.aux_alpha.tolist() == pytest.approx([0.09, 0.0, 0.09, 0.0])
    assert model.aux_mask.sum(1).tolist() == [3, 0, 3, 0]


def test_frozen_projector_stays_out_of_the_checkpoint_and_follows_the_device():
    from torch import nn

    proj = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 24)).requires_grad_(False)
    cfg = preset("demo", dim=16, local_tokens=0)
    model = Trident(cfg, 10, 12, 8, 6, projector=proj)
    assert not any(k.startswith(("project", "_frozen")) for k in model.state_dict())
    assert model.faa[0].in_channels == 24
    model.double()
    assert proj[0].weight.dtype == torch.float64
