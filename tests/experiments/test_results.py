"""The suite statistics against scikit-learn: Table 1's metrics, the pooled session-bootstrap
intervals and the paired AUC test."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import scored_sessions
from sklearn import metrics as skm

from jaxcerv.experiments import results, suites


def _row(name, labels, probs, sessions, threshold=0.5):
    return results.Row(
        variant=suites.Variant(name, name), folds=[], ids=np.array([f"i{k}" for k in
                                                                        range(len(labels))]),
        labels=labels, probs=probs, decisions=(probs >= threshold).astype(int), sessions=sessions,
        weights=None)


def test_decision_metrics_match_scikit_learn():
    y, p, _ = scored_sessions()
    d = (p >= 0.4).astype(int)
    got = results.decision_metrics(y, p, d)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, d))
    assert got["f1"] == pytest.approx(skm.f1_score(y, d))
    assert got["precision"] == pytest.approx(skm.precision_score(y, d))
    assert got["recall"] == pytest.approx(skm.recall_score(y, d))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    fpr, tpr, _ = skm.roc_curve(y, p)
    k = np.argmin(np.abs(fpr - (1 - tpr)))
    assert got["one_minus_eer"] == pytest.approx(1 - (fpr[k] + 1 - tpr[k]) / 2, abs=0.02)


def test_paired_auc_test_finds_a_real_difference_and_not_a_null_one():
    y, good, s = scored_sessions(quality=3.0)
    _, bad, _ = scored_sessions(seed=1, quality=0.0)
    ref = _row("ref", y, good, s)
    worse = results.paired_auc_test(ref, _row("worse", y, bad, s), n_boot=300)
    expected = skm.roc_auc_score(y, bad) - skm.roc_auc_score(y, good)
    assert worse["delta_auc"] == pytest.approx(expected)
    assert worse["p_value"] < 0.01 and worse["ci95"][1] < 0
    # A row scored by a monotone transform of the reference ranks identically: difference 0.
    same = results.paired_auc_test(ref, _row("same", y, good ** 3, s), n_boot=100)
    assert same["delta_auc"] == 0.0 and same["p_value"] == 1.0


def _shuffled(row, perm):
    """The same images in another id order (each fold's predictions pool in the order its
    test split lists them, so two rows rarely agree on the order)."""
    return results.Row(
        variant=row.variant, folds=[], ids=row.ids[perm], labels=row.labels[perm],
        probs=row.probs[perm], decisions=row.decisions[perm], sessions=row.sessions[perm],
        weights=None)


def test_paired_auc_test_pairs_images_by_id_not_by_position():
    """Two runs of the same images in different orders: the test must pair image with image.
    Paired by position, the shuffled copy of the reference would differ from it (its AUC
    against the reference's labels is about 0.5)."""
    y, good, s = scored_sessions(quality=3.0)
    _, bad, _ = scored_sessions(seed=1, quality=0.0)
    ref = _row("ref", y, good, s)
    perm = np.random.default_rng(7).permutation(len(y))
    same = results.paired_auc_test(ref, _shuffled(_row("same", y, good ** 3, s), perm),
                                   n_boot=100)
    assert same["delta_auc"] == 0.0 and same["p_value"] == 1.0 and same["ci95"] == (0.0, 0.0)
    in_order = results.paired_auc_test(ref, _row("worse", y, bad, s), n_boot=200)
    shuffled = results.paired_auc_test(ref, _shuffled(_row("worse", y, bad, s), perm),
                                       n_boot=200)
    assert shuffled == in_order  # the bootstrap too: the same sessions drawn, image by image
    assert shuffled["delta_auc"] == pytest.approx(skm.roc_auc_score(y, bad) -
                                                  skm.roc_auc_score(y, good))
    # Only the images both rows predicted count: drop a third of the row's, shuffled.
    keep = perm[: 2 * len(y) // 3]
    part = results.paired_auc_test(ref, _shuffled(_row("worse", y, bad, s), keep), 100)
    assert part["n_images"] == len(keep)
    assert part["delta_auc"] == pytest.approx(skm.roc_auc_score(y[keep], bad[keep]) -
                                              skm.roc_auc_score(y[keep], good[keep]))


def test_pooled_ci_resamples_whole_sessions():
    """Two sessions, each all one class: every resample that keeps both classes is the data
    itself (or a duplicate of it), so the interval collapses to the pooled value."""
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    row = _row("r", y, p, np.array(["a", "a", "b", "b"]))
    ci = results.pooled_ci(row, n_boot=50)
    value = results.decision_metrics(y, p, row.decisions)
    for k, _ in results.METRICS:
        assert ci[k] == pytest.approx((value[k], value[k]))
