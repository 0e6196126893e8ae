"""Engine: which kernel computes BERT's attention, softmax(Q K^T / sqrt(d_k) + M) V, on which device and dtype.

bert_mini.modeling writes the equation out as matrix products and a softmax ("explicit"): what a student reads, and
the only way to get the probabilities P back (output_attentions). PyTorch's fused kernel
`F.scaled_dot_product_attention` ("sdpa") computes the same equation with less memory traffic, and modeling.py hands
it the work where it is faster, in one line. The rules, by (device type, dtype of Q):

* SDPA's fused kernel in fp32 and on CUDA.
* The explicit path under CPU bf16 autocast: it was measured faster there on a CPU with native bf16
  (docs/performance.md, "Mixed precision (bf16)").
* The explicit path in CPU training (attention dropout on): SDPA's CPU kernel has no dropout, so SDPA falls back to
  its own unfused matmul-softmax-matmul there and draws the mask with bernoulli_; the explicit path is that same
  computation with bert_mini.dropout's cheaper masks.

`python -m pea_kd_bench.throughput` (make bench) measures the model's speed on your machine; ATTENTION_KERNEL =
"sdpa" or "explicit" forces one kernel everywhere (the tests compare both).
"""
from __future__ import annotations

import torch

EXPLICIT_ATTENTION = {("cpu", torch.bfloat16)}
ATTENTION_KERNEL = "auto"  # "auto" (the rules above), "sdpa" or "explicit"


def attention_kernel(q: torch.Tensor, dropout_p: float = 0.0) -> str:
    """ "explicit" or "sdpa": the attention kernel for queries `q` with attention dropout `dropout_p` (0 = off)."""
    if ATTENTION_KERNEL != "auto":
        return ATTENTION_KERNEL
    if dropout_p > 0 and q.device.type == "cpu":
        return "explicit"
    return "explicit" if (q.device.type, q.dtype) in EXPLICIT_ATTENTION else "sdpa"


def use_fused_kernel(q: torch.Tensor, dropout_p: float, output_attentions: bool) -> bool:
    """Whether modeling.BertSelfAttention hands softmax(Q K^T / sqrt(d_k) + M) V to SDPA: when the probabilities
    are not asked for and attention_kernel(q, dropout_p) picks it."""
    return not output_attentions and attention_kernel(q, dropout_p) == "sdpa"
