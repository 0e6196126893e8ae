"""Machinery: what mixed precision adds to a training step (autocast, the fp16 loss scaler, fp32 loss inputs).

With `--amp bf16` or `fp16` the matrix products of the forward pass run in 16 bits under `torch.autocast`, while the
master weights, AdamW's state and the loss stay fp32 (runtime.resolve_amp picks the dtype). fp16 has a narrow
exponent range, so its small gradients would underflow to 0: a GradScaler multiplies the loss by a factor S before
the backward pass, divides the gradients by S before they are clipped, and skips a step whose gradients overflowed

    g = (1/S) d(S L)/dθ,    θ <- AdamW(θ, g) unless g is inf/NaN (then S <- S/2)

bf16 has fp32's exponent range and needs no scaler; in fp32 (amp_dtype None) every method here is the plain call.

Inference (`inference_autocast`) runs a whole pass over a dataset in one autocast context under `no_grad`: autocast
keeps the 16-bit copy W16 = bf16(W) of each fp32 weight for the lifetime of its context, so each weight is cast once
per pass instead of once per use in every batch (the same W16, so the same logits bit for bit).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Optional

import torch

from .losses import LossInputs

UPCAST_FIELDS = ("student_logits", "student_hidden_states", "student_attentions", "teacher_logits",
                 "teacher_cls_hidden", "teacher_attentions")  # what the forward passes produced under autocast


class MixedPrecision:
    """The precision of one run's steps on `device`: autocast to `amp_dtype` (None = fp32), a GradScaler for fp16."""

    def __init__(self, device: torch.device, amp_dtype: Optional[torch.dtype]):
        self.device, self.amp_dtype = device, amp_dtype
        # fp16 only (CUDA or MPS: runtime.resolve_amp refuses it elsewhere)
        self.scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward passes' context: matrix products in amp_dtype; nothing changes in fp32."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """g = dL/dθ in fp32: fp16 scales the loss by S first and divides the gradients by S after (unscale_)."""
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(); with fp16 skipped when the gradients overflowed, and S updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> Optional[dict]:
        """The scaler's state for a checkpoint (None without one)."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[dict]) -> None:
        """Restore what state_dict() returned (nothing to do without a scaler or a stored state)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


@contextlib.contextmanager
def inference_autocast(device: torch.device, amp_dtype: Optional[torch.dtype]) -> Iterator[None]:
    """no_grad + one autocast context to `amp_dtype` (None = fp32) for a whole evaluation loop.

    Not inference_mode: torch's autocast does not cache its weight casts there, nor across contexts, so a loop that
    enters autocast per batch under inference_mode casts every weight at every call (for an SPS student twice per
    batch). With the cache, the casts are done once per pass; the logits are the same bit for bit."""
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        yield


def fp32_loss_inputs(inputs: LossInputs) -> LossInputs:
    """`inputs` with the model outputs upcast to float32: the loss (softmax(z/T), KL, the normalised MSE, CE, a plug-in
    loss's own layers) runs in fp32 even when the matrix products ran in bf16/fp16. A no-op in fp32."""
    return dataclasses.replace(inputs, **{name: _fp32(getattr(inputs, name)) for name in UPCAST_FIELDS})


def _fp32(x):
    """A tensor (or tuple of tensors, or None) in float32: what autocast produced in 16 bits, upcast for the loss."""
    if isinstance(x, tuple):
        return tuple(_fp32(t) for t in x)
    return x.float() if x is not None and x.is_floating_point() else x
