"""The official TRIDENT training step, transcribed as a test oracle (its arithmetic, loops and
all; the backbone left out: it starts from the frozen token features).

Source: xud-yan/Trident ``models/trident.py`` ``Trident.train_forward`` (the FAA, ``self.faa``,
called once per image group: ``img1``, ``img2_a``, ``img2_o``, so its BatchNorm normalises each
group by its own statistics and updates its running statistics three times),
``get_local_features``, ``get_global_features``, ``normal_cross_entropy``,
``orthogonal_regularization`` and ``AO_DIS_MODULE.forward`` / ``forward_attn`` /
``label_smoothing_cross_entropy``; and ``dataset.py`` ``__getitem__`` /
``sample_same_attribute`` / ``sample_same_object``: a sample without a partner gets
``self.data[-1]`` (``i2 == -1``) with its mask 0, which only the disentanglement terms read.

It runs on the modules of our :class:`training.trident.model.Trident` (the official layer
names map one to one: ``faa``, ``local_agg_module`` = ``local_agg``, ``global_cond_masks``,
``global_pre``, ``image_embedder``, ``compose``, ``ao_dis`` = ``dis``); ``mm_projector`` is
our ``project`` (a learned projection, or the frozen one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classifier(img, concept, temp=0.05, scale=True):  # CosineClassifier.forward
    pred = torch.matmul(F.normalize(img, dim=-1), F.normalize(concept, dim=-1).transpose(0, 1))
    return pred / temp if scale else pred


def normal_cross_entropy(pred, target):
    output = torch.tensor(0.0, dtype=pred.dtype)
    for i, data_line in enumerate(pred):
        deno = torch.exp(data_line).sum()
        output += -pred[i][target[i]] + torch.log(deno)
    return output / len(target)


def label_smoothing_cross_entropy(pred, target, aux, alpha):
    output = torch.tensor(0.0, dtype=pred.dtype)
    single_alpha = alpha / aux.size(-1)
    for i, data_line in enumerate(pred):
        deno = torch.exp(data_line).sum()
        output += -(1 - alpha) * pred[i][target[i]] + torch.log(deno)
        for aux_idx in aux[i]:
            output += -single_alpha * pred[i][aux_idx]
    return output / len(target)


def orthogonal_regularization(templates):
    batch_size, length, _ = templates.size()
    norm_templates = F.normalize(templates, p=2, dim=-1)
    cosine_score = torch.matmul(norm_templates, norm_templates.permute(0, 2, 1).contiguous())
    eye_matrix = torch.eye(length, dtype=templates.dtype).unsqueeze(0).repeat(batch_size, 1, 1)
    return torch.nn.MSELoss()(cosine_score, eye_matrix)


def mm_projector(model, local):
    return model.project(local) if model.project is not None else model._frozen[0](local)


def get_local_features(model, features):
    local_features = []
    for module in model.local_agg:
        weight = module(features.mT)
        local_features.append(torch.mean(features.mT * weight, dim=-1))
    return torch.stack(local_features).permute(1, 0, 2).contiguous()


def get_global_features(model, features):
    global_features = []
    for idx in range(model.cfg.global_masks):
        mask = F.relu(model.global_cond_masks(torch.full((features.size(0),), idx)))
        feats = model.global_pre(features) if model.global_pre is not None else features
        global_features.append(feats * mask)
    return torch.stack(global_features).permute(1, 0, 2).contiguous()


def forward_attn(dis, image1, image2):
    image_both = torch.cat([image1, image2], dim=-1)
    shared_weight_1 = dis.shared_weights_1(image_both)
    shared_weight_2 = dis.shared_weights_2(image_both)
    shared_image_1 = torch.mean(shared_weight_1 * image1, dim=1)
    shared_image_2 = torch.mean(shared_weight_2 * image2, dim=1)
    diff_image_1 = torch.mean((1 - shared_weight_1) * image1, dim=1)
    diff_image_2 = torch.mean((1 - shared_weight_2) * image2, dim=1)
    shared_image = dis.ao_2_word(torch.cat([shared_image_1, shared_image_2], dim=-1))
    return shared_image, shared_image_1, shared_image_2, diff_image_1, diff_image_2


def ao_dis(dis, words, alpha, img1, img2_a, img2_o, attr1, obj1, attr_2_o, obj_2_a, attr_mask_task, obj_mask_task,
           aux_labels, aux2_a_labels, aux2_o_labels):
    shared_image, shared_image_1, shared_image_2, diff_image_1, diff_image_2_a = forward_attn(dis, img1, img2_a)
    shared_image_, shared_image_1_, shared_image_2_, diff_image_1_, diff_image_2_o_ = forward_attn(dis, img1, img2_o)
    word_emb = dis.word_mlp(words)
    am, om = attr_mask_task == 1, obj_mask_task == 1

    def ce(x, y):
        return normal_cross_entropy(classifier(x, word_emb), y)

    def ls(x, y, aux):
        return label_smoothing_cross_entropy(classifier(x, word_emb), y, aux, alpha)

    losses = [ce(shared_image[am], attr1[am]), ls(shared_image_1[am], attr1[am], aux_labels[am]),
              ls(shared_image_2[am], attr1[am], aux2_a_labels[am]), ce(diff_image_1[am], obj1[am]),
              ce(diff_image_2_a[am], obj_2_a[am]),
              ce(shared_image_[om], obj1[om]), ce(shared_image_1_[om], obj1[om]), ce(shared_image_2_[om], obj1[om]),
              ls(diff_image_1_[om], attr1[om], aux_labels[om]), ls(diff_image_2_o_[om], attr_2_o[om], aux2_o_labels[om])]
    return sum(losses) / 10.0


def train_forward(model, batch, aux_by_pair, alpha):
    """``Trident.train_forward`` on token features: ``batch`` holds, per group (``img``, ``img1_a``,
    ``img1_o``), the local tokens ``l_*`` [B, T, D] and CLS ``g_*`` [B, D] and the official labels.
    Returns (loss_total, pair_loss, ortho_loss, dis_loss)."""
    cfg = model.cfg
    concept = model.compose(torch.cat([model.word_embedder(model.train_obj_word),
                                       model.word_embedder(model.train_attr_word)], dim=-1))
    l1, la, lo = (mm_projector(model, batch[k]) for k in ("l_img", "l_img1_a", "l_img1_o"))
    l1, la, lo = model.faa(l1.mT).mT, model.faa(la.mT).mT, model.faa(lo.mT).mT  # three BatchNorm batches
    l1, la, lo = get_local_features(model, l1), get_local_features(model, la), get_local_features(model, lo)
    g1, ga, go = (get_global_features(model, batch[k]) for k in ("g_img", "g_img1_a", "g_img1_o"))
    e1, ea, eo = (model.image_embedder(torch.cat((loc.mean(1), glo.mean(1)), dim=-1))
                  for loc, glo in ((l1, g1), (la, ga), (lo, go)))
    pair_loss = (normal_cross_entropy(classifier(e1, concept, cfg.temperature), batch["pair"])
                 + normal_cross_entropy(classifier(ea, concept, cfg.temperature), batch["pair1_a"])
                 + normal_cross_entropy(classifier(eo, concept, cfg.temperature), batch["pair1_o"])) / 3.0
    ortho_loss = sum(orthogonal_regularization(t) for t in (g1, l1, ga, la, go, lo)) / 6.0
    dis_loss = ao_dis(model.dis, model.word_embedder.weight, alpha, torch.cat([l1, g1], 1), torch.cat([la, ga], 1),
                      torch.cat([lo, go], 1), batch["attr"], batch["obj"], batch["attr1_o"], batch["obj1_a"],
                      batch["attr_mask_task"], batch["obj_mask_task"], aux_by_pair[batch["pair"]],
                      aux_by_pair[batch["pair1_a"]], aux_by_pair[batch["pair1_o"]])
    loss = pair_loss + cfg.w_ortho * ortho_loss + cfg.w_dis * dis_loss
    return loss, pair_loss, ortho_loss, dis_loss
