"""Worked examples of the loss extension point: one registered definition each, nothing else in the project changes.

* "attn_mse" (a function): TinyBERT-style attention transfer, the mean squared difference between the student's and
  the teacher's attention probabilities at the PKD-mapped layers. Shows a loss that needs inputs the teacher cache
  lacks: teacher attentions come from a live teacher forward, declared through `requires`.
* "pkd_uncertainty" (an nn.Module factory, needs_params=True): the PKD term with a learned weight, in the style of
  uncertainty weighting (Kendall et al., 2018). Shows a loss with trainable parameters: build_loss creates the module,
  the trainer adds LossModule.parameters() to the optimiser and saves its state_dict() with the checkpoints.

Neither is the answer to a course assignment (notebooks/assignments/): those ask for the KL between attention rows and
for a learned projection W, which these examples leave out.

Try it:  build_loss("kd+attn_mse") or build_loss("kd+pkd_uncertainty", student_hidden=384, teacher_hidden=384).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import LossInputs, LossResult, register_loss, require
from .standard import cls_pairs, compute_dtype, normalized_mse


@register_loss("attn_mse", requires=("student_attentions", "teacher_attentions", "attention_mask"))
def attn_mse_loss(inputs: LossInputs) -> LossResult:
    """Attention MSE: mean squared difference of attention probabilities at the mapped layers (needs a live teacher).

    L_att = 1/M sum_{(s,t) in layer_map} 1/(A P) sum_{b,h} sum_{q,k real} (A_s[b,h,q,k] - A_t[b,h,q,k])^2,
    A_s = student_attentions[s-1], A_t = teacher_attentions[t-1], P = sum_b n_b^2 real (query, key) pairs. Needs the
    same number of heads in student and teacher. Weight it with LossConfig.weights["attn_mse"] (default 1).
    Parts: {"attn_mse": L_att}.
    """
    layer_map = inputs.config.layer_map
    if not layer_map:
        raise ValueError("loss 'attn_mse': LossConfig.layer_map is empty; use pkd_layer_map(L_t, L_s)")
    student = require(inputs, "student_attentions", "attn_mse")
    teacher = require(inputs, "teacher_attentions", "attn_mse")
    mask = require(inputs, "attention_mask", "attn_mse")
    total = 0.0
    for s, t in layer_map:
        if not (1 <= s <= len(student) and 1 <= t <= len(teacher)):
            raise ValueError(f"loss 'attn_mse': layer_map pair ({s}, {t}) needs 1 <= s <= {len(student)} and "
                             f"1 <= t <= {len(teacher)} (index 0 = embeddings has no attention)")
        a_s, a_t = student[s - 1], teacher[t - 1].detach()  # the teacher is a fixed target
        if a_s.shape != a_t.shape:
            raise ValueError(f"loss 'attn_mse': student attention {tuple(a_s.shape)} and teacher attention "
                             f"{tuple(a_t.shape)} must have the same shape (batch, heads, T, T)")
        dtype = compute_dtype(a_s, a_t)
        m = mask.to(dtype)
        pairs = (m[:, :, None] * m[:, None, :])[:, None]  # (B, 1, T, T): 1 where query and key are real tokens
        sq = (a_s.to(dtype) - a_t.to(dtype)) ** 2 * pairs  # (A_s - A_t)^2 on real pairs only
        total = total + sq.sum() / (pairs.sum() * a_s.shape[1])  # mean over (b, head, real q, real k)
    loss = total / len(layer_map)  # 1/M sum over mapped layers
    return LossResult(loss, {"attn_mse": loss.detach()})


@register_loss("pkd_uncertainty", needs_params=True, requires=("student_hidden_states", "teacher_cls_hidden"),
               teacher_layers="layer_map", student_tokens="cls")
class PKDUncertainty(nn.Module):
    """PKD with a learned weight: exp(-s) L_pt + s, where L_pt is the "pkd" term and s a trained scalar.

    L = exp(-s) * beta * MSE(normalize(h_s[CLS]), normalize(h_t[CLS])) + s. For a fixed L_pt the minimum over s is
    at s = log L_pt, so the weight exp(-s) adapts to the size of the term instead of being tuned by hand, and the +s
    keeps it from shrinking to 0. The total can be negative (s < 0); only its gradient matters. Needs H_s == H_t.
    Parts: {"pkd_uncertainty": L}; the current weight exp(-s) is log_var.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int):
        super().__init__()
        if student_hidden != teacher_hidden:
            raise ValueError(f"loss 'pkd_uncertainty': needs equal hidden sizes, got student {student_hidden} and "
                             f"teacher {teacher_hidden}")
        self.log_var = nn.Parameter(torch.zeros(()))  # s, trained with the student; exp(-s) = 1 at the start

    def forward(self, inputs: LossInputs) -> LossResult:
        h_s, h_t = cls_pairs(inputs, "pkd_uncertainty")
        pkd = inputs.config.beta * normalized_mse(h_s, h_t)  # L_pt = beta * MSE(norm(h_s), norm(h_t))
        s = self.log_var.to(pkd.dtype)
        loss = torch.exp(-s) * pkd + s  # exp(-s) L_pt + s
        return LossResult(loss, {"pkd_uncertainty": loss.detach()})
