"""The three losses of the Pea-KD final stage (docs/method.md#final-stage-loss) and the PKD layer map.

    L = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)      "kd"  (contains "ce")
      + beta * MSE(normalize(h_s[CLS]), normalize(h_t[CLS]))  over the layer map             "pkd"

Spec "kd+pkd" is the authors' `--train_type pkd`; "kd" their KD baseline; "ce" fine-tuning (alpha = 0).
"""

from __future__ import annotations

from math import gcd
from typing import Optional

import torch
import torch.nn.functional as F

from .registry import LossInputs, LossResult, Tensor, register_loss, require


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a loss is computed in: the widest input dtype, at least float32 (fp16/bf16 under AMP are upcast,
    and fp32 teacher targets are never rounded down to the student's half precision)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_logits(inputs: LossInputs, loss: str) -> Tensor:
    """Return z_s (B, C) after checking its shape against config.is_regression."""
    z_s = inputs.student_logits
    if z_s.dim() != 2:
        raise ValueError(f"loss {loss!r}: student_logits must be (B, C), got shape {tuple(z_s.shape)}")
    if inputs.config.is_regression and z_s.shape[1] != 1:
        raise ValueError(f"loss {loss!r}: regression (is_regression=True) needs student_logits (B, 1), "
                         f"got {tuple(z_s.shape)}")
    if not inputs.config.is_regression and z_s.shape[1] < 2:
        raise ValueError(f"loss {loss!r}: classification needs >= 2 classes, got student_logits {tuple(z_s.shape)}; "
                         f"set LossConfig(is_regression=True) for STS-B")
    return z_s


def task_loss(z_s: Tensor, y: Tensor, is_regression: bool, has_gold: Optional[Tensor] = None) -> Tensor:
    """The supervised loss on gold labels.

    classification: CE(z_s, y) = -1/B sum_b log softmax(z_s)[b, y_b]
    regression:     MSE(z_s, y) = 1/B sum_b (z_s[b, 0] - y_b)^2
    has_gold (B,) bool (augmented data): the sum runs over gold examples g_b = 1 only, still divided by B, so an
    original example weighs what it weighs without augmentation:  1/B sum_b g_b l_b  (0 for a batch without gold).
    """
    if y.shape != z_s.shape[:1]:
        raise ValueError(f"labels must be (B,) = {tuple(z_s.shape[:1])}, got shape {tuple(y.shape)}")
    z_s = z_s.to(compute_dtype(z_s))
    if has_gold is not None:
        keep = has_gold.to(torch.bool)
        gold = task_loss(z_s[keep], y[keep], is_regression) if bool(keep.any()) else z_s.sum() * 0.0
        return gold * keep.sum() / len(y)  # 1/B sum_{b: g_b} l_b
    if is_regression:
        return F.mse_loss(z_s[:, 0], y.to(z_s.dtype))  # 1/B sum_b (z_s[b] - y_b)^2
    if y.dtype.is_floating_point:
        raise ValueError(f"classification labels must be integer class ids, got dtype {y.dtype}")
    return F.cross_entropy(z_s, y)  # -1/B sum_b log p_s[b, y_b]


def kl_divergence(z_s: Tensor, z_t: Tensor, temperature: float, reduction: str = "batchmean") -> Tensor:
    """KL(p_t || p_s) with p = softmax(z / T), reduced over the batch.

    batchmean: 1/B     sum_b sum_c p_t[b,c] (log p_t[b,c] - log p_s[b,c])   (the KL of each example, averaged)
    mean:      1/(B C) sum_b sum_c p_t[b,c] (log p_t[b,c] - log p_s[b,c])   (authors' C1/C2/PKD; = batchmean / C)
    """
    log_p_s = F.log_softmax(z_s / temperature, dim=-1)  # log p_s = log softmax(z_s / T)
    log_p_t = F.log_softmax(z_t / temperature, dim=-1)  # log p_t = log softmax(z_t / T)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()  # sum_b sum_c p_t (log p_t - log p_s)
    B, C = z_s.shape
    return kl / B if reduction == "batchmean" else kl / (B * C)


@register_loss("ce", requires=("labels",))
def ce_loss(inputs: LossInputs) -> LossResult:
    """Task loss on gold labels: cross-entropy, or MSE for regression (STS-B).

    L_ce = CE(z_s, y) = -1/B sum_b log softmax(z_s)[b, y_b];   regression: L_ce = 1/B sum_b (z_s[b] - y_b)^2.
    Parts: {"ce": L_ce}.
    """
    z_s = _check_logits(inputs, "ce")
    loss = task_loss(z_s, require(inputs, "labels", "ce"), inputs.config.is_regression, inputs.has_gold)
    return LossResult(loss, {"ce": loss.detach()})


@register_loss("kd", requires=("labels", "teacher_logits"))
def kd_loss(inputs: LossInputs) -> LossResult:
    """Hinton KD: alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y).

    The KL uses config.kl_reduction: "batchmean" (default; per-example KL summed over classes, averaged over the
    batch) or "mean" (divided by B*C, the authors' C1/C2/PKD code). T^2 keeps the soft-target gradients, which
    scale as 1/T^2, comparable to the CE gradients (Hinton et al. 2015).
    Regression (is_regression=True) uses the MSE analogue, with no temperature and no T^2:
        alpha * MSE(z_s, z_t) + (1 - alpha) * MSE(z_s, y).
    With alpha == 1 the CE term is skipped (labels may be None). Parts: {"kd": first term, "ce": second term}.
    """
    cfg = inputs.config
    z_s = _check_logits(inputs, "kd")
    z_t = require(inputs, "teacher_logits", "kd").detach()  # the teacher is a fixed target
    if z_t.shape != z_s.shape:
        raise ValueError(f"loss 'kd': teacher_logits {tuple(z_t.shape)} and student_logits {tuple(z_s.shape)} differ")
    dtype = compute_dtype(z_s, z_t)
    if cfg.is_regression:
        soft = cfg.alpha * F.mse_loss(z_s.to(dtype), z_t.to(dtype))  # alpha * 1/B sum_b (z_s - z_t)^2
    else:
        kl = kl_divergence(z_s.to(dtype), z_t.to(dtype), cfg.temperature, cfg.kl_reduction)
        soft = cfg.alpha * cfg.temperature ** 2 * kl  # alpha * T^2 * KL(p_t || p_s)
    if cfg.alpha < 1.0:
        hard = (1.0 - cfg.alpha) * task_loss(z_s, require(inputs, "labels", "kd"), cfg.is_regression,
                                             inputs.has_gold)  # (1-alpha) CE, on gold examples only
    else:
        hard = torch.zeros((), dtype=soft.dtype, device=soft.device)
    return LossResult(soft + hard, {"kd": soft.detach(), "ce": hard.detach()})


def cls_pairs(inputs: LossInputs, loss: str) -> tuple[Tensor, Tensor]:
    """Gather the [CLS] vectors named by config.layer_map: (h_s (B, M, H_s), h_t (B, M, H_t)), M = len(layer_map).

    h_s[:, m] = student_hidden_states[s_m][:, 0],  h_t[:, m] = teacher_cls_hidden[:, t_m]  for (s_m, t_m) in layer_map.
    """
    layer_map = inputs.config.layer_map
    if not layer_map:
        raise ValueError(f"loss {loss!r}: LossConfig.layer_map is empty; use pkd_layer_map(L_t, L_s). A student with "
                         f"1 effective layer has no intermediate state to match, so {loss!r} is impossible for it")
    states = require(inputs, "student_hidden_states", loss)
    teacher = require(inputs, "teacher_cls_hidden", loss).detach()  # the teacher is a fixed target
    if teacher.dim() != 3:
        raise ValueError(f"loss {loss!r}: teacher_cls_hidden must be (B, L_t + 1, H_t), got {tuple(teacher.shape)}")
    for s, t in layer_map:
        if not 0 <= s < len(states):
            raise ValueError(f"loss {loss!r}: layer_map student index {s} out of range: the student returned "
                             f"{len(states)} hidden states (0 = embeddings .. {len(states) - 1})")
        if not 0 <= t < teacher.shape[1]:
            raise ValueError(f"loss {loss!r}: layer_map teacher index {t} out of range: teacher_cls_hidden has "
                             f"{teacher.shape[1]} rows (0 = embeddings .. {teacher.shape[1] - 1})")
    h_s = torch.stack([states[s][:, 0] for s, _ in layer_map], dim=1)  # (B, M, H_s): [CLS] of student layer s
    h_t = teacher[:, [t for _, t in layer_map]]  # (B, M, H_t): [CLS] of teacher layer t
    dtype = compute_dtype(h_s, h_t)
    return h_s.to(dtype), h_t.to(dtype)


def normalized_mse(a: Tensor, b: Tensor) -> Tensor:
    """MSE(normalize(a), normalize(b)) = 1/(B M H) sum (a/||a||_2 - b/||b||_2)^2, norms over the last (hidden) dim."""
    return F.mse_loss(F.normalize(a, p=2, dim=-1), F.normalize(b, p=2, dim=-1))  # mean over batch x layers x hidden


@register_loss("pkd", requires=("student_hidden_states", "teacher_cls_hidden"), teacher_layers="layer_map",
               student_tokens="cls")
def pkd_loss(inputs: LossInputs) -> LossResult:
    """PKD patient loss: beta * MSE(normalize(h_s[CLS]), normalize(h_t[CLS])), averaged over config.layer_map's pairs.

    L_pt = beta / (B M H) sum_b sum_{(s,t) in layer_map} sum_d (h_s[b,s,d]/||h_s[b,s]|| - h_t[b,t,d]/||h_t[b,t]||)^2
    with h the [CLS] vectors (not pooled) and ||.|| the L2 norm over the hidden dim (the authors' F.mse_loss mean,
    normalize_patience=True). Needs H_s == H_t (a learned projection removes that: assignment 2). Parts: {"pkd": L_pt}.
    """
    h_s, h_t = cls_pairs(inputs, "pkd")
    if h_s.shape[-1] != h_t.shape[-1]:
        raise ValueError(f"loss 'pkd': student hidden size {h_s.shape[-1]} != teacher hidden size {h_t.shape[-1]}; "
                         "PKD compares [CLS] vectors directly; a loss with a learned projection W "
                         "(course assignment 2) handles different sizes")
    loss = inputs.config.beta * normalized_mse(h_s, h_t)  # beta * MSE(norm(h_s), norm(h_t))
    return LossResult(loss, {"pkd": loss.detach()})


def pkd_layer_map(teacher_layers: int, student_effective_layers: int) -> list[tuple[int, int]]:
    """Student-to-teacher [CLS] pairs for PKD: [(student hidden_states index, teacher cls_hidden index), ...].

    Rule: g = gcd(L_s, L_t); pair student layer k*L_s/g with teacher layer k*L_t/g for k = 1 .. g-1, i.e. the layers
    at the same relative depth k/g, evenly spaced. k = g (both last layers) is left out: the student's last state
    feeds the classifier, which the KD logits already supervise. Indices are 1-based layers (0 = embeddings).
    It reproduces the authors' table (docs/method.md#pkd-layer-map) for a 12-layer teacher:
        L_s=1 -> []   2 -> [(1,6)]   3 -> [(1,4),(2,8)]   4 -> [(1,3),(2,6),(3,9)]
        6 -> [(1,2),(2,4),(3,6),(4,8),(5,10)]   9 (SPS 6L) -> [(3,4),(6,8)]
    L_s is the number of *effective* layers, e.g. 2L for an SPS student with L real layers.
    """
    L_t, L_s = int(teacher_layers), int(student_effective_layers)
    if L_t < 1 or L_s < 1:
        raise ValueError(f"pkd_layer_map: layer counts must be >= 1, got teacher_layers={teacher_layers}, "
                         f"student_effective_layers={student_effective_layers}")
    g = gcd(L_s, L_t)  # number of equal depth segments shared by both stacks
    return [(k * L_s // g, k * L_t // g) for k in range(1, g)]  # (s, t) at relative depth k/g, k < g
