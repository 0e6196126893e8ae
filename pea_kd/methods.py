"""The six rows of the paper's comparison: which student (SPS variant), which loss, and whether PTP comes first.

    FT         original student, CE only
    KD         original student, alpha T^2 KL(p_t || p_s) + (1 - alpha) CE
    PKD        original student, KD + beta * patient [CLS] loss
    SPS + PKD  SPS student (2L effective layers), KD + PKD
    PTP + PKD  PTP stage first, then PKD from its encoder
    Pea-KD     PTP stage on the SPS student, then SPS + KD + PKD from its encoder

Beyond the paper (reproduce --beyond-paper adds them; names marked †): the same students trained also on
teacher-labelled word-replacement variants of the training data (DA, pea_kd.augment), and with every token's hidden
state distilled (loss "hidden", pea_kd.losses.hidden).

    KD + DA †                 KD on originals + variants
    Pea-KD + DA †             Pea-KD (its PTP stage on the original data), final stage on originals + variants
    Pea-KD + DA + hidden †    the same, plus the all-token hidden-state loss

`reproduce` trains them (pea_kd.reproduce.run_all); `budget` counts their FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One row of the comparison: which student (SPS variant), which loss, whether PTP comes first, and whether the
    final stage also trains on the augmented data."""

    name: str
    slug: str
    variant: str
    loss: str
    ptp: bool
    augment: bool = False


METHODS = (
    Method("FT", "ft", "original", "ce", False),
    Method("KD", "kd", "original", "kd", False),
    Method("PKD", "pkd", "original", "kd+pkd", False),
    Method("SPS + PKD", "sps-pkd", "sps", "kd+pkd", False),
    Method("PTP + PKD", "ptp-pkd", "original", "kd+pkd", True),
    Method("Pea-KD", "pea-kd", "sps", "kd+pkd", True),
)
BEYOND_PAPER = (
    Method("KD + DA †", "kd-da", "original", "kd", False, augment=True),
    Method("Pea-KD + DA †", "pea-kd-da", "sps", "kd+pkd", True, augment=True),
    Method("Pea-KD + DA + hidden †", "pea-kd-da-hidden", "sps", "kd+pkd+hidden", True, augment=True),
)
ALL_METHODS = METHODS + BEYOND_PAPER  # table order: the paper's rows, then ours
