"""Model answers of the course assignments (notebooks/assignments/). Peek only after your own attempt passes!

The checkers in pea_kd.assignments.checker grade a student's function against values these answers produced once
(pea_kd/assignments/expected.json, written by instructor/make_fixtures.py); they never import this file. Each answer
is written directly from its equation, without the helpers of pea_kd.losses, so that instructor/tests/
test_assignments.py can cross-check it against explicit loops and, where one exists, a built-in loss ("kd").

    1. attention_kd_solution        L_attn = 1/M sum_(i,j) mean_{b, head a, real q} KL(A_T[b,a,q,:] || A_S[b,a,q,:])
    2. HiddenProjectionSolution     L_proj = beta * MSE(normalize(W h_s[CLS] + b), normalize(h_t[CLS]))
    3. annealed_temperature_solution / AnnealedKDSolution
                                    T_k = T_end + (T_0 - T_end) max(0, 1 - k/N_anneal);
                                    L_k = alpha T_k^2 KL(softmax(z_t/T_k) || softmax(z_s/T_k)) + (1 - alpha) CE(z_s, y)
    4. info_nce_solution            L_NCE = -1/B sum_b log softmax_b'(cos(h_s[b], h_t[b']) / tau)[b]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pea_kd.losses import LossInputs, LossResult

Tensor = torch.Tensor


# ---------------------------------------------------------------- 1. attention-distribution KD

def attention_kd_solution(inputs: LossInputs) -> LossResult:
    """Attention KD at the mapped layers: mean over (b, head a, real query q) of KL(A_T[b,a,q,:] || A_S[b,a,q,:]).

    L_attn = 1/M sum_{(i,j) in layer_map} 1/(h R) sum_b sum_a sum_{q: m[b,q]=1} sum_k A_T log(A_T / A_S),
    A_S = student_attentions[i - 1], A_T = teacher_attentions[j - 1], R = sum_{b,q} m[b,q] real query rows,
    with 0 log 0 = 0 (padded keys have A = 0 exactly).
    """
    mask = inputs.attention_mask.bool()  # (B, n) True = real token
    per_layer = []
    for i, j in inputs.config.layer_map:
        a_s = inputs.student_attentions[i - 1]  # (B, h, n, n); attentions[0] is layer 1 (no map for embeddings)
        a_t = inputs.teacher_attentions[j - 1].detach()  # the teacher is a fixed target
        log_ratio = torch.log(a_t.clamp_min(1e-30)) - torch.log(a_s.clamp_min(1e-30))
        kl_rows = torch.where(a_t > 0, a_t * log_ratio, torch.zeros_like(a_t)).sum(-1)  # (B, h, n): sum over keys k
        real_rows = kl_rows.permute(0, 2, 1)[mask]  # (R, h): only the query rows of real tokens
        per_layer.append(real_rows.mean())  # 1/(h R) sum
    loss = torch.stack(per_layer).mean()  # 1/M sum over mapped layers
    return LossResult(loss, {"attention_kd": loss.detach()})


# ---------------------------------------------------------------- 2. hidden-state MSE with a learned projection

class HiddenProjectionSolution(nn.Module):
    """PKD with a learned projection: beta * MSE(normalize(W h_s[CLS] + b), normalize(h_t[CLS])) over layer_map.

    L_proj = beta / (B M H_t) sum_b sum_{(s,t)} || u_bs / ||u_bs|| - h_t[b,t] / ||h_t[b,t]|| ||^2
    with u_bs = W h_s[b,s] + b, h_s[b,s] = student_hidden_states[s][b, 0] (index 0 = embeddings) and
    h_t[b,t] = teacher_cls_hidden[b, t].
    """

    def __init__(self, student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.proj = nn.Linear(student_hidden, teacher_hidden)  # W (H_t x H_s) and b (H_t): trained with the student

    def forward(self, inputs: LossInputs) -> LossResult:
        cfg = inputs.config
        total = 0.0
        for s, t in cfg.layer_map:
            u = self.proj(inputs.student_hidden_states[s][:, 0])  # (B, H_t): W h_s[CLS] + b
            v = inputs.teacher_cls_hidden[:, t].detach()  # (B, H_t)
            u = u / u.norm(dim=-1, keepdim=True)  # unit length over the hidden dimension
            v = v / v.norm(dim=-1, keepdim=True)
            total = total + ((u - v) ** 2).sum()
        B, H_t = inputs.teacher_cls_hidden.shape[0], inputs.teacher_cls_hidden.shape[-1]
        loss = cfg.beta * total / (B * len(cfg.layer_map) * H_t)
        return LossResult(loss, {"hidden_projection": loss.detach()})


# ---------------------------------------------------------------- 3. temperature annealing

def annealed_temperature_solution(step: int, t_start: float, t_end: float, anneal_steps: int) -> float:
    """T_k = T_end + (T_0 - T_end) * max(0, 1 - k / N_anneal): T_0 at step k = 0, T_end from k = N_anneal on."""
    progress = min(step / anneal_steps, 1.0)  # fraction of the annealing done, clipped at 1
    return t_end + (t_start - t_end) * (1.0 - progress)


def _kl_batch(z_s: Tensor, z_t: Tensor, T: float, reduction: str) -> Tensor:
    """sum_b sum_c p_t (log p_t - log p_s), p = softmax(z / T), divided by B (batchmean) or B*C (mean)."""
    log_p_s = z_s / T - torch.logsumexp(z_s / T, dim=-1, keepdim=True)
    log_p_t = z_t / T - torch.logsumexp(z_t / T, dim=-1, keepdim=True)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl / z_s.shape[0] if reduction == "batchmean" else kl / z_s.numel()


class AnnealedKDSolution(nn.Module):
    """KD whose temperature decays linearly from config.temperature (T_0) to t_end over anneal_steps steps.

    L_k = alpha T_k^2 KL(softmax(z_t/T_k) || softmax(z_s/T_k)) + (1 - alpha) CE(z_s, y), k = optimiser steps so far.
    The step counter n is a buffer: it is part of state_dict(), which the trainer saves in checkpoint.pt, so a resumed
    run continues the schedule. It advances once per call in training mode (the trainer calls the loss once per
    optimiser step) and never in eval mode.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int, t_end: float = 1.0, anneal_steps: int = 1000):
        super().__init__()
        self.t_end, self.anneal_steps = float(t_end), int(anneal_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # n, saved with the checkpoint

    def forward(self, inputs: LossInputs) -> LossResult:
        cfg = inputs.config
        T = annealed_temperature_solution(int(self.step), cfg.temperature, self.t_end, self.anneal_steps)
        z_s, z_t = inputs.student_logits, inputs.teacher_logits.detach()
        soft = cfg.alpha * T ** 2 * _kl_batch(z_s, z_t, T, cfg.kl_reduction)
        hard = (1.0 - cfg.alpha) * F.cross_entropy(z_s, inputs.labels)
        if self.training:
            self.step += 1  # this call was step n; the next one is n + 1
        return LossResult(soft + hard, {"annealed_kd": soft.detach(), "ce": hard.detach()})


# ---------------------------------------------------------------- 4. contrastive representation distillation

def info_nce_solution(h_s: Tensor, h_t: Tensor, tau: float) -> Tensor:
    """InfoNCE with the student's [CLS] vector as anchor and the teacher's vectors of the batch as candidates.

    S[b, b'] = cos(h_s[b], h_t[b']) / tau;   L_NCE = -1/B sum_b ( S[b, b] - log sum_b' exp S[b, b'] )
    The positive of student row b is the teacher's vector of the same example b; the other B-1 are negatives.
    """
    u = h_s / h_s.norm(dim=-1, keepdim=True)
    v = h_t.detach() / h_t.detach().norm(dim=-1, keepdim=True)
    S = u @ v.T / tau  # (B, B) scaled cosine similarities
    return -(S.diagonal() - torch.logsumexp(S, dim=1)).mean()
