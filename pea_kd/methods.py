"""The six rows of the paper's comparison: which student (SPS variant), which loss, and whether PTP comes first.

    FT         original student, CE only
    KD         original student, alpha T^2 KL(p_t || p_s) + (1 - alpha) CE
    PKD        original student, KD + beta * patient [CLS] loss
    SPS + PKD  SPS student (2L effective layers), KD + PKD
    PTP + PKD  PTP stage first, then PKD from its encoder
    Pea-KD     PTP stage on the SPS student, then SPS + KD + PKD from its encoder

`reproduce` trains them (pea_kd.reproduce.run_all); `budget` counts their FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One row of the comparison: which student (SPS variant), which loss, and whether PTP comes first."""

    name: str
    slug: str
    variant: str
    loss: str
    ptp: bool


METHODS = (
    Method("FT", "ft", "original", "ce", False),
    Method("KD", "kd", "original", "kd", False),
    Method("PKD", "pkd", "original", "kd+pkd", False),
    Method("SPS + PKD", "sps-pkd", "sps", "kd+pkd", False),
    Method("PTP + PKD", "ptp-pkd", "original", "kd+pkd", True),
    Method("Pea-KD", "pea-kd", "sps", "kd+pkd", True),
)
