"""Beyond the paper: distil every token's hidden state, not only [CLS] (TinyBERT's intermediate-layer loss).

PKD matches the normalised [CLS] vector of a few layers. TinyBERT (Jiao et al., 2020) matches the hidden state of
every token, which carries what the teacher computed about each word:

    L_hidden = 1 / (M N_tok H) sum_{(s, t) in hidden_layer_map} sum_b sum_{n: mask[b, n] = 1} sum_d
               (h_s^(s)[b, n, d] - h_t^(t)[b, n, d])^2

N_tok = the real (non-padding) tokens of the batch, M the number of layer pairs, H the width: a mean squared error over
real tokens only, padding never counts. No normalisation and no projection: the states are compared as they are, so
the student must have the teacher's width (the 3-layer SPS student here: 6 effective layers of width 384, the teacher's
6 layers of 384, matched one to one). Another width is refused (a learned projection W h_s, as TinyBERT's, would be
the next step). The teacher's per-token states come from a live teacher forward on each batch (pea_kd.step_inputs),
not from the cache: they would cost examples x tokens x layers x H x 2 bytes to store (docs/method.md#beyond-the-paper).
"""
from __future__ import annotations

import torch

from .registry import LossInputs, LossResult, register_loss, require
from .standard import compute_dtype


def hidden_layer_map(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state pairs: student layer s with teacher layer s L_t / L_s, for every s = 1..L_s
    where that is a whole number (embeddings, index 0, not matched; the last layers are). 6 and 6: (1,1)..(6,6);
    3 student layers, 6 teacher: (1,2), (2,4), (3,6)."""
    L_t, L_s = int(teacher_layers), int(student_layers)
    return [(s, s * L_t // L_s) for s in range(1, L_s + 1) if (s * L_t) % L_s == 0]


@register_loss("hidden", requires=("student_hidden_states", "teacher_hidden_states", "attention_mask"))
def hidden_loss(inputs: LossInputs) -> LossResult:
    """All-token hidden-state MSE over hidden_layer_map, padding masked (beyond the paper).

    The formula is the module docstring's. Parts: {"hidden": L_hidden}.
    """
    states = require(inputs, "student_hidden_states", "hidden")
    teacher = require(inputs, "teacher_hidden_states", "hidden")
    mask = require(inputs, "attention_mask", "hidden")
    if states[-1].shape[1] != mask.shape[1]:
        raise ValueError("loss 'hidden': the student's last hidden state holds its [CLS] row only; "
                         "it needs every token")
    if states[0].shape[-1] != teacher[0].shape[-1]:
        raise ValueError(f"loss 'hidden': student width {states[0].shape[-1]} != teacher width "
                         f"{teacher[0].shape[-1]}; this loss compares states without a projection")
    layer_map = hidden_layer_map(len(teacher) - 1, len(states) - 1)
    if not layer_map:
        raise ValueError(f"loss 'hidden': no student layer of {len(states) - 1} sits at a teacher layer of "
                         f"{len(teacher) - 1}")
    dtype = compute_dtype(states[0], teacher[0])
    m = mask.to(dtype)[..., None]  # (B, n, 1): 1 = real token
    total = sum((((states[s].to(dtype) - teacher[t].detach().to(dtype)) ** 2) * m).sum() for s, t in layer_map)
    loss = total / (len(layer_map) * m.sum() * states[0].shape[-1])  # mean over pairs x real tokens x H
    return LossResult(loss, {"hidden": loss.detach()})
