"""GLUE evaluation metrics, written out in numpy.

Each task's `TaskSpec.metrics` names the keys that `compute_metrics` returns (see `pea_kd.glue`):

    CoLA            mcc                       Matthews correlation
    SST-2, QNLI,    acc                       accuracy
    RTE, WNLI, MNLI                           (MNLI: call once for dev_matched and once for dev_mismatched)
    MRPC, QQP       acc, f1, acc_and_f1       F1 of the positive class 1 ("paraphrase"/"duplicate"); mean of both
    STS-B           pearson, spearman, corr   correlations of predicted and gold scores; mean of both

Degenerate inputs give a defined number instead of NaN, so that a collapsed model early in training still yields a
comparable score: F1 is 0.0 when there is no true and no predicted positive; MCC is 0.0 when predictions or labels are
all one class; Pearson and Spearman are 0.0 when either side is constant. (scikit-learn and scipy return 0.0/0.0 and NaN
with a warning for these cases.)
"""

from __future__ import annotations

import numpy as np

from pea_kd.glue import TaskSpec, get_task
from pea_kd.input_checks import as_pair, check_task_inputs  # 1-D, equal lengths, the task's kind of values


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to the label."""
    p, y = as_pair(predictions, labels)
    return float(np.mean(p == y))


def f1_score(predictions, labels, positive: int = 1) -> float:
    """F1 of the `positive` class.

    F1 = 2PR / (P + R) with P = TP / (TP + FP), R = TP / (TP + FN), which simplifies to F1 = 2TP / (2TP + FP + FN).
    Defined as 0.0 when TP + FP + FN = 0 (no true and no predicted positive).
    """
    p, y = as_pair(predictions, labels)
    tp = np.sum((p == positive) & (y == positive))
    fp = np.sum((p == positive) & (y != positive))
    fn = np.sum((p != positive) & (y == positive))
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator > 0 else 0.0


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation coefficient (Gorodkin's K-class form; CoLA uses K = 2).

    With N examples, c correct predictions, t_k = #labels of class k and p_k = #predictions of class k:
        MCC = (c N - sum_k t_k p_k) / sqrt((N^2 - sum_k p_k^2) (N^2 - sum_k t_k^2)).
    For two classes this is the familiar (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    Defined as 0.0 when the denominator is 0, i.e. when all predictions or all labels are one class.
    """
    p, y = as_pair(predictions, labels)
    classes = np.union1d(p, y)
    t = np.array([np.sum(y == k) for k in classes], dtype=np.float64)
    q = np.array([np.sum(p == k) for k in classes], dtype=np.float64)
    n, correct = float(len(y)), float(np.sum(p == y))
    denominator = np.sqrt((n * n - q @ q) * (n * n - t @ t))
    return float((correct * n - t @ q) / denominator) if denominator > 0 else 0.0


def pearson(predictions, labels) -> float:
    """Pearson correlation r = sum (x - mean x)(y - mean y) / sqrt(sum (x - mean x)^2 sum (y - mean y)^2).

    Defined as 0.0 when either side is constant (zero variance).
    """
    x, y = as_pair(predictions, labels)
    if np.all(x == x[0]) or np.all(y == y[0]):  # constant: exactly 0 (x - mean(x) need not round to 0)
        return 0.0
    x = x.astype(np.float64) - np.mean(x, dtype=np.float64)
    y = y.astype(np.float64) - np.mean(y, dtype=np.float64)
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.clip(np.sum(x * y) / denominator, -1.0, 1.0)) if denominator > 0 else 0.0


def rankdata(values) -> np.ndarray:
    """1-based ranks of `values`; tied values all get the mean of the ranks they span: [3, 1, 1] -> [3, 1.5, 1.5]."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first position of each run of equal values
    ends = np.r_[starts[1:], len(values)]  # one past the last position of each run
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)  # mean of the 1-based ranks starts+1 .. ends
    return ranks


def spearman(predictions, labels) -> float:
    """Spearman's rank correlation: Pearson correlation of the ranks (ties get average ranks). 0.0 if constant."""
    x, y = as_pair(predictions, labels)
    return pearson(rankdata(x), rankdata(y))


def acc_and_f1(predictions, labels) -> float:
    """(accuracy + F1) / 2, as reported for MRPC and QQP."""
    return (accuracy(predictions, labels) + f1_score(predictions, labels)) / 2


def corr(predictions, labels) -> float:
    """(Pearson + Spearman) / 2, as reported for STS-B."""
    return (pearson(predictions, labels) + spearman(predictions, labels)) / 2


METRICS = {"acc": accuracy, "f1": f1_score, "acc_and_f1": acc_and_f1, "mcc": matthews_corrcoef,
           "pearson": pearson, "spearman": spearman, "corr": corr}


def compute_metrics(task: str | TaskSpec, predictions, labels) -> dict[str, float]:
    """All metrics of `task` (its spec.metrics) for 1-D predictions against gold labels.

    predictions: integer class ids (argmax of the logits) for classification tasks, float scores for STS-B.
    Raises ValueError for mismatched lengths, empty or non-1-D inputs, float class ids or out-of-range classes.
    """
    spec = get_task(task)
    p, y = as_pair(predictions, labels)
    check_task_inputs(spec, p, y)  # class ids in range, or finite scores
    return {name: METRICS[name](p, y) for name in spec.metrics}
