"""What a run *is*: everything that determines its output. Reuse (a finished run, `--resume`, the teacher cache,
`reproduce`'s stage skipping) happens only when all of it matches; otherwise a one-line error names what differs.

    identity = TrainConfig without runtime settings (device, progress, checkpointing)  e.g. lr, epochs, batch_size
             + loss spec and LossConfig weights                                        alpha, temperature, beta, ...
             + data: digests of the model inputs and labels, example counts            data files, max_train_examples,
                                                                                        tokenizer, max_length
             + architecture: model config digest and execution plan                    SPS variant, layers
             + starting weights: sha256 of the model's (and the loss's) initial tensors pre-trained or PTP encoder,
                                                                                        new head (seeded)
             + teacher targets: digest of the teacher rows the loss reads, their layers which teacher, which cache
               and storage dtype (teacher_targets, teacher_layers, teacher_dtype)       rows, layout
             + precision: "fp32", "bf16" or "fp16"                                     resolved autocast dtype

Weights are identified by their content, never by their path: a copied or moved teacher directory is the same
teacher, and a teacher retrained in the same directory is another one.

Nothing here re-reads data that was identified once. The digests of the model inputs are computed when the features
are encoded and stored in their cache file (Features.digest); the teacher rows' digests, one per tensor and per
stored layer, when the teacher cache is written (pea_kd.teacher_cache). A run combines the recorded digests of what
it reads; a part of them (a subset, the first n rows) is named by derived_digest(recorded digest, how it was taken).
What this promises: both files are written atomically (pea_kd.storage) with their digests inside, so a file that was
replaced by another cache brings its own digests and is judged by them. A file edited in place by hand keeping its
old digests is not detected: that would take re-reading every row, the cost this design removes (`cache-teacher
--verify` re-reads a teacher cache on request; the features file's zip CRCs are checked on every read).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

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
        if tensors[name] is not None:
            h.update(f"{name}|".encode())
            _hash_tensor(h, tensors[name])
    return h.hexdigest()[:16]


def rows_digest(rows: torch.Tensor) -> str:
    """sha256 (16 hex digits) over one tensor's dtype, shape and bytes, e.g. one layer of the teacher cache's
    cls_hidden[:, k]: computed when the cache is written, so that runs name what they read without reading it."""
    h = hashlib.sha256()
    _hash_tensor(h, rows)
    return h.hexdigest()[:16]


def _hash_tensor(h, t: torch.Tensor, block_rows: int = 1 << 16) -> None:
    """Feed dtype, shape and bytes (row-major) to `h`, `block_rows` rows at a time: a strided slice of a large
    memory-mapped tensor is copied one block at a time, never whole."""
    h.update(f"{t.dtype}|{tuple(t.shape)};".encode())
    t = t.detach().cpu().reshape(1) if t.dim() == 0 else t.detach().cpu()  # 1-D at least: view(uint8) needs it
    for start in range(0, len(t), block_rows):
        flat = t[start:start + block_rows].contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")  # the buffer itself: no further copy


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


def derived_digest(parent: str, *parts: bytes) -> str:
    """sha256 (16 hex digits) of a recorded digest and what was done to its rows (e.g. b"subset" + the indices): names
    a part of something already identified without reading it."""
    h = hashlib.sha256(parent.encode())
    for part in parts:
        h.update(b"|" + part)
    return h.hexdigest()[:16]


def inputs_digest(input_ids, token_type_ids) -> str:
    """sha256 (16 hex digits) over every example's int32 token ids and int8 segment ids (Features.digest)."""
    h = hashlib.sha256()
    for ids, types in zip(input_ids, token_type_ids):
        h.update(ids.astype("int32").tobytes() + b"|" + types.astype("int8").tobytes() + b";")
    return h.hexdigest()[:16]


def features_digest(features) -> str:
    """The digest of the model inputs (token and segment ids) recorded with `features` (Features.digest): equal
    digests = identical model inputs."""
    return features.digest


def data_digest(features) -> str:
    """The recorded digests of the inputs and of the labels together: what a training or evaluation split really is."""
    return hashlib.sha256(f"{features_digest(features)}|{features.labels_digest}".encode()).hexdigest()[:16]


def run_identity(config, model, loss_fn, loss_config, train_data, dev_data, teacher: Optional[dict],
                 amp_dtype: Optional[torch.dtype]) -> dict:
    """The flat dict that identifies a training run (see the module docstring); call it before the first step.

    model: a bert_mini BertForSequenceClassification with its starting weights (its config and execution plan, e.g.
    SPS, are part of the identity); loss_fn: the built loss (its spec and initial parameters, e.g. projections);
    train_data, dev_data: Features, named by their recorded digests (Features.digest) and their labels;
    teacher: what the loss reads of the teacher, {"teacher_targets": digest, ...} (TeacherRows.identity, from the
    digests recorded in the cache, or a live teacher's weights digest), None without a teacher.
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
            **(teacher or {"teacher_targets": None}),
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
