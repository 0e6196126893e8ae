"""The loss registry's checks and bookkeeping: what pea_kd.losses.registry calls by one line each.

A registration, a LossConfig and each component's result are checked here, with a one-line error naming the loss
and what was expected; the parts of L = sum_i w_i L_i are gathered for logging. Skip on a first reading.
"""
from __future__ import annotations

import re

import torch

NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def check_loss_config(config) -> None:
    """Refuse a LossConfig with a value outside its range; normalise layer_map to int pairs, weights to floats."""
    if not 0.0 <= config.alpha <= 1.0:
        raise ValueError(f"LossConfig: alpha must be in [0, 1], got {config.alpha}")
    if not config.temperature > 0:
        raise ValueError(f"LossConfig: temperature must be > 0, got {config.temperature}")
    if not 0.0 <= config.beta < float("inf"):  # a negative PKD term would reward moving away from the teacher
        raise ValueError(f"LossConfig: beta must be a finite number >= 0, got {config.beta}")
    if config.kl_reduction not in ("batchmean", "mean"):
        raise ValueError(f"LossConfig: kl_reduction must be 'batchmean' or 'mean', got {config.kl_reduction!r}")
    try:
        config.layer_map = [(int(s), int(t)) for s, t in config.layer_map]
    except (TypeError, ValueError):
        raise ValueError(f"LossConfig: layer_map must be a list of (student, teacher) int pairs, "
                         f"got {config.layer_map!r}") from None
    config.weights = {str(k): float(v) for k, v in dict(config.weights).items()}


def check_registration(name, requires, teacher_layers: str, student_tokens: str, input_fields) -> frozenset:
    """Refuse a bad register_loss call (name, teacher_layers, student_tokens, unknown fields); return requires."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"register_loss: name must match [a-z][a-z0-9_]* (no '+'), got {name!r}")
    requires = frozenset(requires)
    if teacher_layers not in ("all", "layer_map"):
        raise ValueError(f"register_loss({name!r}): teacher_layers must be 'all' or 'layer_map', "
                         f"got {teacher_layers!r}")
    if student_tokens not in ("all", "cls"):
        raise ValueError(f"register_loss({name!r}): student_tokens must be 'all' or 'cls', got {student_tokens!r}")
    unknown = requires - set(input_fields)
    if unknown:
        raise ValueError(f"register_loss({name!r}): requires has unknown fields {sorted(unknown)}; "
                         f"LossInputs fields are {list(input_fields)}")
    return requires


def check_not_registered(name: str, old, fn, replace: bool) -> None:
    """Refuse registering `fn` under a taken `name` unless replace=True or `fn` is the same definition as the old
    entry's (same module and qualified name: a notebook cell run again)."""
    def identity(f):
        return getattr(f, "__module__", None), getattr(f, "__qualname__", None)

    if old is not None and not (replace or identity(old.fn) == identity(fn)):
        raise ValueError(f"register_loss: {name!r} is already registered by {old.fn!r}; "
                         f"pick another name or pass replace=True")


def first_doc_line(obj) -> str:
    """The first line of obj's docstring: the description available_losses() shows."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else "(no description: add a docstring)"


def check_loss_result(name: str, result, result_type) -> None:
    """Refuse a component's result that is not a `result_type` (LossResult) with a scalar tensor total."""
    if not isinstance(result, result_type):
        raise TypeError(f"loss {name!r} returned {type(result).__name__}, expected LossResult(total, parts)")
    if not (torch.is_tensor(result.total) and result.total.dim() == 0):
        shape = tuple(result.total.shape) if torch.is_tensor(result.total) else type(result.total).__name__
        raise ValueError(f"loss {name!r} returned total of shape {shape}; it must be a scalar tensor")


def add_parts(parts: dict, owner: dict, name: str, new_parts: dict, weight: float, spec: str) -> None:
    """Add component `name`'s parts, times its weight w_i, to `parts` (detached), refusing a part that another
    component already reported (`owner`: part -> component): the spec would count that term twice."""
    for key, value in new_parts.items():
        if key in parts:
            raise ValueError(f"losses {owner[key]!r} and {name!r} both report a part {key!r}: spec "
                             f"{spec!r} counts that term twice (e.g. 'kd' already includes (1-alpha)*CE)")
        owner[key] = name
        parts[key] = weight * (value.detach() if torch.is_tensor(value) else value)


def parts_as_floats(parts: dict) -> dict[str, float]:
    """Convert tensor parts with one device sync (a single .tolist()) instead of one .item() per part."""
    keys = [k for k, v in parts.items() if torch.is_tensor(v)]
    values = torch.stack([parts[k].reshape(()).float() for k in keys]).tolist() if keys else []
    out = {k: float(v) for k, v in parts.items() if not torch.is_tensor(v)}
    out.update(zip(keys, values))
    return {k: out[k] for k in parts}  # keep the components' order for logging
