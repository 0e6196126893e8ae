"""pea_kd.metrics against hand-worked examples and, where installed, scipy / scikit-learn."""
import math

import numpy as np
import pytest

from pea_kd.glue import TASKS
from pea_kd.metrics import (METRICS, accuracy, compute_metrics, corr, f1_score, matthews_corrcoef, pearson,
                            rankdata, spearman)

# Shared binary example:        index  0  1  2  3  4  5
PRED = np.array([1, 1, 0, 1, 0, 0])
GOLD = np.array([1, 0, 0, 1, 1, 0])
# TP = 2 (0, 3), FP = 1 (1), FN = 1 (4), TN = 2 (2, 5)


def test_accuracy_by_hand():
    assert accuracy(PRED, GOLD) == pytest.approx(4 / 6)  # correct at 0, 2, 3, 5


def test_f1_by_hand():
    # F1 = 2TP / (2TP + FP + FN) = 4 / (4 + 1 + 1) = 2/3  (P = R = 2/3)
    assert f1_score(PRED, GOLD) == pytest.approx(2 / 3)
    # positive class 0: TP = 2 (2, 5), FP = 1 (4), FN = 1 (1) -> also 4/6
    assert f1_score(PRED, GOLD, positive=0) == pytest.approx(2 / 3)
    # preds [1, 1, 1, 0], gold [1, 0, 0, 0]: TP = 1, FP = 2, FN = 0 -> 2 / (2 + 2) = 0.5
    assert f1_score([1, 1, 1, 0], [1, 0, 0, 0]) == pytest.approx(0.5)


def test_mcc_by_hand():
    # (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2*2 - 1*1) / sqrt(3*3*3*3) = 3/9
    assert matthews_corrcoef(PRED, GOLD) == pytest.approx(1 / 3)
    assert matthews_corrcoef(GOLD, GOLD) == pytest.approx(1.0)
    assert matthews_corrcoef(1 - GOLD, GOLD) == pytest.approx(-1.0)
    # 3 classes, K-class form: N = 4, c = 3 (positions 0, 1, 3), t = (1, 1, 2), p = (2, 1, 1)
    # (c N - t.p) / sqrt((N^2 - p.p)(N^2 - t.t)) = (12 - (2 + 1 + 2)) / sqrt((16 - 6)(16 - 6)) = 7/10
    assert matthews_corrcoef([0, 1, 0, 2], [0, 1, 2, 2]) == pytest.approx(0.7)


def test_pearson_by_hand():
    # x - mean = [-1, 0, 1]; y = [1, 2, 5], y - 8/3 = [-5/3, -2/3, 7/3]
    # sum xy = 5/3 + 7/3 = 4; sum x^2 = 2; sum y^2 = (25 + 4 + 49) / 9 = 78/9  ->  r = 4 / sqrt(156/9) = 12 / sqrt(156)
    assert pearson([1, 2, 3], [1, 2, 5]) == pytest.approx(12 / math.sqrt(156))
    assert pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)


def test_rankdata_averages_ties():
    assert rankdata([3, 1, 4, 1, 5]).tolist() == [3.0, 1.5, 4.0, 1.5, 5.0]  # the two 1s share ranks 1 and 2
    assert rankdata([2.0, 2.0, 2.0]).tolist() == [2.0, 2.0, 2.0]  # mean of ranks 1, 2, 3
    assert rankdata([0.5, -1.0, 0.5, 0.5, 7.0]).tolist() == [3.0, 1.0, 3.0, 3.0, 5.0]


def test_spearman_with_ties_by_hand():
    # ranks x = [1, 2.5, 2.5, 4], ranks y = [1, 2, 3, 4]; centred: [-1.5, 0, 0, 1.5] and [-1.5, -.5, .5, 1.5]
    # sum xy = 2.25 + 2.25 = 4.5; sum x^2 = 4.5; sum y^2 = 5  ->  rho = 4.5 / sqrt(22.5) = 3 / sqrt(10)
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 10, 100, 1000], [2, 3, 4, 5]) == pytest.approx(1.0)  # monotone, not linear


