"""Worked examples of the loss extension point, written the way a course assignment would add a loss.

Each is one registered definition in this file; nothing else in the project changes:

* "attn_kd" (a function): attention-distribution KD at the mapped layers. Shows a loss that needs inputs the teacher
  cache lacks: teacher attentions come from a live teacher forward, declared through `requires`.
* "hidden_mse_proj" (an nn.Module factory, needs_params=True): PKD with a learned projection W, so student and teacher
  hidden sizes may differ. Shows a loss with trainable parameters: build_loss creates the module, the trainer adds
  LossModule.parameters() to the optimiser.

Try it:  build_loss("kd+attn_kd") or build_loss("kd+hidden_mse_proj", student_hidden=384, teacher_hidden=768).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import LossInputs, LossResult, Tensor, register_loss, require
from .standard import cls_pairs, compute_dtype, normalized_mse


def _attention_kl(a_s: Tensor, a_t: Tensor, query_mask: Tensor) -> Tensor:
    """Mean over batch, heads and real query rows q of KL(A_t[q] || A_s[q]) = sum_k A_t[q,k] log(A_t[q,k] / A_s[q,k]).

    a_s, a_t: (B, A, T, T) attention probabilities; query_mask: (B, T) 1 for real tokens.
    Padded keys have A = 0 exactly; 0 * log 0 is taken as 0 and log A_s is clamped at 1e-12.
    """
    log_a_s = a_s.clamp_min(1e-12).log()  # log A_s, finite where a masked key gives A_s = 0
    kl_rows = (torch.xlogy(a_t, a_t) - a_t * log_a_s).sum(-1)  # (B, A, T): sum_k A_t (log A_t - log A_s)
    w = query_mask[:, None, :].to(kl_rows.dtype)  # (B, 1, T): count only real query tokens
    return (kl_rows * w).sum() / (w.sum() * kl_rows.shape[1])  # mean over (b, head, real q)


@register_loss("attn_kd", requires=("student_attentions", "teacher_attentions", "attention_mask"))
def attn_kd_loss(inputs: LossInputs) -> LossResult:
    """Attention KD: KL(teacher || student) between attention maps at the mapped layers (needs a live teacher).

    L_attn = 1/M sum_{(s,t) in layer_map} mean_{b, head, real q} sum_k A_t[b,h,q,k] log(A_t[b,h,q,k] / A_s[b,h,q,k])
    where A_s = student_attentions[s-1] (effective layer s) and A_t = teacher_attentions[t-1] (teacher layer t), the
    attention of the layers whose [CLS] outputs PKD matches. If the head counts differ, both maps are first averaged
    over heads (a mean of distributions is a distribution). Weight it with LossConfig.weights["attn_kd"] (default 1).
    The teacher cache stores no attentions: the trainer must run the teacher with output_attentions=True.
    Parts: {"attn_kd": L_attn}.
    """
    layer_map = inputs.config.layer_map
    if not layer_map:
        raise ValueError("loss 'attn_kd': LossConfig.layer_map is empty; use pkd_layer_map(L_t, L_s)")
    student = require(inputs, "student_attentions", "attn_kd")
    teacher = require(inputs, "teacher_attentions", "attn_kd")
    mask = inputs.attention_mask
    if mask is None:  # no padding information: every position is a real token
        mask = torch.ones(student[0].shape[0], student[0].shape[-1], device=student[0].device)
    total = 0.0
    for s, t in layer_map:
        if not (1 <= s <= len(student) and 1 <= t <= len(teacher)):
            raise ValueError(f"loss 'attn_kd': layer_map pair ({s}, {t}) needs 1 <= s <= {len(student)} and "
                             f"1 <= t <= {len(teacher)} (index 0 = embeddings has no attention)")
        a_s, a_t = student[s - 1], teacher[t - 1].detach()  # the teacher is a fixed target
        dtype = compute_dtype(a_s, a_t)  # >= float32: the 1e-12 clamp below underflows in float16
        a_s, a_t = a_s.to(dtype), a_t.to(dtype)
        if a_s.shape[-2:] != a_t.shape[-2:] or a_s.shape[0] != a_t.shape[0]:
            raise ValueError(f"loss 'attn_kd': student attention {tuple(a_s.shape)} and teacher attention "
                             f"{tuple(a_t.shape)} must share batch and sequence sizes")
        if a_s.shape[1] != a_t.shape[1]:  # head counts differ: compare head-averaged maps
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)  # A = 1/heads sum_h A_h
        total = total + _attention_kl(a_s, a_t, mask)
    loss = total / len(layer_map)  # 1/M sum over mapped layers
    return LossResult(loss, {"attn_kd": loss.detach()})


@register_loss("hidden_mse_proj", needs_params=True, requires=("student_hidden_states", "teacher_cls_hidden"))
class HiddenMSEProjection(nn.Module):
    """PKD with a learned projection W: beta * MSE(normalize(W h_s[CLS] + b), normalize(h_t[CLS])), any H_s, H_t.

    L_proj = beta / (B M H_t) sum_b sum_{(s,t) in layer_map} sum_d (u[b,s,d]/||u[b,s]|| - h_t[b,t,d]/||h_t[b,t]||)^2,
    u = W h_s[b,s] + b, with one W (H_t x H_s) shared by all mapped layers (as in TinyBERT). With W = I and b = 0 it
    equals "pkd", so it is a drop-in replacement: "kd+hidden_mse_proj". W and b are trained with the student.
    Parts: {"hidden_mse_proj": L_proj}.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.proj = nn.Linear(student_hidden, teacher_hidden)  # W: H_s -> H_t, b

    def forward(self, inputs: LossInputs) -> LossResult:
        h_s, h_t = cls_pairs(inputs, "hidden_mse_proj")
        if h_s.shape[-1] != self.proj.in_features or h_t.shape[-1] != self.proj.out_features:
            raise ValueError(f"loss 'hidden_mse_proj': built for H_s={self.proj.in_features}, "
                             f"H_t={self.proj.out_features} but got {h_s.shape[-1]} and {h_t.shape[-1]}; "
                             f"pass the right student_hidden/teacher_hidden to build_loss")
        u = self.proj(h_s)  # u = W h_s + b, (B, M, H_t)
        loss = inputs.config.beta * normalized_mse(u, h_t)  # beta * MSE(norm(u), norm(h_t))
        return LossResult(loss, {"hidden_mse_proj": loss.detach()})
