"""One-line errors for bad input to the book's array functions: the metrics, PTP's labels, features and batches.

Each check names the argument and what was expected, before any computation; pea_kd.metrics, pea_kd.ptp,
pea_kd.ptp_stage and pea_kd.features call them by one line each. Machinery: skip on a first reading.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------------- metrics
def as_pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as 1-D arrays of the same, non-zero length (ValueError otherwise)."""
    p, y = np.asarray(predictions), np.asarray(labels)
    for name, a in (("predictions", p), ("labels", y)):
        if a.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array, got shape {a.shape}")
    if len(p) != len(y):
        raise ValueError(f"predictions and labels differ in length: {len(p)} vs {len(y)}")
    if len(p) == 0:
        raise ValueError("predictions and labels are empty")
    return p, y


def check_task_inputs(spec, p: np.ndarray, y: np.ndarray) -> None:
    """Regression: finite numbers. Classification: integer class ids in 0 .. num_labels - 1."""
    for name, a in (("predictions", p), ("labels", y)):
        if spec.is_regression:
            if not (np.issubdtype(a.dtype, np.number) and np.all(np.isfinite(a))):
                raise ValueError(f"{spec.name}: {name} must be finite numbers, got dtype {a.dtype} "
                                 "containing non-numeric, NaN or infinite values")
        elif not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"{spec.name}: {name} must be integer class ids, got dtype {a.dtype} with shape "
                             f"{a.shape} (take the argmax of the logits first)")
        elif a.min() < 0 or a.max() >= spec.num_labels:
            raise ValueError(f"{spec.name}: {name} must be class ids in 0..{spec.num_labels - 1}, "
                             f"got values from {a.min()} to {a.max()}")


# ---------------------------------------------------------------------------------------------------- PTP
def check_threshold(name: str, value) -> Optional[float]:
    """A PTP threshold: None (the median) or a number in (0, 1]; ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"build_ptp_labels: {name} must be a number in (0, 1], got {value!r}")
    return float(value)


def check_ptp_inputs(z: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse what PTP cannot label: regression (one output column or float labels), logits that are not a finite
    (N, C) float tensor, labels that are not N class ids in [0, C)."""
    if z.dim() == 2 and z.shape[1] == 1 or z.dim() == 1 or y.is_floating_point():
        raise ValueError(
            "PTP is defined for classification tasks; STS-B (regression) has no correct/wrong teacher prediction: "
            f"got teacher_logits of shape {tuple(z.shape)} and labels of dtype {y.dtype}")
    if z.dim() != 2 or z.shape[0] == 0:
        raise ValueError(f"build_ptp_labels: teacher_logits must have shape (N, C) with N >= 1, got {tuple(z.shape)}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"build_ptp_labels: labels must have shape ({z.shape[0]},) to match teacher_logits "
                         f"{tuple(z.shape)}, got {tuple(y.shape)}")
    if not z.is_floating_point() or not torch.isfinite(z).all():
        raise ValueError("build_ptp_labels: teacher_logits must be finite floating-point values")
    if y.dtype == torch.bool or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"build_ptp_labels: labels must be class ids in [0, {z.shape[1]}), "
                         f"got values in [{int(y.min())}, {int(y.max())}]")


# ---------------------------------------------------------------------------------------------------- features
def check_feature_lengths(n: int, token_type_ids, labels) -> None:
    """Refuse Features whose token_type_ids or labels do not have one entry per example (n of them)."""
    if len(token_type_ids) != n:
        raise ValueError(f"Features: {n} input_ids but {len(token_type_ids)} token_type_ids")
    if labels is not None and len(labels) != n:
        raise ValueError(f"Features: {n} examples but {len(labels)} labels")


def check_uniform_split(examples) -> None:
    """Refuse a split that mixes pairs and single sentences, or labeled and unlabeled examples."""
    for what, missing in (("text_b", [e.text_b is None for e in examples]),
                          ("label", [e.label is None for e in examples])):
        if any(missing) and not all(missing):
            bad = examples[missing.index(not missing[0])]
            state = ("None", "set") if missing[0] else ("set", "None")
            raise ValueError(f"encode_examples: example {bad.guid} has {what} {state[1]} but example "
                             f"{examples[0].guid} has it {state[0]}; a split must be uniform")


def checked_indices(n: int, indices) -> np.ndarray:
    """Indices as an int64 array, each in [0, n) (negative indices are refused, not wrapped)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)][0]
        raise IndexError(f"example index {bad} out of range for {n} examples")
    return idx
