"""Metrics against numpy and scipy."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from bert_jax import metrics


def test_accuracy_matches_numpy():
    rng = np.random.default_rng(0)
    pred, gold = rng.integers(0, 5, 1000), rng.integers(0, 5, 1000)
    assert metrics.accuracy(pred, gold) == pytest.approx(np.mean(pred == gold))
    assert metrics.accuracy([1, 2, 3], [1, 2, 3]) == 1.0
    assert metrics.accuracy(np.array([[0], [1]]), [1, 1]) == 0.5
    assert isinstance(metrics.accuracy([0], [0]), float)
    with pytest.raises(ValueError):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        metrics.accuracy([], [])


def test_pearson_matches_scipy():
    rng = np.random.default_rng(1)
    gold = rng.uniform(0, 5, 863).astype(np.float32)
    for noise in (0.1, 1.0, 10.0):
        pred = gold + rng.normal(0, noise, gold.shape).astype(np.float32)
        assert metrics.pearson(pred, gold) == pytest.approx(stats.pearsonr(pred, gold)[0],
                                                             abs=1e-6)
    assert metrics.pearson(gold, gold) == pytest.approx(1.0)
    assert metrics.pearson(-gold, gold) == pytest.approx(-1.0)
    assert isinstance(metrics.pearson(gold, gold), float)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)), min_size=3, max_size=40))
def test_pearson_property(pairs):
    x, y = map(np.asarray, zip(*pairs))
    r = metrics.pearson(x, y)
    assert -1.0 <= r <= 1.0
    if np.all(x == x[0]) or np.all(y == y[0]):
        assert r == 0.0
    elif np.std(x) > 1e-3 * np.abs(x).max() and np.std(y) > 1e-3 * np.abs(y).max():
        assert r == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-6)


def test_pearson_constant_is_zero_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
        assert metrics.pearson([1.0, 2.0, 3.0], [0.1, 0.1, 0.1]) == 0.0
        assert metrics.pearson(np.full(7, 0.1), np.arange(7)) == 0.0
    assert np.isnan(metrics.pearson([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        metrics.pearson([1.0], [1.0])


def test_overall_score():
    assert metrics.overall_score(0.5, 0.8, 0.6) == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert metrics.overall_score(1.0, 1.0, 1.0) == pytest.approx(1.0)
    assert metrics.overall_score(0.0, 0.0, -1.0) == pytest.approx(0.0)


def test_dev_scores():
    gold = {"sst": [1, 2, 0], "para": [1, 0], "sts": np.array([0.0, 1.0, 2.0, 4.0])}
    preds = {"sst": [1, 2, 3], "para": [1, 0], "sts": np.array([1.0, 0.0, 5.0, 3.0])}
    s = metrics.dev_scores(preds, gold)
    r = stats.pearsonr(preds["sts"], gold["sts"])[0]
    assert s["sst_acc"] == pytest.approx(2 / 3) and s["para_acc"] == 1.0
    assert s["sts_r"] == pytest.approx(r)
    assert s["overall"] == pytest.approx((2 / 3 + 1.0 + (r + 1) / 2) / 3)
    assert all(type(v) is float for v in s.values())
    assert set(metrics.dev_scores({"sst": [1]}, {"sst": [1]})) == {"sst_acc"}
