"""Losses for Pea-KD and the loss registry (the extension point for new distillation losses).

Built-in components (combine with '+', e.g. "kd+pkd", the Pea-KD final stage):

    "ce"   CE(z_s, y)  (MSE for regression)                                  standard.py
    "kd"   alpha T^2 KL(softmax(z_t/T) || softmax(z_s/T)) + (1-alpha) CE       standard.py
    "pkd"  beta MSE(normalize(h_s[CLS]), normalize(h_t[CLS])) over layer_map  standard.py
    "attn_mse", "pkd_uncertainty": worked examples of new losses              examples.py
    "hidden"   MSE of every token's hidden state (beyond the paper)           hidden.py

Adding a loss needs one new definition and no trainer edits:

    from pea_kd.losses import LossInputs, LossResult, register_loss

    @register_loss("my_loss", requires=("student_hidden_states",))
    def my_loss(inputs: LossInputs) -> LossResult:
        '''One-line description shown by `python -m pea_kd --help`.'''
        loss = ...  # a scalar tensor
        return LossResult(loss, {"my_loss": loss.detach()})

then train with loss spec "kd+my_loss" (scale it with LossConfig.weights={"my_loss": 0.5}). A loss with learnable
parameters registers an nn.Module factory instead: @register_loss("name", needs_params=True) on a class whose
__init__(student_hidden, teacher_hidden) builds the parameters and whose forward(inputs) returns a LossResult.

How the trainer uses it:

    loss_fn = build_loss(spec, student_hidden=H_s, teacher_hidden=H_t).to(device)   # an nn.Module
    optimizer = AdamW(list(student.parameters()) + list(loss_fn.parameters()), ...)  # and save loss_fn.state_dict()
    loss_fn.requires  # which optional LossInputs fields to fill: hidden states, attentions, teacher outputs
    result = loss_fn(LossInputs(...)); result.total.backward(); log(result.parts)
"""

from .registry import (
    INPUT_FIELDS,
    LossConfig,
    LossEntry,
    LossInputs,
    LossModule,
    LossResult,
    available_losses,
    build_loss,
    get_loss,
    parse_loss_spec,
    register_loss,
)
from .standard import (ce_loss, cls_pairs, compute_dtype, kd_loss, kl_divergence, normalized_mse, pkd_layer_map,
                       pkd_loss, task_loss)
from .examples import PKDUncertainty, attn_mse_loss  # registers the worked examples (import order = listing order)
from .hidden import hidden_layer_map, hidden_loss

__all__ = [
    "INPUT_FIELDS", "LossConfig", "LossEntry", "LossInputs", "LossModule", "LossResult", "available_losses",
    "build_loss", "get_loss", "parse_loss_spec", "register_loss", "ce_loss", "cls_pairs", "compute_dtype", "kd_loss",
    "kl_divergence", "normalized_mse", "pkd_layer_map", "pkd_loss", "task_loss", "PKDUncertainty",
    "attn_mse_loss", "hidden_layer_map", "hidden_loss",
]
