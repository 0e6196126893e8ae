"""Engine: dropout with masks drawn from raw random words: what `nn.Dropout` computes, at a fraction of its CPU cost.

    y = x * m / (1 - p),   m_i ~ Bernoulli(1 - p) independently for every element   (inverted dropout)

This is the one place where bert_mini does not use PyTorch's own operator, and only for the mask on the CPU. There
`F.dropout` draws m with `bernoulli_`, which (on the AMD EPYC of this project, at least) runs one sequential
Mersenne-Twister draw per element through a per-element distribution object and costs about as much as the matrix
products next to it (docs/performance.md). Here the mask comes from *raw 32-bit random words*, drawn 64 bits at a
time from the same generator (`Tensor.random_` over the full int64 range), 4-5x cheaper per element on that CPU:

    w_i uniform on the 2^32 values of a 32-bit word       (two per 64-bit draw of torch's default CPU generator)
    m_i = 1  iff  w_i < K,   K = round((1 - p) 2^32)       so  P(m_i = 1) = K / 2^32 = 1 - p, to within 2^-33

(torch's own `bernoulli_` compares a 24-bit uniform with 1 - p: it is exact to 2^-24.) The rest is torch's CPU
dropout: the same noise tensor m / (1 - p) in x's dtype and the same product, so for a given mask the output and its
gradient are bit-identical to `F.dropout`'s (tests/test_dropout.py). The comparison w_i < K writes m straight into
x's dtype and the scale multiplies it in place: two passes, where `bool_mask * scale` casts each element one by one
(a (32, 12, 64, 64) fp32 noise tensor: about 1.1 against 4.4 ms on one core).
The words come from torch's default generator, so `torch.manual_seed` and `torch.get_rng_state`/`set_rng_state`
(and with them a resumed run) govern these masks exactly as they govern `nn.Dropout`'s; the masks themselves are
other draws than `nn.Dropout`'s, so a training run's numbers differ from those of the same seed before. On other
devices (CUDA, MPS) `F.dropout` already draws its masks in parallel and is used unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WORD_VALUES = 2**32  # a mask element is decided by one uniformly random 32-bit word


def keep_mask(shape, p: float, device="cpu", generator=None, dtype=torch.bool) -> torch.Tensor:
    """A tensor of `shape` whose elements are 1 (True) independently with probability 1 - p (to within 2^-33), else 0.

    Draws ceil(n / 2) 64-bit words from `generator` (torch's default CPU generator when None) and reads them as n
    32-bit words w_i; keeps element i iff w_i is one of K = round((1 - p) 2^32) fixed values of the 2^32. `dtype`:
    bool, or a floating dtype to get m as 1.0 / 0.0 in that dtype straight from the comparison (the same draws).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    n = 1
    for size in shape:
        n *= int(size)
    draws = torch.empty((n + 1) // 2, dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)
    words = draws.view(torch.int32)[:n].view(shape)  # int32 in [-2^31, 2^31): each of the 2^32 values equally likely
    kept_values = round((1.0 - p) * WORD_VALUES)  # K
    if kept_values == WORD_VALUES:  # p < 2^-33: every word is kept (2^31 itself does not fit an int32 comparison)
        return torch.ones(shape, dtype=dtype, device=device)
    # m_i = [w_i < K - 2^31], the K smallest int32 values: P(keep) = K / 2^32
    return torch.lt(words, kept_values - 2**31, out=torch.empty(shape, dtype=dtype, device=device))


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """y = x * m / (1 - p) with m ~ Bernoulli(1 - p) per element; x itself when not training or p == 0."""
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)  # parallel counter-based masks there
    if p == 1.0:
        return x * torch.zeros((), dtype=x.dtype)  # every element dropped, as F.dropout does it
    scale = torch.ones((), dtype=x.dtype).div_(1.0 - p)  # 1 / (1 - p), rounded as torch's CPU dropout rounds it
    return x * keep_mask(x.shape, p, dtype=x.dtype).mul_(scale)  # x * m / (1 - p)


class Dropout(nn.Module):
    """`nn.Dropout(p)` with the masks of `dropout` above (same `p` attribute, same train/eval behaviour)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
