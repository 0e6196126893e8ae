"""PTP, Pretraining with Teacher's Predictions (Pea-KD, Cho & Kang): labels and the hand-off to KD.

Before distillation the student is trained to predict *how* the fine-tuned teacher does on each training example.
With z_t the teacher's logits for an example, y its gold label and

    c     = max_j softmax(z_t)_j          the teacher's confidence (temperature 1)
    y_hat = argmax_j z_t_j                the teacher's prediction (ties -> the first index, as torch.argmax)

every example gets one of 4 PTP classes, the same 4 for every task (binary or 3-way alike):

    0  confidently correct     y_hat == y  and  c >  t1
    1  unconfidently correct   y_hat == y  and  c <= t1
    2  confidently wrong       y_hat != y  and  c >  t2
    3  unconfidently wrong     y_hat != y  and  c <= t2

(exactly the authors' inequalities: a confidence equal to the threshold is "unconfident"). The defaults are the
medians the authors' README defines, t1 = median{c : correct}, t2 = median{c : wrong} (their code hard-codes
`AUTHORS_THRESHOLDS` instead: docs/method.md#thresholds), the *true* median: the mean of the two middle values for an
even count (torch.median would return the lower one). For an odd count the median example has c == t: "unconfident".

The teacher was fine-tuned on the very training set it labels, so it is rarely wrong there: classes 2 and 3 are
small (often a few percent or less), and there is no rebalancing, as in the authors' code. If the teacher makes no
wrong prediction at all, t2 has no median; it is then set to 1.0 (c <= 1 always, so nothing can be "confidently
wrong"), classes 2-3 are empty and a warning is logged (likewise t1 = 1.0 if nothing is correct).
To label the dev set for validation, reuse the training thresholds: `build_ptp_labels(dev_z, dev_y, res.t1, res.t2)`.

PTP is defined for classification only: STS-B (regression, one output column, float labels) is refused.

Hand-off: the PTP stage trains the student (same SPS variant) with a 4-way head by cross-entropy on these labels and
saves it with `save_student`; the KD stage starts from its embeddings, layers and pooler bit for bit and discards the
PTP head (`kd_student_from_ptp`). The PTP *training* stage itself is pea_kd.ptp_stage.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch

from .input_checks import check_ptp_inputs, check_threshold
from .ptp_report import format_histogram, tensor_differences  # noqa: F401  (notebook 06 imports both from here)
from .students import build_student, load_student

logger = logging.getLogger(__name__)

PTP_CLASSES = ("confidently correct", "unconfidently correct", "confidently wrong", "unconfidently wrong")
NUM_PTP_CLASSES = len(PTP_CLASSES)
# (t1, t2) hard-coded in the authors' code (C2/C3) for a bert-base-uncased teacher; GLUE task names as in pea_kd.glue.
AUTHORS_THRESHOLDS: dict[str, tuple[float, float]] = {
    "MRPC": (0.95, 0.75),
    "RTE": (0.80, 0.60),
    "SST-2": (0.98, 0.80),
    "QNLI": (0.98, 0.70),
    "CoLA": (0.95, 0.70),
}


def authors_thresholds(task: str) -> tuple[float, float]:
    """The authors' (t1, t2) for a GLUE task name (any spelling `pea_kd.glue.get_task` accepts)."""
    from .glue import get_task

    name = get_task(task).name
    if name not in AUTHORS_THRESHOLDS:
        raise ValueError(f"the authors give no PTP thresholds for {name}; known: {', '.join(AUTHORS_THRESHOLDS)}")
    return AUTHORS_THRESHOLDS[name]


@dataclass
class PTPLabels:
    """The result of `build_ptp_labels`: one PTP class per example and the numbers behind it."""

    labels: torch.Tensor  # (N,) int64 in {0, 1, 2, 3}, index into PTP_CLASSES
    t1: float  # threshold for correct predictions
    t2: float  # threshold for wrong predictions
    histogram: dict[str, int]  # PTP class name -> count, all 4 classes in order
    num_correct: int
    num_wrong: int
    confidence: Optional[torch.Tensor] = None  # (N,) float64, c = max softmax(z_t)


