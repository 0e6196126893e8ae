"""Engine: which kernel computes BERT's attention, softmax(Q K^T / sqrt(d_k) + M) V, on which device and dtype.

bert_mini.modeling writes the equation out as matrix products and a softmax ("explicit"): what a student reads, and
the only way to get the probabilities P back (output_attentions). PyTorch's fused kernel
`F.scaled_dot_product_attention` ("sdpa") computes the same equation with less memory traffic, and modeling.py hands
it the work where it is faster, in one line. The rules, by (device type, dtype of Q):

* SDPA's fused kernel in fp32 and on CUDA, and in CPU bf16 inference (no dropout): there its flash kernel reads
  Q, K, V in their head-split layout and never writes the (B, A, T, T) scores: measured faster than the explicit
  path on a CPU with AMX (docs/performance.md, "Mixed precision (bf16)").
* The explicit path in CPU training (attention dropout on): SDPA's CPU kernel has no dropout, so SDPA falls back to
  its own unfused matmul-softmax-matmul there and draws the mask with bernoulli_; the explicit path is that same
  computation with bert_mini.dropout's cheaper masks.
* The explicit path for CPU bf16 where torch's bf16 flash kernel cannot run: torch 2.13 refuses it for 64 or more
  tokens when its CPU kernels are limited below AVX-512 on a CPU with AMX (ATEN_CPU_CAPABILITY=default: "pack_vnni2
  is only supported when avx512 is supported"). `cpu_bf16_sdpa_runs` tries it once per process.

`python -m pea_kd_bench.throughput` (make bench) measures the model's speed on your machine; ATTENTION_KERNEL =
"sdpa" or "explicit" forces one kernel everywhere (the tests compare both).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

ATTENTION_KERNEL = "auto"  # "auto" (the rules above), "sdpa" or "explicit"


def attention_kernel(q: torch.Tensor, dropout_p: float = 0.0) -> str:
    """ "explicit" or "sdpa": the attention kernel for queries `q` with attention dropout `dropout_p` (0 = off)."""
    if ATTENTION_KERNEL != "auto":
        return ATTENTION_KERNEL
    if dropout_p > 0 and q.device.type == "cpu":
        return "explicit"
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and not cpu_bf16_sdpa_runs():
        return "explicit"
    return "sdpa"


@functools.cache
def cpu_bf16_sdpa_runs() -> bool:
    """Whether torch's CPU bf16 SDPA kernel runs on 64 tokens with this process's CPU kernels (tried once)."""
    q = torch.zeros(1, 1, 64, 32, dtype=torch.bfloat16)
    try:
        F.scaled_dot_product_attention(q, q, q)
    except RuntimeError:  # "pack_vnni2 is only supported when avx512 is supported" (ATEN_CPU_CAPABILITY=default)
        return False
    return True


def use_fused_kernel(q: torch.Tensor, dropout_p: float, output_attentions: bool) -> bool:
    """Whether modeling.BertSelfAttention hands softmax(Q K^T / sqrt(d_k) + M) V to SDPA: when the probabilities
    are not asked for and attention_kernel(q, dropout_p) picks it."""
    return not output_attentions and attention_kernel(q, dropout_p) == "sdpa"
