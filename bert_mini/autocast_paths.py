"""Engine: under CPU bf16 autocast, keep the attention's tensors in bf16 instead of casting them at every use.

Autocast runs each matrix product in bf16 and casts its fp32 inputs at every call. Around the attention that costs
passes over the data that change nothing a bf16 product would see:

* Q, K and V are three products of the same fp32 input x: autocast casts x to bf16 three times in the forward pass,
  and the backward pass casts three bf16 gradients back to fp32 and adds them in fp32. The fast path casts x once,
  x16 = bf16(x), for all three: the forward pass is the same bit for bit; the gradient dL/dx16 is summed in bf16
  (dL/dx = fp32(g_Q + g_K + g_V), rounded to bf16 after each sum) before its one cast back.
* The scores S = Q K^T / sqrt(d_k) come out of a bf16 product, while the additive mask M is fp32: S + M then
  promotes every score to fp32, and softmax, the attention dropout and their gradients run on fp32 (B, A, T, T)
  tensors, cast back to bf16 for P V. The fast path builds M in bf16 (0, or bf16's minimum where padded): S + M,
  P = softmax(S + M) and dropout(P) stay bf16, as they already are for a batch without padding (M = None). P is
  rounded to bf16 before the dropout instead of after it, and the dropout scale is 1 / (1 - p) rounded to bf16, as
  torch's own dropout rounds it for a bf16 tensor.

Both change the numbers at bf16's rounding level only (tests/test_autocast_paths.py compares the two paths); fp32 and
every other device take the plain path, unchanged. BF16_PATHS = "plain" turns the fast paths off (the tests compare
both); the measured gain is in docs/performance.md ("Where a training step's time goes").
"""
from __future__ import annotations

import torch

BF16_PATHS = "fast"  # "fast" (above) or "plain" (autocast's own casts at every use)


def cpu_bf16_fast_path(x: torch.Tensor) -> bool:
    """Whether `x` is an fp32 CPU tensor under bf16 autocast with the fast paths on."""
    return (BF16_PATHS == "fast" and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def projection_input(x: torch.Tensor) -> torch.Tensor:
    """x16 = bf16(x), cast once for the Q, K and V products, on the fast path; `x` itself (cast by autocast at each
    product) otherwise."""
    return x.to(torch.bfloat16) if cpu_bf16_fast_path(x) else x


def mask_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the additive mask M for hidden states `x`: bf16 (the scores' dtype) on the fast path, else x's."""
    return torch.bfloat16 if cpu_bf16_fast_path(x) else x.dtype
