"""What a run *is*: everything that determines its output. Reuse (a finished run, `--resume`, the teacher cache,
`reproduce`'s stage skipping) happens only when all of it matches; otherwise a one-line error names what differs.

    identity = TrainConfig without runtime settings (device, progress, checkpointing)  e.g. lr, epochs, batch_size
             + loss spec and LossConfig weights                                        alpha, temperature, beta, ...
             + data: digests of the model inputs and labels, example counts            data files, max_train_examples,
                                                                                        tokenizer, max_length
             + architecture: model config digest and execution plan                    SPS variant, layers
             + starting weights: sha256 of the model's (and the loss's) initial tensors pre-trained or PTP encoder,
                                                                                        new head (seeded)
             + teacher targets: sha256 of the teacher rows the loss reads             which teacher, which cache
             + precision: "fp32", "bf16" or "fp16"                                     resolved autocast dtype

Weights are identified by their content, never by their path: a copied or moved teacher directory is the same
teacher, and a teacher retrained in the same directory is another one.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .runtime import precision_name

# TrainConfig fields that change how a run is executed or watched, not what it computes.
RUNTIME_FIELDS = ("device", "amp", "progress", "checkpoint_every", "keep_checkpoint")


START_FRESH = "pass --overwrite to start fresh, or use another output directory"


class RunMismatch(ValueError):
    """A stored run (checkpoint, result) was made with other settings than the ones asked for.

    args: (where, what differs, how to start fresh); str(): the one-line message."""

    def __init__(self, where, problem: str, hint: str = START_FRESH):
        super().__init__(str(where), problem, hint)

    def __str__(self) -> str:
        return "{}: {}; {}".format(*self.args)


def tensors_digest(tensors: dict) -> str:
    """sha256 (16 hex digits) over the names, dtypes, shapes and bytes of a dict of tensors (e.g. a state_dict)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        if t is None:
            continue
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        flat = t.detach().cpu().contiguous().reshape(-1)  # 1-D: view(uint8) also works on a 0-dim tensor
        h.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")  # the buffer itself: no copy
    return h.hexdigest()[:16]


def file_digest(path) -> str:
    """sha256 (16 hex digits) of a file's content. Remembered per (path, size, mtime, inode) within a process: a
    rewritten file (an atomic replace is a new inode) is read again; reproduce asks for its teacher's 9 times."""
    st = os.stat(path)
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def features_digest(features) -> str:
    """sha256 (16 hex digits) of all token ids and segment ids: equal digests = identical model inputs."""
    h = hashlib.sha256()
    for ids, types in zip(features.input_ids, features.token_type_ids):
        h.update(ids.astype("int32").tobytes() + b"|" + types.astype("int8").tobytes() + b";")
    return h.hexdigest()[:16]


def data_digest(features) -> str:
    """features_digest plus the labels: what a training or evaluation split really is."""
    h = hashlib.sha256(features_digest(features).encode())
    if features.labels is not None:
        h.update(np.ascontiguousarray(features.labels).tobytes())
    return h.hexdigest()[:16]


def run_identity(config, model, loss_fn, loss_config, train_data, dev_data, teacher_targets: Optional[dict],
                 amp_dtype: Optional[torch.dtype]) -> dict:
    """The flat dict that identifies a training run (see the module docstring); call it before the first step.

    model: a bert_mini BertForSequenceClassification with its starting weights (its config and execution plan, e.g.
    SPS, are part of the identity); loss_fn: the built loss (its spec and initial parameters, e.g. projections);
    teacher_targets: the teacher rows (or live teacher's state_dict) the loss reads, None without a teacher.
    """
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME_FIELDS}
    losses = dataclasses.asdict(loss_config)
    losses["layer_map"] = [list(p) for p in losses["layer_map"]]
    architecture = json.dumps(model.config.to_dict(), sort_keys=True).encode()
    start = {**{f"model.{k}": v for k, v in model.state_dict().items()},
             **{f"loss.{k}": v for k, v in loss_fn.state_dict().items()}}
    return {**settings, "loss": getattr(loss_fn, "spec", type(loss_fn).__name__), **losses,
            "train_examples": len(train_data), "train_data": data_digest(train_data),
            "dev_examples": len(dev_data), "dev_data": data_digest(dev_data),
            "model_config": hashlib.sha256(architecture).hexdigest()[:16],
            "plan": [[int(i), bool(swap)] for i, swap in model.bert.encoder.plan],
            "start_weights": tensors_digest(start),
            "teacher_targets": None if teacher_targets is None else tensors_digest(teacher_targets),
            "precision": precision_name(amp_dtype)}


def differences(stored: dict, current: dict) -> list[str]:
    """"name stored -> current" for every key whose value differs (a missing key reads as None)."""
    return [f"{k} {stored.get(k)!r} -> {current.get(k)!r}" for k in dict.fromkeys([*stored, *current])
            if stored.get(k) != current.get(k)]


def check_same_run(where, stored: Optional[dict], current: dict, action: str) -> None:
    """RunMismatch (one line) unless `stored` == `current`. `where`: the file holding `stored`; `action`: e.g.
    "cannot resume". A stored run without an identity (an older version wrote it) cannot be verified: refused."""
    if stored is None:
        raise RunMismatch(where, f"{action}: it records no run identity (written by an older pea-kd), so it may have "
                                 "been made with other settings")
    changed = differences(stored, current)
    if changed:
        raise RunMismatch(where, f"{action}, settings changed: {', '.join(changed)}")