def true_median(values: torch.Tensor) -> float:
    """Median of a non-empty 1-D tensor: the middle value, or the mean of the two middle values for an even count."""
    v = torch.sort(values.flatten().double()).values
    n = v.numel()
    if n == 0:
        raise ValueError("true_median: empty tensor")
    return float(v[n // 2]) if n % 2 else float((v[n // 2 - 1] + v[n // 2]) / 2)


def build_ptp_labels(teacher_logits, labels, t1: Optional[float] = None, t2: Optional[float] = None) -> PTPLabels:
    """PTP classes from the teacher's logits (N, C) and the gold labels (N,); thresholds default to the medians."""
    z = torch.as_tensor(teacher_logits)
    y = torch.as_tensor(labels)
    check_ptp_inputs(z, y)  # classification only: finite (N, C) logits, N class ids
    t1, t2 = check_threshold("t1", t1), check_threshold("t2", t2)

    confidence = torch.softmax(z.double(), dim=1).max(dim=1).values  # c = max_j softmax(z_t)_j, (N,)
    correct = z.argmax(dim=1) == y.long()  # y_hat == y; argmax ties -> first index
    num_correct = int(correct.sum())
    num_wrong = len(y) - num_correct
    if t1 is None:
        if num_correct:
            t1 = true_median(confidence[correct])
        else:
            t1 = 1.0
            logger.warning("build_ptp_labels: the teacher has no correct prediction; t1 = 1.0, classes 0-1 are empty")
    if t2 is None:
        if num_wrong:
            t2 = true_median(confidence[~correct])
        else:
            t2 = 1.0
            logger.warning("build_ptp_labels: the teacher has no wrong prediction; t2 = 1.0, classes 2-3 are empty")

    ptp = torch.where(
        correct,
        torch.where(confidence > t1, 0, 1),  # correct: 0 confidently (c > t1), 1 unconfidently (c <= t1)
        torch.where(confidence > t2, 2, 3),  # wrong:   2 confidently (c > t2), 3 unconfidently (c <= t2)
    ).long()
    counts = torch.bincount(ptp, minlength=NUM_PTP_CLASSES).tolist()
    return PTPLabels(labels=ptp, t1=t1, t2=t2, histogram=dict(zip(PTP_CLASSES, counts)),
                     num_correct=num_correct, num_wrong=num_wrong, confidence=confidence)


def build_ptp_student(pretrained: str | os.PathLike = "minilm-l6", num_layers: int = 3, variant: str = "sps"):
    """The PTP-stage model: a student (pre-trained bottom layers, SPS plan) with a new 4-way head."""
    return build_student(pretrained, num_layers=num_layers, num_labels=NUM_PTP_CLASSES, variant=variant)


def kd_student_from_ptp(ptp_dir: str | os.PathLike, num_labels: int, variant: str, num_layers: int):
    """The KD-stage student: encoder (embeddings, layers, pooler) of the PTP checkpoint bit for bit, new task head.

    Checks the hand-off: every tensor except `classifier.*` equals the saved PTP student's.
    """
    model = build_student(num_layers=num_layers, num_labels=num_labels, variant=variant, encoder_from=ptp_dir)
    differ = [n for n in tensor_differences(load_student(ptp_dir), model) if not n.startswith("classifier.")]
    if differ:
        raise RuntimeError(f"kd_student_from_ptp: encoder tensors changed in the hand-off from {ptp_dir}: {differ}")
    return model


__all__ = ["PTP_CLASSES", "NUM_PTP_CLASSES", "AUTHORS_THRESHOLDS", "authors_thresholds", "PTPLabels",
           "true_median", "build_ptp_labels", "format_histogram", "build_ptp_student", "tensor_differences",
           "kd_student_from_ptp"]
