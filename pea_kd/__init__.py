"""Pea-KD: an educational, from-scratch PyTorch implementation of Pea-KD BERT distillation (SPS + PTP)."""

__version__ = "0.1.0"
