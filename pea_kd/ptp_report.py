"""What the PTP stage shows and checks: the label histogram as a table, and the hand-off compared bit for bit.

pea_kd.ptp and pea_kd.ptp_stage call these by one line each. Machinery: skip on a first reading.
"""
from __future__ import annotations

import torch
from torch import nn


def format_histogram(res) -> str:
    """A readable table of the PTP class counts of `res` (PTPLabels), the thresholds and the teacher's accuracy."""
    n = res.num_correct + res.num_wrong
    lines = [
        f"PTP labels for {n} examples: teacher correct on {res.num_correct} ({100 * res.num_correct / n:.1f}%), "
        f"wrong on {res.num_wrong}",
        f"thresholds: t1 = {res.t1:.4f} (correct), t2 = {res.t2:.4f} (wrong)",
        f"{'class':<6} {'name':<22} {'count':>8} {'share':>7}",
    ]
    for k, (name, count) in enumerate(res.histogram.items()):  # the 4 classes, in PTP_CLASSES order
        lines.append(f"{k:<6} {name:<22} {count:>8} {100 * count / n:>6.1f}%")
    return "\n".join(lines)


def tensor_differences(a: nn.Module, b: nn.Module) -> list[str]:
    """State-dict names whose tensors differ between two models in presence, shape, dtype or any bit."""
    sa, sb = a.state_dict(), b.state_dict()
    differ = []
    for name in sorted(set(sa) | set(sb)):
        x, y = sa.get(name), sb.get(name)
        if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype:
            differ.append(name)
        else:  # compare the raw bytes: bit for bit, so even -0.0 vs 0.0 or a NaN payload counts
            bytes_x = x.detach().contiguous().reshape(-1).view(torch.uint8)
            bytes_y = y.detach().contiguous().reshape(-1).view(torch.uint8)
            if not torch.equal(bytes_x, bytes_y):
                differ.append(name)
    return differ
