"""The loss data types and the loss registry: the one extension point for new distillation losses.

A loss is one of two things, registered under a name:

* a function ``fn(inputs: LossInputs) -> LossResult`` (``@register_loss("name")``), or
* for a loss with learnable parameters, a factory ``(student_hidden: int, teacher_hidden: int) -> nn.Module`` whose
  ``forward(inputs: LossInputs) -> LossResult`` (``@register_loss("name", needs_params=True)``; a class works).

``build_loss("kd+pkd", student_hidden=H_s, teacher_hidden=H_t)`` turns a spec string into a ``LossModule``:

    L = sum_i w_i * L_i        for the components i named in the spec,  w_i = config.weights.get(i, 1.0)

The trainer adds ``LossModule.parameters()`` to its optimiser, saves ``LossModule.state_dict()`` with its checkpoints,
and reads ``LossModule.requires`` to know which optional ``LossInputs`` fields it must fill.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch import nn

from .checks import (add_parts, check_loss_config, check_loss_result, check_not_registered, check_registration,
                     first_doc_line, parts_as_floats)

Tensor = torch.Tensor


@dataclass
class LossConfig:
    """Hyperparameters shared by all losses (defaults: the authors' final stage, docs/method.md#final-stage-loss).

    alpha: KD weight, L_KD = alpha * T^2 * KL + (1 - alpha) * CE.   temperature: T.   beta: PKD weight.
    kl_reduction: "batchmean" (KL summed over classes, averaged over the batch: the KL divergence per example) or
        "mean" (element mean, divided by B*C: the authors' C1/C2/PKD code).
    layer_map: [(student hidden_states index, teacher cls_hidden index), ...], e.g. pkd_layer_map(12, 6).
    is_regression: True for STS-B (num_labels == 1): CE becomes MSE and KD its MSE analogue.
    weights: optional extra multiplier per spec component, w_i in L = sum_i w_i L_i (default 1.0). Losses whose
        hyperparameters are not fields here (e.g. "attn_mse") are weighted only by this.
    """

    alpha: float = 0.7
    temperature: float = 10.0
    beta: float = 100.0
    kl_reduction: str = "batchmean"
    layer_map: list = field(default_factory=list)
    is_regression: bool = False
    weights: dict = field(default_factory=dict)

    def __post_init__(self):
        check_loss_config(self)  # each value in its range, layer_map as int pairs (pea_kd.losses.checks)


@dataclass
class LossInputs:
    """Everything a loss may read for one batch. Fields a loss does not declare in ``requires`` may be None.

    student_logits: (B, C) z_s (C = 1 for regression).
    student_hidden_states: tuple of (B, n, H_s) (n tokens); index 0 = embeddings, index e = output of effective
        layer e. The last is (B, 1, H_s), its [CLS] row only, when every loss reading them has student_tokens="cls".
    student_attentions: tuple of (B, h_s, n, n) (h_s heads); index e-1 = attention probabilities of effective layer e.
    labels: (B,) long class ids, or float targets for regression.
    teacher_logits: (B, C) z_t.   teacher_cls_hidden: (B, L_t + 1, H_t) [CLS] vectors, index 0 = embeddings.
    config: LossConfig.   attention_mask: (B, n) 1 = real token, 0 = padding.
    teacher_attentions: tuple of (B, h_t, n, n), index i-1 = teacher layer i. Not in the teacher cache: needs a live
        teacher forward with output_attentions=True.
    teacher_hidden_states: tuple of (B, n, H_t), every token, index 0 = embeddings (a live teacher forward, as above).
    has_gold: (B,) bool, False for an example with no gold label (augmented data); None = every example has one.
    Teacher tensors are targets: the built-in losses detach them.
    """

    student_logits: Tensor
    student_hidden_states: Optional[tuple] = None
    student_attentions: Optional[tuple] = None
    labels: Optional[Tensor] = None
    teacher_logits: Optional[Tensor] = None
    teacher_cls_hidden: Optional[Tensor] = None
    config: LossConfig = field(default_factory=LossConfig)
    attention_mask: Optional[Tensor] = None
    teacher_attentions: Optional[tuple] = None
    teacher_hidden_states: Optional[tuple] = None
    has_gold: Optional[Tensor] = None


INPUT_FIELDS = tuple(f.name for f in dataclasses.fields(LossInputs))


@dataclass
class LossResult:
    """total: scalar tensor to backpropagate. parts: the weighted terms for logging, e.g. {"kd": .., "ce": ..}.

    sum(parts.values()) == total. A loss function may put 0-d tensors in parts; LossModule converts them to floats.
    """

    total: Tensor
    parts: dict


def require(inputs: LossInputs, name: str, loss: str):
    """Return inputs.<name>, or raise a one-line error saying which loss needs which missing field."""
    value = getattr(inputs, name)
    if value is None:
        raise ValueError(f"pea_kd.losses: loss {loss!r} needs LossInputs.{name}, which is None "
                         f"(the trainer fills it when {name!r} is in LossModule.requires)")
    return value


@dataclass
class LossEntry:
    """One registered loss: its name, callable, whether it is a parameter factory, and the inputs it reads."""

    name: str
    fn: Callable
    needs_params: bool
    requires: frozenset
    description: str
    teacher_layers: str = "all"
    student_tokens: str = "all"


_REGISTRY: dict[str, LossEntry] = {}


def register_loss(name: str, *, needs_params: bool = False, requires=(), teacher_layers: str = "all",
                  student_tokens: str = "all", replace: bool = False):
    """Decorator: register a loss under `name` so specs like "kd+name" can select it.

    needs_params=False: the decorated object is fn(inputs: LossInputs) -> LossResult.
    needs_params=True: it is a factory (student_hidden: int, teacher_hidden: int) -> nn.Module with
        forward(inputs) -> LossResult; build_loss creates it and its parameters join the optimiser.
    requires: the optional LossInputs fields it reads (e.g. ("student_hidden_states", "teacher_cls_hidden")); the
        trainer reads the union via LossModule.requires to decide what to compute.
    teacher_layers: which rows of teacher_cls_hidden the loss reads: "all" (the default: any layer, so the teacher
        cache must hold every layer) or "layer_map" (only the teacher indices of config.layer_map, as pkd: a cache
        holding just those layers serves it; the others arrive as NaN).
    student_tokens: which rows of student_hidden_states the loss reads: "all" (the default: any token) or "cls" (the
        [CLS] row, index 0, only, as pkd). When no component needs more, the student computes only the [CLS] row of
        its last layer (bert_mini's cls_only: the same values at less cost), and that state arrives as (B, 1, H_s).
    replace: allow re-registering an existing name. Re-running the same definition (a notebook cell, same module
        and qualified name) is always allowed.
    The description shown by available_losses() is the first line of the docstring.
    """
    requires = check_registration(name, requires, teacher_layers, student_tokens, INPUT_FIELDS)  # one-line errors

    def decorator(fn):
        check_not_registered(name, _REGISTRY.get(name), fn, replace)  # a taken name needs replace=True
        _REGISTRY[name] = LossEntry(name, fn, needs_params, requires, first_doc_line(fn), teacher_layers,
                                     student_tokens)
        return fn

    return decorator


def available_losses() -> dict[str, str]:
    """{name: one-line description} for every registered loss, in registration order (for the CLI --help)."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def parse_loss_spec(spec: str) -> list[str]:
    """"kd + pkd" -> ["kd", "pkd"]: components joined with '+'; unknown or repeated names raise ValueError."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"loss spec must be a non-empty string like 'kd+pkd', got {spec!r}; "
                         f"available: {', '.join(_REGISTRY)}")
    names = [part.strip().lower() for part in spec.split("+")]
    for name in names:
        if name not in _REGISTRY:
            shown = repr(name) if name else "an empty component"
            raise ValueError(f"unknown loss {shown} in spec {spec!r}; available: {', '.join(_REGISTRY)}. A loss "
                             f"you registered yourself exists only once its module is imported: on the command "
                             f"line, python -m pea_kd --plugin MODULE_OR_FILE.py distill --loss ...")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"loss spec {spec!r} names {repeated} more than once; use LossConfig.weights to scale a term")
    return names


class LossModule(nn.Module):
    """The combined loss L = sum_i w_i * L_i of a spec; an nn.Module so parametrised components train with the model.

    forward(inputs) -> LossResult(total, parts) with parts as floats, e.g. {"kd": .., "ce": .., "pkd": ..}.
    requires: frozenset of the optional LossInputs fields the components read.
    """

    def __init__(self, spec: str, student_hidden: Optional[int] = None, teacher_hidden: Optional[int] = None):
        super().__init__()
        self.names = parse_loss_spec(spec)
        self.spec = "+".join(self.names)
        self.param_losses = nn.ModuleDict()  # the components built by needs_params factories
        self._fns: dict[str, Callable] = {}
        for name in self.names:
            entry = _REGISTRY[name]
            if not entry.needs_params:
                self._fns[name] = entry.fn
                continue
            if student_hidden is None or teacher_hidden is None:
                raise ValueError(f"loss {name!r} has learnable parameters: call build_loss({spec!r}, "
                                 f"student_hidden=H_s, teacher_hidden=H_t)")
            module = entry.fn(int(student_hidden), int(teacher_hidden))
            if not isinstance(module, nn.Module):
                raise TypeError(f"loss {name!r}: its factory returned {type(module).__name__}, expected an nn.Module")
            self.param_losses[name] = module
        self.requires = frozenset().union(*(_REGISTRY[n].requires for n in self.names))

    def teacher_layers_read(self, layer_map, num_teacher_layers: int) -> tuple[int, ...]:
        """The indices of teacher_cls_hidden this loss reads: none when no component reads it; the teacher indices of
        `layer_map` when all that do read only those (teacher_layers="layer_map"); else every layer, 0..L_t."""
        readers = [_REGISTRY[n] for n in self.names if "teacher_cls_hidden" in _REGISTRY[n].requires]
        if not readers:
            return ()
        if all(entry.teacher_layers == "layer_map" for entry in readers):
            return tuple(sorted({int(t) for _, t in layer_map}))
        return tuple(range(num_teacher_layers + 1))

    @property
    def student_cls_only(self) -> bool:
        """Whether the student's last layer may compute its [CLS] row only: no component reads the student's
        attentions, and every one that reads its hidden states reads their [CLS] rows only (student_tokens="cls")."""
        if "student_attentions" in self.requires:
            return False
        return all(_REGISTRY[n].student_tokens == "cls" for n in self.names
                   if "student_hidden_states" in _REGISTRY[n].requires)

    def forward(self, inputs: LossInputs) -> LossResult:
        total = None
        parts: dict[str, Union[float, Tensor]] = {}
        owner: dict[str, str] = {}
        for name in self.names:
            fn = self.param_losses[name] if name in self.param_losses else self._fns[name]
            result = fn(inputs)
            check_loss_result(name, result, LossResult)  # a LossResult with a scalar total
            w = inputs.config.weights.get(name, 1.0)
            total = w * result.total if total is None else total + w * result.total  # L = sum_i w_i L_i
            add_parts(parts, owner, name, result.parts, w, self.spec)  # w_i times each logged term, none twice
        return LossResult(total, parts_as_floats(parts))  # one device sync for all parts

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"


def build_loss(spec: str, student_hidden: Optional[int] = None, teacher_hidden: Optional[int] = None) -> LossModule:
    """Build the combined loss for `spec` ("ce", "kd", "kd+pkd", "kd+attn_mse", ...).

    student_hidden / teacher_hidden (H_s, H_t) are needed only when a component has learnable parameters.
    """
    return LossModule(spec, student_hidden, teacher_hidden)


get_loss = build_loss  # the same function, under the name the interface contract uses
