"""INSTRUCTOR ONLY. Known-wrong variants of each assignment: the reference computation with one "knob" turned.

Each knob is a key of the matching catalogue in pea_kd.assignments.mistakes (whose message the checker shows when a
student's values match the variant). With every knob off a variant equals the reference, so this file is a solution
too and never ships to students: instructor/make_fixtures.py evaluates every variant once on the checkers' fixed
cases and stores the numbers in pea_kd/assignments/expected.json. instructor/tests/test_assignments.py checks that
all knobs off = the model answer and that each turned knob is told apart from the answer and from the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pea_kd.assignments.mistakes import (ANNEALED_MISTAKES, ATTENTION_MISTAKES, INFO_NCE_MISTAKES,
                                      PROJECTION_MISTAKES, SCHEDULE_MISTAKES)

Tensor = torch.Tensor
_TINY = 1e-30


def _xlogy_ratio(p: Tensor, q: Tensor) -> Tensor:
    """p log(p / q) elementwise with 0 log(0 / q) = 0."""
    return torch.where(p > 0, p * (torch.log(p.clamp_min(_TINY)) - torch.log(q.clamp_min(_TINY))), torch.zeros_like(p))


# ---------------------------------------------------------------- 1. attention KD

def attention_kd_variant(inputs, *, reverse=False, no_query_mask=False, divide_by_all=False, keys_mean=False,
                         no_normalisation=False, layers_sum=False, layer_offset=False, cross_entropy=False,
                         sign=False, no_heads=False, kl_div_batchmean=False) -> float:
    """The attention-KD value with the named mistakes switched on (all off = the reference)."""
    mask = inputs.attention_mask.to(torch.float64)  # (B, T)
    off = 1 if layer_offset else 0
    per_layer = []
    for s, t in inputs.config.layer_map:
        a_s = inputs.student_attentions[s - 1 + off].double()
        a_t = inputs.teacher_attentions[t - 1 + off].double()
        if cross_entropy:
            rows = -(a_t * torch.log(a_s.clamp_min(_TINY))).sum(-1)
        else:
            rows = (_xlogy_ratio(a_s, a_t) if reverse else _xlogy_ratio(a_t, a_s)).sum(-1)  # (B, A, T)
        if keys_mean:
            rows = rows / rows.shape[-1]
        B, A, T = rows.shape
        w = torch.ones_like(mask) if no_query_mask or kl_div_batchmean else mask
        summed = (rows * w[:, None, :]).sum()
        if kl_div_batchmean:  # F.kl_div(..., reduction="batchmean"): sum over everything / B
            per_layer.append(summed / B)
        elif no_heads:
            per_layer.append(summed / w.sum())
        elif no_normalisation:
            per_layer.append(summed)
        else:
            per_layer.append(summed / (B * T * A if divide_by_all or no_query_mask else w.sum() * A))
    loss = torch.stack(per_layer).sum() if layers_sum else torch.stack(per_layer).mean()
    return float(-loss if sign else loss)


# ---------------------------------------------------------------- 2. hidden-state MSE with a learned projection

def hidden_projection_variant(inputs, W: Tensor, b: Tensor, *, no_normalisation=False, student_only=False,
                              teacher_only=False, batch_dim=False, no_beta=False, sum_hidden=False, sum_all=False,
                              student_offset=False, teacher_offset=False, mean_pool=False) -> float:
    """The projection-loss value with the named mistakes switched on (all off = the reference)."""
    cfg = inputs.config
    hs, ht = [], []
    for s, t in cfg.layer_map:
        states = inputs.student_hidden_states[s - 1 if student_offset else s].double()
        hs.append(states.mean(1) if mean_pool else states[:, 0])
        ht.append(inputs.teacher_cls_hidden[:, t - 1 if teacher_offset else t].double())
    h_s, h_t = torch.stack(hs, 1), torch.stack(ht, 1)  # (B, M, H_s), (B, M, H_t)
    u = h_s @ W.double().T + b.double()  # W h_s + b
    dim = 0 if batch_dim else -1
    if not (no_normalisation or teacher_only):
        u = F.normalize(u, dim=dim)
    if not (no_normalisation or student_only):
        h_t = F.normalize(h_t, dim=dim)
    sq = (u - h_t) ** 2
    loss = sq.sum() if sum_all else sq.sum(-1).mean() if sum_hidden else sq.mean()
    return float(loss if no_beta else cfg.beta * loss)


# ---------------------------------------------------------------- 3. temperature annealing

def temperature_variant(n: int, t0: float, t_end: float, N: int, *, backwards=False, no_clip=False,
                        off_by_one=False, constant=False) -> float:
    """T_k with the named mistakes switched on (all off = T_end + (T_0 - T_end) max(0, 1 - k/N))."""
    if constant:
        return t0
    p = (n + 1 if off_by_one else n) / N
    p = p if no_clip else min(p, 1.0)
    start, end = (t_end, t0) if backwards else (t0, t_end)
    return end + (start - end) * (1.0 - p)


def annealed_kd_variant(inputs, n: int, t_end: float, N: int, *, constant=False, scale_t0=False, no_t2=False,
                        off_by_one=False, no_clip=False, reverse_kl=False, mean_reduction=False,
                        batchmean_reduction=False, no_ce=False, no_alpha=False) -> float:
    """L_n with the named mistakes switched on (all off = the reference at step n)."""
    cfg = inputs.config
    T0 = cfg.temperature
    T = temperature_variant(n, T0, t_end, N, off_by_one=off_by_one, no_clip=no_clip, constant=constant)
    z_s, z_t = inputs.student_logits.double(), inputs.teacher_logits.double()
    log_p_s, log_p_t = F.log_softmax(z_s / T, -1), F.log_softmax(z_t / T, -1)
    kl = (log_p_s.exp() * (log_p_s - log_p_t)).sum() if reverse_kl else (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    reduction = "mean" if mean_reduction else "batchmean" if batchmean_reduction else cfg.kl_reduction
    kl = kl / (z_s.numel() if reduction == "mean" else z_s.shape[0])
    scale = 1.0 if no_t2 else T0 ** 2 if scale_t0 else T ** 2
    a = 1.0 if no_alpha else cfg.alpha
    soft = a * scale * kl
    hard = 0.0 if no_ce else (1.0 if no_alpha else 1.0 - cfg.alpha) * F.cross_entropy(z_s, inputs.labels)
    return float(soft + hard)


# ---------------------------------------------------------------- 4. InfoNCE

def info_nce_variant(h_s: Tensor, h_t: Tensor, tau: float, *, no_normalisation=False, columns=False, symmetric=False,
                     tau_ignored=False, tau_multiplied=False, batch_sum=False, sign=False, zero_labels=False,
                     exclude_positive=False) -> float:
    """The InfoNCE value with the named mistakes switched on (all off = the reference)."""
    u, v = h_s.double(), h_t.double()
    if not no_normalisation:
        u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    S = u @ v.T
    S = S if tau_ignored else S * tau if tau_multiplied else S / tau
    B = S.shape[0]
    target = torch.zeros(B, dtype=torch.long) if zero_labels else torch.arange(B)
    if exclude_positive:
        others = S.masked_fill(torch.eye(B, dtype=torch.bool), float("-inf"))
        per_row = -(S.diagonal() - torch.logsumexp(others, dim=1))
    elif symmetric:
        per_row = (F.cross_entropy(S, target, reduction="none") + F.cross_entropy(S.T, target, reduction="none")) / 2
    else:
        per_row = F.cross_entropy(S.T if columns else S, target, reduction="none")
    loss = per_row.sum() if batch_sum else per_row.mean()
    return float(-loss if sign else loss)


# assignment key of expected.json -> (its mistakes catalogue, its variant function)
CATALOGUES = {
    "attention": (ATTENTION_MISTAKES, attention_kd_variant),
    "projection": (PROJECTION_MISTAKES, hidden_projection_variant),
    "schedule": (SCHEDULE_MISTAKES, temperature_variant),
    "annealed": (ANNEALED_MISTAKES, annealed_kd_variant),
    "info_nce": (INFO_NCE_MISTAKES, info_nce_variant),
}
