"""training/metrics/cir.py against transcriptions of the official evaluation code.

The ``official_*`` functions below are near-verbatim copies of the official code (repository and file
cited on each), cut to the part after the features are computed (``predicted_features @
index_features.T`` is ``similarity``) and without the final ``* 100``. They are the oracle only.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from statistics import mean

import numpy as np
import pytest
import torch

from training.metrics.cir import (
    CIRCO_SEMANTIC_ASPECTS,
    circo_metrics,
    circo_submission,
    cirr_metrics,
    cirr_submission,
    fashioniq_average,
    fashioniq_metrics,
    genecis_metrics,
)

# ============================================================================ official code (oracle)


# ABaldrati/CLIP4Cir src/validate.py, compute_cirr_val_metrics (miccunifi/SEARLE src/validate.py
# cirr_compute_val_metrics is the same code).
def official_cirr(similarity, index_names, reference_names, target_names, group_members):
    # Compute the distances and sort the results
    distances = 1 - similarity
    sorted_indices = torch.argsort(distances, dim=-1).cpu()
    sorted_index_names = np.array(index_names)[sorted_indices]

    # Delete the reference image from the results
    reference_mask = torch.tensor(
        sorted_index_names != np.repeat(np.array(reference_names), len(index_names)).reshape(len(target_names), -1))
    sorted_index_names = sorted_index_names[reference_mask].reshape(sorted_index_names.shape[0],
                                                                    sorted_index_names.shape[1] - 1)
    # Compute the ground-truth labels wrt the predictions
    labels = torch.tensor(
        sorted_index_names == np.repeat(np.array(target_names), len(index_names) - 1).reshape(len(target_names), -1))

    # Compute the subset predictions and ground-truth labels
    group_members = np.array(group_members)
    group_mask = (sorted_index_names[..., None] == group_members[:, None, :]).sum(-1).astype(bool)
    group_labels = labels[group_mask].reshape(labels.shape[0], -1)

    assert torch.equal(torch.sum(labels, dim=-1).int(), torch.ones(len(target_names)).int())
    assert torch.equal(torch.sum(group_labels, dim=-1).int(), torch.ones(len(target_names)).int())

    # Compute the metrics
    recall_at1 = (torch.sum(labels[:, :1]) / len(labels)).item()
    recall_at5 = (torch.sum(labels[:, :5]) / len(labels)).item()
    recall_at10 = (torch.sum(labels[:, :10]) / len(labels)).item()
    recall_at50 = (torch.sum(labels[:, :50]) / len(labels)).item()
    group_recall_at1 = (torch.sum(group_labels[:, :1]) / len(group_labels)).item()
    group_recall_at2 = (torch.sum(group_labels[:, :2]) / len(group_labels)).item()
    group_recall_at3 = (torch.sum(group_labels[:, :3]) / len(group_labels)).item()

    return {
        'recall_at1': recall_at1, 'recall_at5': recall_at5, 'recall_at10': recall_at10,
        'recall_at50': recall_at50, 'group_recall_at1': group_recall_at1,
        'group_recall_at2': group_recall_at2, 'group_recall_at3': group_recall_at3,
    }


# ABaldrati/CLIP4Cir src/cirr_test_submission.py, generate_cirr_test_dicts + generate_cirr_test_submissions
# (miccunifi/SEARLE src/generate_test_submission.py cirr_generate_test_dicts is the same code).
def official_cirr_submission(similarity, index_names, reference_names, pairs_id, group_members):
    distances = 1 - similarity
    sorted_indices = torch.argsort(distances, dim=-1).cpu()
    sorted_index_names = np.array(index_names)[sorted_indices]

    # Delete the reference image from the results
    reference_mask = torch.tensor(
        sorted_index_names != np.repeat(np.array(reference_names), len(index_names)).reshape(len(sorted_index_names),
                                                                                             -1))
    sorted_index_names = sorted_index_names[reference_mask].reshape(sorted_index_names.shape[0],
                                                                    sorted_index_names.shape[1] - 1)
    # Compute the subset predictions
    group_members = np.array(group_members)
    group_mask = (sorted_index_names[..., None] == group_members[:, None, :]).sum(-1).astype(bool)
    sorted_group_names = sorted_index_names[group_mask].reshape(sorted_index_names.shape[0], -1)

    # Generate prediction dicts
    pairid_to_predictions = {str(int(pair_id)): prediction[:50].tolist() for (pair_id, prediction) in
                             zip(pairs_id, sorted_index_names)}  # noqa: B905
    pairid_to_group_predictions = {str(int(pair_id)): prediction[:3].tolist() for (pair_id, prediction) in
                                   zip(pairs_id, sorted_group_names)}  # noqa: B905
    submission = {'version': 'rc2', 'metric': 'recall'}
    group_submission = {'version': 'rc2', 'metric': 'recall_subset'}
    submission.update(pairid_to_predictions)
    group_submission.update(pairid_to_group_predictions)
    return submission, group_submission


# ABaldrati/CLIP4Cir src/validate.py, compute_fiq_val_metrics (SEARLE fiq_compute_val_metrics: same code).
def official_fiq(similarity, index_names, target_names):
    distances = 1 - similarity
    sorted_indices = torch.argsort(distances, dim=-1).cpu()
    sorted_index_names = np.array(index_names)[sorted_indices]

    # Compute the ground-truth labels wrt the predictions
    labels = torch.tensor(
        sorted_index_names == np.repeat(np.array(target_names), len(index_names)).reshape(len(target_names), -1))
    assert torch.equal(torch.sum(labels, dim=-1).int(), torch.ones(len(target_names)).int())

    # Compute the metrics
    recall_at10 = (torch.sum(labels[:, :10]) / len(labels)).item()
    recall_at50 = (torch.sum(labels[:, :50]) / len(labels)).item()
    return {'recall_at10': recall_at10, 'recall_at50': recall_at50}


# ABaldrati/CLIP4Cir src/combiner_train.py, combiner_training_fiq (validation results_dict).
def official_fiq_average(idx_to_dress_mapping, recalls_at10, recalls_at50):
    results_dict = {}
    for i in range(len(recalls_at10)):
        results_dict[f'{idx_to_dress_mapping[i]}_recall_at10'] = recalls_at10[i]
        results_dict[f'{idx_to_dress_mapping[i]}_recall_at50'] = recalls_at50[i]
    results_dict.update({
        'average_recall_at10': mean(recalls_at10),
        'average_recall_at50': mean(recalls_at50),
        'average_recall': (mean(recalls_at50) + mean(recalls_at10)) / 2
    })
    return results_dict


# miccunifi/SEARLE src/generate_test_submission.py, circo_generate_test_dict.
def official_circo_submission(similarity, index_names, query_ids):
    sorted_indices = torch.topk(similarity, dim=-1, k=50).indices.cpu()
    sorted_index_names = np.array(index_names)[sorted_indices]
    queryid_to_retrieved_images = {query_id: query_sorted_names[:50].tolist() for
                                   (query_id, query_sorted_names) in zip(query_ids, sorted_index_names)}  # noqa: B905
    return queryid_to_retrieved_images


# miccunifi/CIRCO src/evaluation.py, compute_metrics (the evaluation server); the CIRCODataset is
# replaced by the list of annotations it reads (get_target_img_ids, get_semantic_aspects).
def official_circo_eval(annotations, predictions_dict, ranks):
    semantic_aspects_list = ['cardinality', 'addition', 'negation', 'direct_addressing', 'compare_change',
                             'comparative_statement', 'statement_with_conjunction', 'spatial_relations_background',
                             'viewpoint']
    aps_atk = defaultdict(list)
    recalls_atk = defaultdict(list)
    semantic_aps_at10 = defaultdict(list)
    for query_id, predictions in predictions_dict.items():
        target = annotations[int(query_id)]
        semantic_aspects = annotations[int(query_id)].get('semantic_aspects', [])
        gt_img_ids = target['gt_img_ids']
        target_img_id = target['target_img_id']
        if len(set(predictions)) != len(predictions):
            raise ValueError(f"Query {query_id} has duplicate predictions.")
        predictions = np.array(predictions, dtype=int)
        ap_labels = np.isin(predictions, gt_img_ids)
        precisions = np.cumsum(ap_labels, axis=0) * ap_labels  # Consider only positions corresponding to GTs
        precisions = precisions / np.arange(1, ap_labels.shape[0] + 1)  # Compute precision for each position
        for rank in ranks:
            aps_atk[rank].append(float(np.sum(precisions[:rank]) / min(len(gt_img_ids), rank)))
        recall_labels = (predictions == target_img_id)
        for rank in ranks:
            recalls_atk[rank].append(float(np.sum(recall_labels[:rank])))
        for aspect in semantic_aspects:
            semantic_aps_at10[aspect].append(float(np.sum(precisions[:10]) / min(len(gt_img_ids), 10)))
    map_atk = {}
    recall_atk = {}
    semantic_map_at10 = {}
    for rank in ranks:
        map_atk[rank] = float(np.mean(aps_atk[rank]))
        recall_atk[rank] = float(np.mean(recalls_atk[rank]))
    with warnings.catch_warnings():  # np.mean([]) of an aspect without queries: nan + RuntimeWarning
        warnings.simplefilter("ignore", RuntimeWarning)
        for aspect in semantic_aspects_list:
            semantic_map_at10[aspect] = float(np.mean(semantic_aps_at10[aspect]))
    return map_atk, recall_atk, semantic_map_at10


# miccunifi/SEARLE src/validate.py, circo_compute_val_metrics (per-query loop; float32 precisions).
def official_circo_searle(predicted_features_similarity, index_names, target_names, gts_img_ids):
    ap_at5, ap_at10, ap_at25, ap_at50 = [], [], [], []
    recall_at5, recall_at10, recall_at25, recall_at50 = [], [], [], []
    for similarity, target_name, gt_img_ids in zip(predicted_features_similarity, target_names, gts_img_ids):  # noqa: B905
        gt_img_ids = np.array(gt_img_ids)[
            np.array(gt_img_ids) != '']  # remove trailing empty strings added for collate_fn
        sorted_indices = torch.topk(similarity, dim=-1, k=50).indices.cpu()
        sorted_index_names = np.array(index_names)[sorted_indices]
        map_labels = torch.tensor(np.isin(sorted_index_names, gt_img_ids), dtype=torch.uint8)
        precisions = torch.cumsum(map_labels, dim=0) * map_labels  # Consider only positions corresponding to GTs
        precisions = precisions / torch.arange(1, map_labels.shape[0] + 1)  # Compute precision for each position

        ap_at5.append(float(torch.sum(precisions[:5]) / min(len(gt_img_ids), 5)))
        ap_at10.append(float(torch.sum(precisions[:10]) / min(len(gt_img_ids), 10)))
        ap_at25.append(float(torch.sum(precisions[:25]) / min(len(gt_img_ids), 25)))
        ap_at50.append(float(torch.sum(precisions[:50]) / min(len(gt_img_ids), 50)))

        assert target_name == gt_img_ids[0], f"Target name not in GTs {target_name} {gt_img_ids}"
        single_gt_labels = torch.tensor(sorted_index_names == target_name)
        recall_at5.append(float(torch.sum(single_gt_labels[:5])))
        recall_at10.append(float(torch.sum(single_gt_labels[:10])))
        recall_at25.append(float(torch.sum(single_gt_labels[:25])))
        recall_at50.append(float(torch.sum(single_gt_labels[:50])))
    return {
        'map_at5': np.mean(ap_at5), 'map_at10': np.mean(ap_at10), 'map_at25': np.mean(ap_at25),
        'map_at50': np.mean(ap_at50), 'recall_at5': np.mean(recall_at5), 'recall_at10': np.mean(recall_at10),
        'recall_at25': np.mean(recall_at25), 'recall_at50': np.mean(recall_at50),
    }


# facebookresearch/genecis utils/gen_utils.py, AverageMeter.
class AverageMeter:
    def __init__(self):
        self.val = 0
        self.avg = 0
        self.sum = 0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


# facebookresearch/genecis utils/metric_utils.py, get_recall (one-hot branch).
def get_recall(indices, targets):
    targets = targets.view(-1, 1).expand_as(indices)
    hits = (targets == indices).nonzero()
    if len(hits) == 0:
        return 0
    n_hits = (targets == indices).nonzero()[:, :-1].size(0)
    recall = float(n_hits) / targets.size(0)
    return recall


# facebookresearch/genecis eval/eval_functions.py, validate (per batch of the val loader).
def official_genecis(similarity_batches, target_rank_batches, topk=(1, 2, 3)):
    meters = {k: AverageMeter() for k in topk}
    for similarities, target_rank in zip(similarity_batches, target_rank_batches):  # noqa: B905
        bsz = similarities.shape[0]
        _, sort_idxs = similarities.sort(dim=-1, descending=True)  # B x N
        for k in topk:
            recall_k = get_recall(sort_idxs[:, :k], target_rank)
            meters[k].update(recall_k, bsz)
    return {f'recall_at{k}': v.avg for k, v in meters.items()}


# ============================================================================ random cases


def _similarity(rng, q, m, ties, dtype):
    x = rng.random((q, m))
    if ties == "round1":  # heavy ties: 11 distinct values
        x = np.round(x, 1)
    elif ties == "binary":  # extreme ties
        x = np.round(x)
    elif ties == "tiny":  # 1 - s rounds to 1.0 in float32: only argsort's tie-breaking orders the row
        x = rng.integers(1, 4, (q, m)) * 1e-9
    return torch.from_numpy(x.astype(dtype))


def _cirr_case(seed, q, m, ties, dtype):
    rng = np.random.default_rng(seed)
    names = [f"img{i:05d}" for i in rng.permutation(m)]
    refs, tgts, groups = [], [], []
    for _ in range(q):
        ref, tgt, *others = rng.choice(m, size=6, replace=False)
        group = [names[ref], names[tgt]] + [names[o] for o in others]
        rng.shuffle(group)
        refs.append(names[ref])
        tgts.append(names[tgt])
        groups.append(group)
    return _similarity(rng, q, m, ties, dtype), names, refs, tgts, groups


SIZES = [(1, 6), (2, 7), (5, 17), (13, 60), (64, 300), (200, 1500)]
TIES = ["none", "round1", "binary", "tiny"]
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("q,m", SIZES)
def test_cirr_matches_official(q, m, ties, dtype):
    for seed in range(3):
        sim, names, refs, tgts, groups = _cirr_case(seed * 1000 + q, q, m, ties, dtype)
        want = official_cirr(sim, names, refs, tgts, groups)
        got = cirr_metrics(sim, names, refs, tgts, groups)
        assert got == want  # bit-identical, key order included
        assert cirr_metrics(sim.numpy(), np.array(names), refs, tgts, np.array(groups)) == want


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("q,m", SIZES)
def test_cirr_submission_matches_official(q, m, ties):
    sim, names, refs, _, groups = _cirr_case(7 + q, q, m, ties, np.float32)
    pair_ids = [int(i) for i in np.random.default_rng(q).permutation(10 * q)[:q]]
    want = official_cirr_submission(sim, names, refs, pair_ids, groups)
    got = cirr_submission(sim, names, refs, pair_ids, groups)
    assert got == want
    recall, subset = got
    assert list(recall)[:2] == ["version", "metric"] and recall["metric"] == "recall"
    assert subset["version"] == "rc2" and subset["metric"] == "recall_subset"
    for p, r in zip(pair_ids, refs, strict=True):
        assert len(recall[str(p)]) == min(50, m - 1) and r not in recall[str(p)]
        assert len(subset[str(p)]) == 3 and r not in subset[str(p)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("q,m", SIZES)
def test_fashioniq_matches_official(q, m, ties, dtype):
    rng = np.random.default_rng(q * 31 + m)
    for _ in range(3):
        names = [f"B00{i:06d}" for i in rng.permutation(m)]
        tgts = [names[i] for i in rng.integers(0, m, q)]
        sim = _similarity(rng, q, m, ties, dtype)
        want = official_fiq(sim, names, tgts)
        assert fashioniq_metrics(sim, names, tgts) == want
        assert fashioniq_metrics(sim.numpy(), tuple(names), np.array(tgts)) == want


def test_fashioniq_average_matches_official():
    rng = np.random.default_rng(0)
    cats = ["shirt", "dress", "toptee"]
    for _ in range(20):
        per = {c: {"recall_at10": float(np.float32(rng.random())), "recall_at50": float(np.float32(rng.random()))}
               for c in cats}
        want = official_fiq_average(cats, [per[c]["recall_at10"] for c in cats],
                                    [per[c]["recall_at50"] for c in cats])
        assert fashioniq_average(per) == want


def _circo_case(seed, q, m, ties, dtype, str_ids=False, pad=True):
    rng = np.random.default_rng(seed)
    ids = [int(x) for x in rng.choice(10 * m, size=m, replace=False)]
    if str_ids:
        ids = [str(x) for x in ids]
    gts, refs, aspects = [], [], []
    for _ in range(q):
        n_gt = int(rng.integers(1, min(m - 1, 30) + 1))
        pick = rng.choice(m, size=n_gt + 1, replace=False)
        refs.append(ids[pick[0]])
        gts.append([ids[i] for i in pick[1:]])
        aspects.append([str(a) for a in rng.choice(CIRCO_SEMANTIC_ASPECTS[:-1], size=rng.integers(0, 3),
                                                   replace=False)])
    tgts = [g[0] for g in gts]
    if pad and not str_ids:  # -1-padded array, as a collate would give
        width = max(len(g) for g in gts)
        padded = np.full((q, width), -1, dtype=np.int64)
        for i, g in enumerate(gts):
            padded[i, :len(g)] = g
        gt_in = padded
    elif pad:  # SEARLE pads with "" for its collate_fn
        width = max(len(g) for g in gts)
        gt_in = [g + [""] * (width - len(g)) for g in gts]
    else:
        gt_in = gts
    return _similarity(rng, q, m, ties, dtype), ids, refs, tgts, gts, gt_in, aspects


CIRCO_SIZES = [(1, 50), (3, 51), (9, 80), (40, 400), (150, 2000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("q,m", CIRCO_SIZES)
def test_circo_matches_official_evaluation(q, m, ties, dtype):
    for seed in range(3):
        sim, ids, refs, tgts, gts, gt_in, aspects = _circo_case(seed * 7 + m, q, m, ties, dtype, pad=seed != 1)
        query_ids = [str(i) for i in range(q)]
        predictions = official_circo_submission(sim, ids, query_ids)
        annotations = [{"target_img_id": t, "gt_img_ids": g, "semantic_aspects": a}
                       for t, g, a in zip(tgts, gts, aspects, strict=True)]
        map_atk, recall_atk, semantic = official_circo_eval(annotations, predictions, [5, 10, 25, 50])
        got = circo_metrics(sim, ids, refs, tgts, gt_in, semantic_aspects=aspects)
        for k in (5, 10, 25, 50):
            assert got[f"map_at{k}"] == map_atk[k]
            assert got[f"recall_at{k}"] == recall_atk[k]
        assert list(got["semantic_map_at10"]) == list(CIRCO_SEMANTIC_ASPECTS)
        for a, v in semantic.items():
            assert got["semantic_map_at10"][a] == v or (math.isnan(v) and math.isnan(got["semantic_map_at10"][a]))
        assert math.isnan(got["semantic_map_at10"]["viewpoint"])  # no query was given that aspect
        assert circo_submission(sim, ids, query_ids) == predictions
        assert circo_metrics(sim.numpy(), np.array(ids), refs, None, gts, aspects) == got


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("q,m", CIRCO_SIZES)
def test_circo_matches_searle_validation(q, m, ties):
    # SEARLE computes each AP in float32: equal to the evaluation server's float64 well within 1e-6.
    sim, ids, refs, tgts, gts, gt_in, _ = _circo_case(m + 3, q, m, ties, np.float32, str_ids=True)
    want = official_circo_searle(sim, ids, tgts, gt_in)
    got = circo_metrics(sim, ids, refs, tgts, gt_in)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-7)
        if key.startswith("recall"):
            assert got[key] == v


def _genecis_case(rng, q, g, ties, dtype):
    sim = _similarity(rng, q, g, ties, dtype)
    return sim, torch.from_numpy(rng.integers(0, g, q))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("q,g", [(1, 2), (3, 10), (40, 15), (100, 17), (333, 30)])
def test_genecis_matches_official(q, g, ties, dtype):
    rng = np.random.default_rng(q + g)
    for bsz in (1, 7, 32):
        sim, tgt = _genecis_case(rng, q, g, ties, dtype)
        want = official_genecis(sim.split(bsz), tgt.split(bsz))
        got = genecis_metrics(sim, tgt)
        for k in (1, 2, 3):
            assert got[f"recall_at{k}"] == pytest.approx(want[f"recall_at{k}"], abs=1e-12)
        # the official galleries put the target first (target_rank = 0): ties then favour it up to 16 items
        zeros = torch.zeros(q, dtype=torch.long)
        want0 = official_genecis(sim.split(bsz), zeros.split(bsz))
        got0 = genecis_metrics(sim.numpy(), [0] * q)
        assert got0 == pytest.approx(want0, abs=1e-12)


def test_genecis_ragged_matches_official_per_query():
    rng = np.random.default_rng(5)
    rows, tgts = [], []
    for _ in range(60):
        g = int(rng.integers(1, 40))
        rows.append(np.round(rng.random(g), 1).astype(np.float32))
        tgts.append(int(rng.integers(0, g)))
    want = official_genecis([torch.from_numpy(r)[None] for r in rows], [torch.tensor([t]) for t in tgts])
    got = genecis_metrics([torch.from_numpy(r) for r in rows], tgts)
    assert got == pytest.approx(want, abs=1e-12)
    assert genecis_metrics(rows, np.array(tgts)) == got


# ============================================================================ hand-computed cases


def test_cirr_hand_computed():
    #          a     b     c     d     e     f     g     h
    sim = [[0.90, 0.80, 0.70, 0.10, 0.20, 0.30, 0.05, 0.85],   # q0: ref a, target c
           [0.50, 0.99, 0.60, 0.70, 0.80, 0.40, 0.95, 0.10]]   # q1: ref b, target f
    names = list("abcdefgh")
    groups = [list("acdefg"), list("bfacde")]
    # q0 ranking a h b c f e d g; without a: h b [c] f e d g -> target 3rd; group (c d e f g): [c] f e d g -> 1st
    # q1 ranking b g e d c a f h; without b: g e d c a [f] h -> target 6th; group (a c d e f): e d c a [f] -> 5th
    got = cirr_metrics(sim, names, ["a", "b"], ["c", "f"], groups)
    assert got == {"recall_at1": 0.0, "recall_at5": 0.5, "recall_at10": 1.0, "recall_at50": 1.0,
                   "group_recall_at1": 0.5, "group_recall_at2": 0.5, "group_recall_at3": 0.5}
    assert got == official_cirr(torch.tensor(sim), names, ["a", "b"], ["c", "f"], groups)
    recall, subset = cirr_submission(sim, names, ["a", "b"], [12, "7"], groups)
    assert recall == {"version": "rc2", "metric": "recall", "12": list("hbcfedg"), "7": list("gedcafh")}
    assert subset == {"version": "rc2", "metric": "recall_subset", "12": list("cfe"), "7": list("edc")}


def test_cirr_reports_float32_fractions():
    # one hit out of 3 queries: the official (torch.sum(labels) / 3).item() is float32(1/3), not 1/3.
    sim = np.array([[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]] * 3)
    names = list("abcdefg")
    groups = [list("abcdef")] * 3
    got = cirr_metrics(sim, names, ["a"] * 3, ["b", "c", "d"], groups)
    assert got["recall_at1"] == float(np.float32(1 / 3)) == 0.3333333432674408
    assert got["recall_at5"] == 1.0 and got["group_recall_at2"] == float(np.float32(2 / 3))


def test_fashioniq_hand_computed():
    names = [f"i{j}" for j in range(12)]
    sim = np.tile(np.linspace(1.0, 0.0, 12), (2, 1))
    # q0 target i11 ranks 12th (outside the top 10); q1 target i0 ranks 1st. Nothing is removed.
    assert fashioniq_metrics(sim, names, ["i11", "i0"]) == {"recall_at10": 0.5, "recall_at50": 1.0}
    got = fashioniq_average({"dress": {"recall_at10": 0.25, "recall_at50": 0.5},
                             "shirt": {"recall_at10": 0.5, "recall_at50": 0.75},
                             "toptee": {"recall_at10": 0.75, "recall_at50": 1.0}})
    assert got == {"dress_recall_at10": 0.25, "dress_recall_at50": 0.5, "shirt_recall_at10": 0.5,
                   "shirt_recall_at50": 0.75, "toptee_recall_at10": 0.75, "toptee_recall_at50": 1.0,
                   "average_recall_at10": 0.5, "average_recall_at50": 0.75, "average_recall": 0.625}


def test_circo_hand_computed():
    ids = [10, 11, 12, 13, 14]
    sim = [[0.9, 0.7, 0.8, 0.1, 0.6],   # q0 ranked 10 12 11 14 13, gt {12, 14}
           [0.9, 0.2, 0.8, 0.3, 0.7]]   # q1 ranked 10 12 14 13 11, gt {11, 13, 99 (not in the index)}
    # q0: hits at 2 and 4 -> P = 1/2, 2/4 -> AP = (0.5 + 0.5) / min(2, K) = 0.5 for every K
    # q1: hits at 4 and 5 -> P = 1/4, 2/5 -> AP = 0.65 / min(3, K) = 0.21666... (99 still counts in #gt)
    # reference 10 is NOT removed; it ranks 1st for both queries.
    got = circo_metrics(sim, ids, [10, 10], [12, 11], [[12, 14, -1], [11, 13, 99]],
                        semantic_aspects=[["cardinality"], ["cardinality", "addition"]])
    for k in (5, 10, 25, 50):
        assert got[f"map_at{k}"] == pytest.approx((0.5 + 0.65 / 3) / 2, abs=1e-15)
        assert got[f"recall_at{k}"] == 1.0  # targets rank 2nd and 5th
    sem = got["semantic_map_at10"]
    assert sem["cardinality"] == pytest.approx((0.5 + 0.65 / 3) / 2)
    assert sem["addition"] == pytest.approx(0.65 / 3)
    assert all(math.isnan(sem[a]) for a in CIRCO_SEMANTIC_ASPECTS if a not in ("cardinality", "addition"))
    assert circo_submission(sim, ids, [0, 1]) == {"0": [10, 12, 11, 14, 13], "1": [10, 12, 14, 13, 11]}
    # AP@5 with more ground truths than K is divided by K: 6 gts, hits at 1..5 -> AP@5 = 1.
    six = circo_metrics([[5, 4, 3, 2, 1, 0, -1]], list(range(7)), [6], [0], [[0, 1, 2, 3, 4, 5]])
    assert six["map_at5"] == 1.0 and six["map_at10"] == 1.0


def test_genecis_hand_computed():
    sim = [[0.9, 0.1, 0.2, 0.3],   # target 0 ranks 1st
           [0.1, 0.5, 0.4, 0.3],   # target 2 ranks 2nd
           [0.5, 0.4, 0.3, 0.6]]   # target 2 ranks 4th
    got = genecis_metrics(sim, [0, 2, 2])
    assert got == {"recall_at1": 1 / 3, "recall_at2": 2 / 3, "recall_at3": 2 / 3}


# ============================================================================ tie-breaking


def test_ties_follow_torch_argsort_not_a_stable_order():
    # 40 equal similarities: CPU torch.argsort is not stable above 16 items, and the official ranking
    # follows it; a stable sort would put index 0 first.
    m = 40
    sim = torch.full((1, m), 0.5)
    names = [f"n{i}" for i in range(m)]
    official_first = names[int(torch.argsort(1 - sim, dim=-1)[0, 0])]
    assert official_first != "n0"  # documents torch's behaviour this test relies on
    assert fashioniq_metrics(sim, names, [official_first])["recall_at10"] == 1.0
    assert fashioniq_metrics(sim, names, ["n0"]) == official_fiq(sim, names, ["n0"])


def test_one_minus_similarity_ties_are_kept():
    # float32 1 - 1e-9 == 1 - 3e-9 == 1.0: the official distances tie although the similarities differ.
    sim = torch.tensor([[1e-9, 3e-9, 2e-9] + [1e-9] * 20], dtype=torch.float32)
    names = [f"n{i}" for i in range(23)]
    by_distance = torch.argsort(1 - sim, dim=-1)[0].tolist()
    assert by_distance != torch.argsort(-sim, dim=-1)[0].tolist()
    tgt = names[by_distance[0]]
    assert fashioniq_metrics(sim, names, [tgt]) == official_fiq(sim, names, [tgt])


# ============================================================================ bad input


def _tiny_cirr():
    names = list("abcdefg")
    sim = np.random.default_rng(0).random((2, 7))
    return sim, names, ["a", "b"], ["c", "d"], [list("abcdef"), list("bcdefg")]


def test_cirr_bad_input():
    sim, names, refs, tgts, groups = _tiny_cirr()
    cirr_metrics(sim, names, refs, tgts, groups)  # valid
    with pytest.raises(ValueError, match="reference 'z' of query 1 is not in the index"):
        cirr_metrics(sim, names, ["a", "z"], tgts, groups)
    with pytest.raises(ValueError, match="target 'z'"):
        cirr_metrics(sim, names, refs, ["c", "z"], groups)
    with pytest.raises(ValueError, match="target is the reference"):
        cirr_metrics(sim, names, refs, ["a", "d"], groups)
    with pytest.raises(ValueError, match="not among its group members"):
        cirr_metrics(sim, names, refs, ["g", "d"], groups)
    with pytest.raises(ValueError, match="expected 6"):
        cirr_metrics(sim, names, refs, tgts, [list("abcde"), list("bcdef")], group_size=6)
    with pytest.raises(ValueError, match="differ across queries"):  # group of q0 without its reference
        cirr_metrics(sim, names, refs, tgts, [list("bcdefg"), list("bcdefg")])
    with pytest.raises(ValueError, match="duplicate index name"):
        cirr_metrics(sim, list("abcdefa"), refs, tgts, groups)
    with pytest.raises(ValueError, match="index names has 6 entries"):
        cirr_metrics(sim, names[:6], refs, tgts, groups)
    with pytest.raises(ValueError, match="target names has 1 entries"):
        cirr_metrics(sim, names, refs, tgts[:1], groups)
    with pytest.raises(ValueError, match="group_members has 1"):
        cirr_metrics(sim, names, refs, tgts, groups[:1])
    with pytest.raises(ValueError, match="expected 6"):  # a wrong-size img_set, when the size is asked for
        cirr_metrics(sim, names, refs, tgts, [list("abcd"), list("bcde")], group_size=6)
    with pytest.raises(ValueError, match="2-D"):
        cirr_metrics(sim[0], names, refs, tgts, groups)
    nan = sim.copy()
    nan[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cirr_metrics(nan, names, refs, tgts, groups)
    # groups of another (rectangular) size are accepted by default, as the official code does
    small = [list("abcd"), list("bcde")]
    got = cirr_metrics(sim, names, refs, tgts, small)
    assert got == official_cirr(torch.from_numpy(sim), names, refs, tgts, small)


def test_cirr_submission_bad_input():
    sim, names, refs, _, groups = _tiny_cirr()
    with pytest.raises(ValueError, match="duplicate pair id 3"):
        cirr_submission(sim, names, refs, [3, "3"], groups)
    with pytest.raises(ValueError, match="not an integer"):
        cirr_submission(sim, names, refs, [3, "x"], groups)
    with pytest.raises(ValueError, match="not in the index"):
        cirr_submission(sim, names, ["a", "q"], [1, 2], groups)


def test_fashioniq_bad_input():
    sim = np.random.default_rng(0).random((2, 5))
    with pytest.raises(ValueError, match="target 'z' of query 1 is not in the index"):
        fashioniq_metrics(sim, list("abcde"), ["a", "z"])
    with pytest.raises(ValueError, match="target names has 3"):
        fashioniq_metrics(sim, list("abcde"), ["a", "b", "c"])
    with pytest.raises(ValueError, match="empty"):
        fashioniq_metrics(np.zeros((0, 5)), list("abcde"), [])
    with pytest.raises(ValueError, match="empty"):
        fashioniq_average({})
    with pytest.raises(ValueError, match="lacks recall_at50"):
        fashioniq_average({"dress": {"recall_at10": 0.1}})


def test_circo_bad_input():
    sim = np.random.default_rng(0).random((2, 5))
    ids = [1, 2, 3, 4, 5]
    ok = circo_metrics(sim, ids, [1, 2], [3, 4], [[3, -1], [4, 5]])
    assert ok == circo_metrics(sim, ids, [1, 2], None, [[3], [4, 5]])
    with pytest.raises(ValueError, match="query 1 has no ground truth"):
        circo_metrics(sim, ids, [1, 2], None, [[3], [-1, -1]])
    with pytest.raises(ValueError, match="not among its ground truths"):
        circo_metrics(sim, ids, [1, 2], [3, 1], [[3], [4, 5]])
    # a target absent from the index is never retrieved (the official server scores it 0)
    absent = circo_metrics(sim, ids, [1, 2], None, [[9], [4]])
    assert absent["recall_at50"] == 0.5
    with pytest.raises(ValueError, match="reference_ids has 1"):
        circo_metrics(sim, ids, [1], None, [[3], [4]])
    with pytest.raises(ValueError, match="gt_ids has 3"):
        circo_metrics(sim, ids, [1, 2], None, [[3], [4], [5]])
    with pytest.raises(ValueError, match="duplicate index name 1"):
        circo_metrics(sim, [1, 2, 3, 4, 1], [1, 2], None, [[3], [4]])
    with pytest.raises(ValueError, match="list of aspect names"):
        circo_metrics(sim, ids, [1, 2], None, [[3], [4]], semantic_aspects=["cardinality", ["addition"]])
    with pytest.raises(ValueError, match="duplicate query id 0"):
        circo_submission(sim, ids, [0, "0"])


def test_genecis_bad_input():
    with pytest.raises(ValueError, match=r"target_index\[1\] = 4"):
        genecis_metrics([[0.1, 0.2, 0.3, 0.4]] * 2, [0, 4])
    with pytest.raises(ValueError, match=r"target_index\[0\] = -1"):
        genecis_metrics([[0.1, 0.2]], [-1])
    with pytest.raises(ValueError, match="target_index has 1"):
        genecis_metrics([[0.1, 0.2]] * 2, [0])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        genecis_metrics([[0.1, 0.2], []], [0, 0])
    with pytest.raises(ValueError, match="no queries"):
        genecis_metrics([], [])
