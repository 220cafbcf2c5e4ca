"""evaluate_czsl against a transcription of the official ExplainableML/czsl Evaluator."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import hmean

from curate.errors import CurateError
from training.metrics.czsl import evaluate_czsl

_trapz = getattr(np, "trapz", None) or np.trapezoid

# ---------------------------------------------------------------------------------------------
# REFERENCE (the test oracle only): ExplainableML/czsl models/common.py, class Evaluator, at commit
# 716b0743285df19bee46647b84ee3864bb7850dc, transcribed line for line. Changes: the prints are
# dropped, `device` is the CPU, and three lines at the end of evaluate_predictions (marked) also
# return the bias list and the curves, which the official code keeps local.
# ---------------------------------------------------------------------------------------------
device = "cpu"


class Evaluator:

    def __init__(self, dset, model):

        self.dset = dset

        pairs = [(dset.attr2idx[attr], dset.obj2idx[obj]) for attr, obj in dset.pairs]
        self.train_pairs = [(dset.attr2idx[attr], dset.obj2idx[obj]) for attr, obj in dset.train_pairs]
        self.pairs = torch.LongTensor(pairs)

        if dset.phase == 'train':
            test_pair_set = set(dset.train_pairs)
            test_pair_gt = set(dset.train_pairs)
        elif dset.phase == 'val':
            test_pair_set = set(dset.val_pairs + dset.train_pairs)
            test_pair_gt = set(dset.val_pairs)
        else:
            test_pair_set = set(dset.test_pairs + dset.train_pairs)
            test_pair_gt = set(dset.test_pairs)

        self.test_pair_dict = [(dset.attr2idx[attr], dset.obj2idx[obj]) for attr, obj in test_pair_gt]
        self.test_pair_dict = dict.fromkeys(self.test_pair_dict, 0)

        for attr, obj in test_pair_gt:
            pair_val = dset.pair2idx[(attr, obj)]
            key = (dset.attr2idx[attr], dset.obj2idx[obj])
            self.test_pair_dict[key] = [pair_val, 0, 0]

        if dset.open_world:
            masks = [1 for _ in dset.pairs]
        else:
            masks = [1 if pair in test_pair_set else 0 for pair in dset.pairs]

        self.closed_mask = torch.BoolTensor(masks)
        seen_pair_set = set(dset.train_pairs)
        mask = [1 if pair in seen_pair_set else 0 for pair in dset.pairs]
        self.seen_mask = torch.BoolTensor(mask)

        oracle_obj_mask = []
        for _obj in dset.objs:
            mask = [1 if _obj == obj else 0 for attr, obj in dset.pairs]
            oracle_obj_mask.append(torch.BoolTensor(mask))
        self.oracle_obj_mask = torch.stack(oracle_obj_mask, 0)

        self.score_model = self.score_manifold_model

    def generate_predictions(self, scores, obj_truth, bias=0.0, topk=5):
        def get_pred_from_scores(_scores, topk):
            _, pair_pred = _scores.topk(topk, dim=1)
            pair_pred = pair_pred.contiguous().view(-1)
            attr_pred, obj_pred = self.pairs[pair_pred][:, 0].view(-1, topk), \
                self.pairs[pair_pred][:, 1].view(-1, topk)
            return (attr_pred, obj_pred)

        results = {}
        orig_scores = scores.clone()
        mask = self.seen_mask.repeat(scores.shape[0], 1)
        scores[~mask] += bias

        results.update({'open': get_pred_from_scores(scores, topk)})
        results.update({'unbiased_open': get_pred_from_scores(orig_scores, topk)})
        mask = self.closed_mask.repeat(scores.shape[0], 1)
        closed_scores = scores.clone()
        closed_scores[~mask] = -1e10
        closed_orig_scores = orig_scores.clone()
        closed_orig_scores[~mask] = -1e10
        results.update({'closed': get_pred_from_scores(closed_scores, topk)})
        results.update({'unbiased_closed': get_pred_from_scores(closed_orig_scores, topk)})

        mask = self.oracle_obj_mask[obj_truth]
        oracle_obj_scores = scores.clone()
        oracle_obj_scores[~mask] = -1e10
        oracle_obj_scores_unbiased = orig_scores.clone()
        oracle_obj_scores_unbiased[~mask] = -1e10
        results.update({'object_oracle': get_pred_from_scores(oracle_obj_scores, 1)})
        results.update({'object_oracle_unbiased': get_pred_from_scores(oracle_obj_scores_unbiased, 1)})

        return results

    def score_manifold_model(self, scores, obj_truth, bias=0.0, topk=5):
        scores = {k: v.to('cpu') for k, v in scores.items()}
        obj_truth = obj_truth.to(device)

        scores = torch.stack(
            [scores[(attr, obj)] for attr, obj in self.dset.pairs], 1
        )
        orig_scores = scores.clone()
        results = self.generate_predictions(scores, obj_truth, bias, topk)
        results['scores'] = orig_scores
        return results

    def score_fast_model(self, scores, obj_truth, bias=0.0, topk=5):
        results = {}
        mask = self.seen_mask.repeat(scores.shape[0], 1)
        scores[~mask] += bias

        mask = self.closed_mask.repeat(scores.shape[0], 1)
        closed_scores = scores.clone()
        closed_scores[~mask] = -1e10

        _, pair_pred = closed_scores.topk(topk, dim=1)
        pair_pred = pair_pred.contiguous().view(-1)
        attr_pred, obj_pred = self.pairs[pair_pred][:, 0].view(-1, topk), \
            self.pairs[pair_pred][:, 1].view(-1, topk)

        results.update({'closed': (attr_pred, obj_pred)})
        return results

    def evaluate_predictions(self, predictions, attr_truth, obj_truth, pair_truth, allpred, topk=1):
        attr_truth, obj_truth, pair_truth = attr_truth.to('cpu'), obj_truth.to('cpu'), pair_truth.to('cpu')

        pairs = list(
            zip(list(attr_truth.numpy()), list(obj_truth.numpy()), strict=True))

        seen_ind, unseen_ind = [], []
        for i in range(len(attr_truth)):
            if pairs[i] in self.train_pairs:
                seen_ind.append(i)
            else:
                unseen_ind.append(i)

        seen_ind, unseen_ind = torch.LongTensor(seen_ind), torch.LongTensor(unseen_ind)

        def _process(_scores):
            attr_match = (attr_truth.unsqueeze(1).repeat(1, topk) == _scores[0][:, :topk])
            obj_match = (obj_truth.unsqueeze(1).repeat(1, topk) == _scores[1][:, :topk])

            match = (attr_match * obj_match).any(1).float()
            attr_match = attr_match.any(1).float()
            obj_match = obj_match.any(1).float()
            seen_match = match[seen_ind]
            unseen_match = match[unseen_ind]

            seen_score, unseen_score = torch.ones(512, 5), torch.ones(512, 5)

            return attr_match, obj_match, match, seen_match, unseen_match, \
                torch.Tensor(seen_score + unseen_score), torch.Tensor(seen_score), torch.Tensor(unseen_score)

        def _add_to_dict(_scores, type_name, stats):
            base = ['_attr_match', '_obj_match', '_match', '_seen_match', '_unseen_match', '_ca', '_seen_ca',
                    '_unseen_ca']
            for val, name in zip(_scores, base, strict=True):
                stats[type_name + name] = val

        obj_oracle_match = (attr_truth == predictions['object_oracle'][0][:, 0]).float()
        obj_oracle_match_unbiased = (attr_truth == predictions['object_oracle_unbiased'][0][:, 0]).float()

        stats = dict(obj_oracle_match=obj_oracle_match, obj_oracle_match_unbiased=obj_oracle_match_unbiased)

        closed_scores = _process(predictions['closed'])
        unbiased_closed = _process(predictions['unbiased_closed'])
        _add_to_dict(closed_scores, 'closed', stats)
        _add_to_dict(unbiased_closed, 'closed_ub', stats)

        scores = predictions['scores']
        correct_scores = scores[torch.arange(scores.shape[0]), pair_truth][unseen_ind]

        max_seen_scores = predictions['scores'][unseen_ind][:, self.seen_mask].topk(topk, dim=1)[0][:, topk - 1]

        unseen_score_diff = max_seen_scores - correct_scores

        unseen_matches = stats['closed_unseen_match'].bool()
        correct_unseen_score_diff = unseen_score_diff[unseen_matches] - 1e-4

        correct_unseen_score_diff = torch.sort(correct_unseen_score_diff)[0]
        magic_binsize = 20
        bias_skip = max(len(correct_unseen_score_diff) // magic_binsize, 1)
        biaslist = correct_unseen_score_diff[::bias_skip]

        seen_match_max = float(stats['closed_seen_match'].mean())
        unseen_match_max = float(stats['closed_unseen_match'].mean())
        seen_accuracy, unseen_accuracy = [], []

        base_scores = {k: v.to('cpu') for k, v in allpred.items()}
        obj_truth = obj_truth.to('cpu')

        base_scores = torch.stack(
            [allpred[(attr, obj)] for attr, obj in self.dset.pairs], 1
        )

        for bias in biaslist:
            scores = base_scores.clone()
            results = self.score_fast_model(scores, obj_truth, bias=bias, topk=topk)
            results = results['closed']
            results = _process(results)
            seen_match = float(results[3].mean())
            unseen_match = float(results[4].mean())
            seen_accuracy.append(seen_match)
            unseen_accuracy.append(unseen_match)

        seen_accuracy.append(seen_match_max)
        unseen_accuracy.append(unseen_match_max)
        seen_accuracy, unseen_accuracy = np.array(seen_accuracy), np.array(unseen_accuracy)
        area = _trapz(seen_accuracy, unseen_accuracy)

        for key in stats:
            stats[key] = float(stats[key].mean())

        harmonic_mean = hmean([seen_accuracy, unseen_accuracy], axis=0)
        max_hm = np.max(harmonic_mean)
        idx = np.argmax(harmonic_mean)
        if idx == len(biaslist):
            bias_term = 1e3
        else:
            bias_term = biaslist[idx]
        stats['biasterm'] = float(bias_term)
        stats['best_unseen'] = np.max(unseen_accuracy)
        stats['best_seen'] = np.max(seen_accuracy)
        stats['AUC'] = area
        stats['hm_unseen'] = unseen_accuracy[idx]
        stats['hm_seen'] = seen_accuracy[idx]
        stats['best_hm'] = max_hm
        stats['_biaslist'] = [float(b) for b in biaslist]  # added for the test
        stats['_seen_accuracy'] = seen_accuracy  # added for the test
        stats['_unseen_accuracy'] = unseen_accuracy  # added for the test
        return stats

# ------------------------------------------- end of the transcription of models/common.py ---


class _Dset:
    """The attributes of data/dataset.py CompositionDataset (phase 'test') that Evaluator reads."""

    def __init__(self, pairs, train_pairs, n_attrs, n_objs, open_world):
        self.attrs, self.objs = list(range(n_attrs)), list(range(n_objs))
        self.attr2idx, self.obj2idx = {a: a for a in self.attrs}, {o: o for o in self.objs}
        self.pairs = [tuple(int(v) for v in p) for p in pairs]
        self.train_pairs = [tuple(int(v) for v in p) for p in train_pairs]
        self.val_pairs = []
        self.test_pairs = [p for p in self.pairs if p not in set(self.train_pairs)]
        self.pair2idx = {p: i for i, p in enumerate(self.pairs)}
        self.phase, self.open_world = "test", open_world


def official(scores, pairs, seen_pairs, labels, open_world=False, feasible=None, topk=1) -> dict:
    """test.py's flow: the model's score dict (open world: infeasible pairs masked by the model,
    as CompCos val_forward_with_threshold does, here with the Evaluator's -1e10), then
    score_model(bias=1e3, topk) and evaluate_predictions(topk)."""
    s = torch.from_numpy(np.array(scores))
    if open_world and feasible is not None:
        s[:, torch.from_numpy(~np.asarray(feasible, bool))] = -1e10
    attr, obj, pair = (torch.from_numpy(np.asarray(x, np.int64)) for x in labels)
    n_attrs = int(max(np.max(pairs[:, 0]), np.max(seen_pairs[:, 0], initial=0), attr.max())) + 1
    n_objs = int(max(np.max(pairs[:, 1]), np.max(seen_pairs[:, 1], initial=0), obj.max())) + 1
    ev = Evaluator(_Dset(pairs, seen_pairs, n_attrs, n_objs, open_world), None)
    allpred = {p: s[:, j] for j, p in enumerate(ev.dset.pairs)}
    results = ev.score_model(allpred, obj, bias=1e3, topk=topk)
    return ev.evaluate_predictions(results, attr, obj, pair, allpred, topk=topk)


KEYS = {"best_seen": "best_seen", "best_unseen": "best_unseen", "best_hm": "best_hm", "auc": "AUC",
        "attr_acc": "closed_attr_match", "obj_acc": "closed_obj_match", "hm_seen": "hm_seen",
        "hm_unseen": "hm_unseen", "biasterm": "biasterm"}


def assert_matches_official(out: dict, ref: dict) -> None:
    for ours, theirs in KEYS.items():
        assert isinstance(out[ours], float), ours
        np.testing.assert_allclose(out[ours], ref[theirs], rtol=0, atol=1e-12, equal_nan=True, err_msg=ours)
    np.testing.assert_array_equal(out["biases"], [*ref["_biaslist"], 1e3])
    np.testing.assert_array_equal(out["seen_curve"], ref["_seen_accuracy"])
    np.testing.assert_array_equal(out["unseen_curve"], ref["_unseen_accuracy"])


def random_case(rng: np.random.Generator, n: int, topk: int, dtype, ties: bool, open_world: bool,
                consistent: bool = True) -> tuple:
    lo = 2 if topk == 1 else 3  # room for topk seen columns and some unseen ones
    n_attrs, n_objs = int(rng.integers(lo, 7)), int(rng.integers(lo, 7))
    grid = np.array([(a, o) for a in range(n_attrs) for o in range(n_objs)])
    p = int(rng.integers(max(topk + 2, 3), len(grid) + 1))
    pairs = grid[rng.permutation(len(grid))[:p]]
    n_seen = int(rng.integers(topk, p))  # at least topk seen columns and one unseen column
    seen = pairs[:n_seen]
    extra = [g for g in grid if not (pairs == g).all(1).any()][:1]  # a seen pair that is no column
    seen_pairs = np.concatenate([seen, np.array(extra).reshape(-1, 2)]) if rng.random() < 0.3 else seen
    pairs = pairs[rng.permutation(p)]
    pair_idx = rng.integers(0, p, n)
    attr, obj = pairs[pair_idx, 0].copy(), pairs[pair_idx, 1].copy()
    if not consistent:  # labels whose (attr, obj) is not pairs[pair_idx]
        attr = rng.integers(0, n_attrs, n)
    scores = rng.integers(0, 4, (n, p)).astype(dtype) if ties else rng.standard_normal((n, p)).astype(dtype)
    feasible = rng.random(p) < 0.7 if open_world and rng.random() < 0.8 else None
    return scores, pairs, seen_pairs, (attr, obj, pair_idx), open_world, feasible, topk


CASES = [(seed, topk, dtype, ties, ow) for seed in range(12) for topk in (1, 3)
         for dtype in (np.float32, np.float64) for ties in (False, True) for ow in (False, True)]


@pytest.mark.parametrize(("seed", "topk", "dtype", "ties", "open_world"), CASES)
def test_random_inputs_match_official(seed, topk, dtype, ties, open_world):
    rng = np.random.default_rng(seed * 7919 + topk)
    n = int(rng.choice([1, 5, 40, 300]))
    case = random_case(rng, n, topk, dtype, ties, open_world, consistent=seed % 4 != 3)
    scores, pairs, seen_pairs, labels, ow, feasible, k = case
    out = evaluate_czsl(scores, pairs, seen_pairs, labels, open_world=ow, feasible=feasible, topk=k)
    assert_matches_official(out, official(*case))


@pytest.mark.parametrize("topk", [1, 3])
def test_large_input_matches_official(topk):
    rng = np.random.default_rng(100 + topk)
    case = random_case(rng, 3000, topk, np.float32, ties=False, open_world=True)
    out = evaluate_czsl(case[0], case[1], case[2], case[3], open_world=True, feasible=case[5], topk=topk)
    assert len(out["biases"]) > 2
    assert_matches_official(out, official(*case))


def test_near_ties_from_float32_bias_follow_the_input_dtype():
    # Unseen scores 0.50001 and 0.50003 become the same float32 after + 1e3 (spacing 6.1e-5 there),
    # so at bias 1e3 float32 ranks them by torch.topk's tie order (column 2 here) and float64 by
    # value (column 3, the label).
    pairs = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
    seen = pairs[:2]
    scores64 = np.array([[0.3, 0.2, 0.50001, 0.50003]] * 4)
    scores64[:, 0] += np.arange(4) * 1e-3
    labels = (np.array([1, 1, 1, 1]), np.array([1, 1, 1, 1]), np.array([3, 3, 3, 3]))
    out64 = evaluate_czsl(scores64, pairs, seen, labels)
    out32 = evaluate_czsl(scores64.astype(np.float32), pairs, seen, labels)
    assert_matches_official(out64, official(scores64, pairs, seen, labels))
    assert_matches_official(out32, official(scores64.astype(np.float32), pairs, seen, labels))
    assert out64["unseen_curve"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0] and out64["obj_acc"] == 1.0
    assert out32["unseen_curve"].tolist() == [0.0] and out32["attr_acc"] == 0.0
    # integer scores are evaluated as float32, the official (model) dtype
    ints = np.array([[3, 1, 2, 2], [1, 3, 2, 2]])
    lab = (np.array([0, 1]), np.array([1, 1]), np.array([2, 3]))
    out_int = evaluate_czsl(ints, pairs, seen, lab)
    assert_matches_official(out_int, official(ints.astype(np.float32), pairs, seen, lab))


# Tiny case worked out by hand. Columns: 0 (0,0) seen, 1 (1,0) seen, 2 (0,1) unseen, 3 (1,1) unseen.
TINY_PAIRS = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
TINY_SEEN = TINY_PAIRS[:2]
TINY_SCORES = np.array([[0.9, 0.1, 0.5, 0.2],   # label column 0 (seen)
                        [0.8, 0.3, 0.6, 0.1],   # label column 2 (unseen)
                        [0.2, 0.7, 0.1, 0.4]])  # label column 3 (unseen)
TINY_LABELS = (np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([0, 2, 3]))


def test_tiny_case_by_hand_top1():
    # Bias 1e3: row 0 -> column 2 (0,1): attr right, obj and pair wrong; rows 1, 2 right.
    #   attr_acc 3/3, obj_acc 2/3, seen 0/1, unseen 2/2.
    # Gaps (best seen - true score) of the unseen hits: 0.8-0.6 = 0.2, 0.7-0.4 = 0.3; minus 1e-4,
    #   sorted, step max(2 // 20, 1) = 1: biases [0.1999, 0.2999].
    # Bias 0.1999: row 0 -> col 0 (hit); row 1: 0.7999 < 0.8 -> col 0 (miss); row 2: 0.5999 < 0.7 (miss).
    #   seen 1, unseen 0.  Bias 0.2999: row 0 hit; row 1: 0.8999 > 0.8 (hit); row 2: 0.6999 < 0.7 (miss).
    #   seen 1, unseen 1/2.  Curves: seen [1, 1, 0], unseen [0, .5, 1].
    # AUC = trapz(seen, x=unseen) = .5 * (1 + 1) / 2 + .5 * (1 + 0) / 2 = 0.75.
    # HM [0, 2/3, 0] -> best 2/3 at point 1: hm_seen 1, hm_unseen .5, biasterm 0.2999.
    for dtype in (np.float64, np.float32):
        out = evaluate_czsl(TINY_SCORES.astype(dtype), TINY_PAIRS, TINY_SEEN, TINY_LABELS)
        tol = 1e-6
        assert out["attr_acc"] == 1.0 and out["obj_acc"] == pytest.approx(2 / 3, abs=tol)
        np.testing.assert_allclose(out["biases"], [0.1999, 0.2999, 1e3], atol=tol)
        np.testing.assert_array_equal(out["seen_curve"], [1, 1, 0])
        np.testing.assert_array_equal(out["unseen_curve"], [0, 0.5, 1])
        assert out["auc"] == 0.75
        assert out["best_hm"] == pytest.approx(2 / 3, abs=tol)
        assert (out["hm_seen"], out["hm_unseen"]) == (1.0, 0.5)
        assert out["biasterm"] == pytest.approx(0.2999, abs=tol)
        assert (out["best_seen"], out["best_unseen"]) == (1.0, 1.0)
        assert_matches_official(out, official(TINY_SCORES.astype(dtype), TINY_PAIRS, TINY_SEEN, TINY_LABELS))


def test_tiny_case_by_hand_top2():
    # Bias 1e3: the two unseen columns are everyone's top 2: row 0 misses (attrs 0,1 / objs 1,1:
    #   attr right, obj wrong), rows 1, 2 hit -> attr_acc 1, obj_acc 2/3, seen 0, unseen 1.
    # Gaps use the 2nd best seen score: row 1: 0.3 - 0.6 = -0.3, row 2: 0.2 - 0.4 = -0.2 -> biases
    #   [-0.3001, -0.2001].  Bias -0.3001: row 0 top 2 {0, 2} hit; row 1 {0, 1} miss; row 2 {1, 0}
    #   miss -> (1, 0).  Bias -0.2001: row 1 {0, 2} hit; row 2 {1, 0} (0.2 > 0.1999) miss -> (1, .5).
    # Same curves as top 1: AUC .75, best HM 2/3 at bias -0.2001.
    out = evaluate_czsl(TINY_SCORES, TINY_PAIRS, TINY_SEEN, TINY_LABELS, topk=2)
    np.testing.assert_allclose(out["biases"], [-0.3001, -0.2001, 1e3], atol=1e-9)
    np.testing.assert_array_equal(out["seen_curve"], [1, 1, 0])
    np.testing.assert_array_equal(out["unseen_curve"], [0, 0.5, 1])
    assert (out["auc"], out["attr_acc"]) == (0.75, 1.0)
    assert out["obj_acc"] == pytest.approx(2 / 3, abs=1e-7)
    assert out["biasterm"] == pytest.approx(-0.2001, abs=1e-9)
    assert_matches_official(out, official(TINY_SCORES, TINY_PAIRS, TINY_SEEN, TINY_LABELS, topk=2))


NAN_IF_NO_SEEN = {"best_seen", "best_hm", "hm_seen"}
NAN_IF_NO_UNSEEN = {"best_unseen", "best_hm", "hm_unseen"}


def test_no_unseen_test_samples():
    labels = (np.array([0, 1, 0]), np.array([0, 0, 0]), np.array([0, 1, 0]))
    out = evaluate_czsl(TINY_SCORES, TINY_PAIRS, TINY_SEEN, labels)
    assert_matches_official(out, official(TINY_SCORES, TINY_PAIRS, TINY_SEEN, labels))
    assert {k for k in KEYS if math.isnan(out[k])} == NAN_IF_NO_UNSEEN
    # one point only (bias 1e3, where the unseen columns win every row): AUC 0.0 from trapz
    assert out["auc"] == 0.0 and out["biasterm"] == 1e3 and out["best_seen"] == 0.0
    assert out["biases"].tolist() == [1e3] and np.isnan(out["unseen_curve"]).all()


def test_no_seen_test_samples():
    labels = (np.array([0, 0, 1]), np.array([1, 1, 1]), np.array([2, 2, 3]))
    out = evaluate_czsl(TINY_SCORES, TINY_PAIRS, TINY_SEEN, labels)
    assert_matches_official(out, official(TINY_SCORES, TINY_PAIRS, TINY_SEEN, labels))
    assert {k for k in KEYS if math.isnan(out[k])} == NAN_IF_NO_SEEN | {"auc"}
    assert np.isnan(out["seen_curve"]).all() and len(out["biases"]) == 4
    # the first point is the arg-max of an all-NaN HM
    assert out["biasterm"] == out["biases"][0] and out["hm_unseen"] == out["unseen_curve"][0]
    # no unseen hit at bias 1e3 -> a single point -> AUC 0.0 although the seen side is NaN
    labels = (np.array([1, 1, 1]), np.array([1, 1, 1]), np.array([3, 3, 3]))
    scores = np.array([[0.0, 0.0, 5.0, 1.0]] * 3)
    out = evaluate_czsl(scores, TINY_PAIRS, TINY_SEEN, labels)
    assert_matches_official(out, official(scores, TINY_PAIRS, TINY_SEEN, labels))
    assert out["auc"] == 0.0 and out["biasterm"] == 1e3 and out["unseen_curve"].tolist() == [0.0]
    assert {k for k in KEYS if math.isnan(out[k])} == NAN_IF_NO_SEEN


def test_all_predictions_correct_without_bias():
    # True column 1, others 0. Every unseen hit has gap 0 - 1, so all biases are -1.0001: there
    # each unseen true score (-0.0001) loses to the seen zeros -> (seen 1, unseen 0); bias 1e3 gives
    # (0, 1). HM is 0 everywhere, so best_hm 0 at the first point; AUC is the last segment, 0.5.
    pairs = np.array([[a, o] for a in range(3) for o in range(3)])
    seen = pairs[:5]
    idx = np.arange(30) % 9
    scores = np.eye(9)[idx]
    out = evaluate_czsl(scores, pairs, seen, (pairs[idx, 0], pairs[idx, 1], idx))
    assert_matches_official(out, official(scores, pairs, seen, (pairs[idx, 0], pairs[idx, 1], idx)))
    assert out["seen_curve"][:-1].tolist() == [1.0] * (len(out["biases"]) - 1)
    assert out["unseen_curve"].tolist() == [0.0] * (len(out["biases"]) - 1) + [1.0]
    assert out["auc"] == 0.5 and out["best_hm"] == 0.0
    assert out["biasterm"] == pytest.approx(-1.0001) and (out["hm_seen"], out["hm_unseen"]) == (1.0, 0.0)
    # accuracies of the bias-1e3 predictions: the seen rows predict an unseen pair
    assert out["attr_acc"] < 1.0 and out["obj_acc"] < 1.0


@pytest.mark.parametrize("row", [0, 1])
def test_single_sample(row):
    labels = tuple(x[row:row + 1] for x in TINY_LABELS)
    out = evaluate_czsl(TINY_SCORES[row:row + 1], TINY_PAIRS, TINY_SEEN, labels)
    assert_matches_official(out, official(TINY_SCORES[row:row + 1], TINY_PAIRS, TINY_SEEN, labels))
    if row == 0:  # seen sample: predicted (0,1) at bias 1e3
        assert out["best_seen"] == 0.0 and math.isnan(out["best_unseen"]) and out["attr_acc"] == 1.0
    else:  # unseen hit: one bias 0.1999 where it misses, then bias 1e3 where it hits
        assert out["unseen_curve"].tolist() == [0.0, 1.0] and math.isnan(out["auc"])


def test_open_world_feasibility():
    rng = np.random.default_rng(5)
    scores, pairs, seen_pairs, labels, _, _, _ = random_case(rng, 200, 1, np.float32, False, True)
    p = len(pairs)
    closed = evaluate_czsl(scores, pairs, seen_pairs, labels)
    # open world without a mask, or with everything feasible, is the closed world; closed ignores feasible
    for out in (evaluate_czsl(scores, pairs, seen_pairs, labels, open_world=True),
                evaluate_czsl(scores, pairs, seen_pairs, labels, open_world=True, feasible=np.ones(p, bool)),
                evaluate_czsl(scores, pairs, seen_pairs, labels, feasible=np.zeros(p, bool))):
        for k in closed:
            np.testing.assert_array_equal(out[k], closed[k])
    # infeasible columns: the best scores of the rows, yet never predicted; equal to dropping them
    feasible = np.ones(p, bool)
    feasible[[0, p - 1]] = False
    boosted = scores.copy()
    boosted[:, ~feasible] = 50.0
    keep = feasible[labels[2]]
    lab = tuple(x[keep] for x in labels)
    inputs = boosted[keep]
    out = evaluate_czsl(inputs, pairs, seen_pairs, lab, open_world=True, feasible=feasible)
    assert (inputs[:, ~feasible] == 50.0).all()  # the caller's array is not written to
    remap = np.cumsum(feasible) - 1
    dropped = evaluate_czsl(scores[keep][:, feasible], pairs[feasible], seen_pairs,
                            (lab[0], lab[1], remap[lab[2]]))
    for k in dropped:
        np.testing.assert_array_equal(out[k], dropped[k], err_msg=k)
    assert_matches_official(out, official(boosted[keep], pairs, seen_pairs, lab, True, feasible))


def _bad(**change):
    args = dict(scores=TINY_SCORES, pairs=TINY_PAIRS, seen_pairs=TINY_SEEN, labels=TINY_LABELS)
    kw = {k: change.pop(k) for k in ("open_world", "feasible", "topk") if k in change}
    args.update(change)
    return lambda: evaluate_czsl(args["scores"], args["pairs"], args["seen_pairs"], args["labels"], **kw)


@pytest.mark.parametrize(("call", "message"), [
    (_bad(scores=TINY_SCORES[:, :3]), "pairs"),
    (_bad(pairs=TINY_PAIRS[:3]), "pairs"),
    (_bad(scores=TINY_SCORES[0]), "scores"),
    (_bad(scores=np.zeros((0, 4))), "scores"),
    (_bad(scores=np.where(TINY_SCORES > 0.8, np.nan, TINY_SCORES)), "NaN"),
    (_bad(labels=(TINY_LABELS[0][:2], TINY_LABELS[1], TINY_LABELS[2])), "N = 3"),
    (_bad(labels=(TINY_LABELS[0], TINY_LABELS[1], TINY_LABELS[2][:2])), "N = 3"),
    (_bad(labels=TINY_LABELS[:2]), "labels"),
    (_bad(labels=(TINY_LABELS[0], TINY_LABELS[1], np.array([0, 2, 4]))), "pair_idx"),
    (_bad(labels=(TINY_LABELS[0], TINY_LABELS[1], np.array([0, -1, 3]))), "pair_idx"),
    (_bad(labels=(TINY_LABELS[0], TINY_LABELS[1], np.array([0.0, 2.0, 3.0]))), "pair_idx"),
    (_bad(seen_pairs=np.array([0, 0])), "seen_pairs"),
    (_bad(open_world=True, feasible=np.ones(3, bool)), "feasible"),
    (_bad(feasible=np.ones(5, bool)), "feasible"),
    (_bad(open_world=True, feasible=np.full(4, 0.5)), "feasible"),
    (_bad(topk=0), "topk"),
    (_bad(topk=5), "topk"),
    (_bad(topk=3), "seen columns"),
    (_bad(seen_pairs=np.zeros((0, 2), int)), "seen columns"),
])
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert isinstance(info.value, CurateError)


def test_accepts_lists_and_tensors():
    ref = evaluate_czsl(TINY_SCORES, TINY_PAIRS, TINY_SEEN, TINY_LABELS)
    out = evaluate_czsl(torch.from_numpy(TINY_SCORES), TINY_PAIRS.tolist(), [tuple(p) for p in TINY_SEEN],
                        tuple(torch.from_numpy(x) for x in TINY_LABELS))
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])


def test_import_is_cheap():
    code = "import sys, training.metrics.czsl; assert 'torch' not in sys.modules and 'scipy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