def test_degenerate_inputs_are_defined_not_nan():
    gold = [0, 1, 1, 0]
    assert matthews_corrcoef([1, 1, 1, 1], gold) == 0.0  # all predictions one class
    assert matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0  # all labels one class
    assert f1_score([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # no true and no predicted positive
    assert f1_score([0, 0, 0, 0], gold) == 0.0  # no predicted positive: TP = 0
    assert pearson([2.5, 2.5, 2.5], [0.0, 1.0, 5.0]) == 0.0
    assert spearman([2.5, 2.5, 2.5], [0.0, 1.0, 5.0]) == 0.0
    assert pearson([1.0], [3.0]) == 0.0
    # a constant whose mean is not exactly itself in floating point (STS-B's mean training score, 1500 times)
    constant = np.full(1500, 2.7009990253653497)
    assert np.mean(constant) != constant[0]
    assert pearson(constant, np.linspace(0, 5, 1500)) == 0.0 and corr(constant, np.linspace(0, 5, 1500)) == 0.0


def test_compute_metrics_keys_per_task():
    assert compute_metrics("mrpc", PRED, GOLD) == pytest.approx(
        {"acc": 4 / 6, "f1": 2 / 3, "acc_and_f1": 2 / 3})
    assert compute_metrics("CoLA", PRED, GOLD) == pytest.approx({"mcc": 1 / 3})
    assert compute_metrics("rte", PRED, GOLD) == pytest.approx({"acc": 4 / 6})
    assert compute_metrics("mnli-mm", [0, 1, 2, 2], [0, 1, 2, 1]) == pytest.approx({"acc": 0.75})
    result = compute_metrics("sts-b", [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert set(result) == {"pearson", "spearman", "corr"}
    assert result["corr"] == pytest.approx((result["pearson"] + result["spearman"]) / 2)
    assert result["spearman"] == pytest.approx(3 / math.sqrt(10))
    assert all(type(v) is float for v in result.values())


def test_every_task_metric_is_implemented():
    for spec in TASKS.values():
        assert set(spec.metrics) <= set(METRICS), spec.name


@pytest.mark.parametrize("task,predictions,labels,message", [
    ("mrpc", [1, 0, 1], [1, 0], r"differ in length: 3 vs 2"),
    ("mrpc", [], [], r"empty"),
    ("mrpc", [[0.1, 0.9], [0.8, 0.2]], [1, 0], r"predictions must be a 1-D array, got shape \(2, 2\)"),
    ("mrpc", [1.0, 0.0], [1, 0], r"MRPC: predictions must be integer class ids, got dtype float64.*argmax"),
    ("mrpc", [1, 2], [1, 0], r"MRPC: predictions must be class ids in 0\.\.1, got values from 1 to 2"),
    ("mnli", [0, 1], [0, -1], r"MNLI: labels must be class ids in 0\.\.2"),
    ("stsb", [1.0, float("nan")], [1.0, 2.0], r"STS-B: predictions must be finite numbers"),
    ("stsb", [1.0, 2.0], ["a", "b"], r"STS-B: labels must be finite numbers"),
    ("nope", [1], [1], r"unknown GLUE task 'nope'"),
])
def test_compute_metrics_rejects_bad_input(task, predictions, labels, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(task, predictions, labels)


def test_single_metric_rejects_length_mismatch():
    with pytest.raises(ValueError, match=r"differ in length: 2 vs 3"):
        spearman([1.0, 2.0], [1.0, 2.0, 3.0])


# ---------------------------------------------------------------- independent implementations (optional)

def _random_cases(seed=0):
    rng = np.random.default_rng(seed)
    for n in (5, 37, 500):
        yield rng.integers(0, 2, n), rng.integers(0, 2, n)


def test_against_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    for pred, gold in _random_cases():
        assert accuracy(pred, gold) == pytest.approx(sklearn_metrics.accuracy_score(gold, pred))
        assert f1_score(pred, gold) == pytest.approx(sklearn_metrics.f1_score(gold, pred))
        assert matthews_corrcoef(pred, gold) == pytest.approx(sklearn_metrics.matthews_corrcoef(gold, pred))
    rng = np.random.default_rng(1)
    pred, gold = rng.integers(0, 3, 200), rng.integers(0, 3, 200)  # 3 classes, as in MNLI
    assert matthews_corrcoef(pred, gold) == pytest.approx(sklearn_metrics.matthews_corrcoef(gold, pred))


def test_against_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    for n in (4, 50, 1500):
        gold = rng.integers(0, 26, n) / 5.0  # STS-B-like scores on a 0.2 grid: many ties
        pred = np.round(gold + rng.normal(0, 1, n), 1)
        np.testing.assert_allclose(rankdata(pred), stats.rankdata(pred))
        assert pearson(pred, gold) == pytest.approx(stats.pearsonr(pred, gold)[0])
        assert spearman(pred, gold) == pytest.approx(stats.spearmanr(pred, gold)[0])
