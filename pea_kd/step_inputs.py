"""Machinery: what one training step reads, on its device: the batch and the teacher's targets for its rows.

A step of the training loop names a global batch of example indices. `StepInputs.load` turns them into tensors:
this process's share of them (pea_kd.distributed.share; all of them in a plain run), padded (features.collate),
copied to the device (asynchronously on CUDA only, runtime.non_blocking), with the cached teacher outputs of those
rows, z_t = teacher[batch.index] (pea_kd.teacher_rows): no teacher forward pass at all. A loss that needs what the
cache does not hold (teacher attentions) gets a live teacher's forward instead (`teacher_targets`); one that reads every
token's hidden states ("hidden") gets only those from the live teacher, the rest from the cache. Training data with
examples that have no gold label (pea_kd.augment) gives the loss their mask, has_gold.

Set-up checks, each refused in one line before any training: the cache holds the fields and teacher layers the loss
reads, and has one row per training example. `identity` names the teacher part of a run (pea_kd.identity) by the
digests recorded when the rows were written: nothing is re-read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import distributed
from .features import Features, collate
from .identity import tensors_digest
from .runtime import non_blocking
from .teacher_rows import TeacherRows

CACHED_FIELDS = (("teacher_logits", "logits"), ("teacher_cls_hidden", "cls_hidden"))  # LossInputs field, rows field
LIVE_FIELDS = ("teacher_attentions", "teacher_hidden_states")  # never cached: a live teacher's forward
GOLD_MISSING = -1  # the label of an example without a gold label (pea_kd.augment's variants); NaN for regression


def gold_mask(labels) -> np.ndarray:
    """(N,) bool: which examples have a gold label (not GOLD_MISSING, not NaN)."""
    labels = np.asarray(labels)
    return ~np.isnan(labels) if np.issubdtype(labels.dtype, np.floating) else labels != GOLD_MISSING


@dataclass
class Batch:
    """One step's examples on the device. `batch[key]` reads `tensors`."""

    tensors: dict  # input_ids, token_type_ids, attention_mask (B, T); labels (B,); index (B,) example indices
    teacher: dict  # cached teacher rows as LossInputs fields: teacher_logits (B, C), teacher_cls_hidden (B, L_t+1, H_t)
    #                (and has_gold (B,) when some training examples have no gold label)
    weight: float  # w_r = W n_r / N of this process's loss (pea_kd.distributed.share); 1 in a plain run
    examples: int  # N, the examples of the global batch
    tokens: int  # real (non-pad) tokens of this process's share

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]


class StepInputs:
    """Batches of `train_data` and the teacher targets a loss (`loss_fn`, its `requires`) reads, on `device`.

    teacher: cached rows of the train split (TeacherRows), or None; live_teacher: a model run under no_grad, only for
    losses that need teacher attentions. Raises ValueError (one line) when they cannot give what the loss reads.
    """

    def __init__(self, train_data: Features, loss_fn, loss_name: str, layer_map, teacher: Optional[TeacherRows],
                 live_teacher, device: torch.device, pad_token_id: int):
        self.train_data, self.device, self.pad_token_id = train_data, device, pad_token_id
        self.loss_fn, self.loss_name, self.layer_map = loss_fn, loss_name, layer_map
        self.requires = getattr(loss_fn, "requires", frozenset({"labels"}))
        live = [f for f in LIVE_FIELDS if f in self.requires]
        if live and live_teacher is None:
            raise ValueError(f"train: loss {loss_name!r} needs {live[0]}, which the teacher cache "
                             "lacks; pass live_teacher=<teacher model>")
        self.live_teacher = live_teacher.to(device).eval() if live_teacher is not None else None
        # a live teacher gives an attention loss everything; a per-token hidden-state loss only those states
        self.hidden_only = live == ["teacher_hidden_states"]
        # {LossInputs field: rows field} of what the loss reads from the cache (none when a live teacher gives all)
        self.teacher_fields = {} if live_teacher is not None and not self.hidden_only else {
            f: k for f, k in CACHED_FIELDS if f in self.requires}
        self.rows = self._checked_rows(teacher) if self.teacher_fields else None
        self.has_gold = self._gold_mask(train_data.labels)

    def _checked_rows(self, teacher: Optional[TeacherRows]) -> TeacherRows:
        """The rows stay where the cache put them, in host memory (memory-mapped by load_teacher_outputs, so the
        ranks of a torchrun job share one copy); each step moves only its batch's rows to the device."""
        missing = [f for f, k in self.teacher_fields.items() if teacher is None or getattr(teacher, k) is None]
        if missing:
            raise ValueError(f"train: loss {self.loss_name!r} needs {', '.join(missing)}: pass teacher=<cached "
                             "teacher outputs of the train split> (pea_kd.teacher_cache.load_teacher_outputs)")
        if len(teacher) != len(self.train_data):
            raise ValueError(f"train: the teacher cache has {len(teacher)} rows, the train data "
                             f"{len(self.train_data)} examples")
        absent = teacher.missing_layers(self.teacher_layers(teacher)) if self._reads_hidden() else []
        if absent:
            raise ValueError(f"train: loss {self.loss_name!r} reads teacher layers {_listed(absent)}, which the "
                             f"teacher cache does not hold (it has {_listed(teacher.layers)} of 0..{teacher.num_layers}"
                             "); recompute it with those layers (ensure_teacher_outputs(..., layers=...))")
        return teacher

    @staticmethod
    def _gold_mask(labels) -> Optional[torch.Tensor]:
        """(N,) bool, False for the examples with no gold label (augmented ones); None when every one has it."""
        gold = gold_mask(labels) if labels is not None else None
        return None if gold is None or gold.all() else torch.from_numpy(gold)

    def _reads_hidden(self) -> bool:
        return "cls_hidden" in self.teacher_fields.values()

    def teacher_layers(self, teacher: TeacherRows) -> tuple[int, ...]:
        """The teacher_cls_hidden indices the loss reads; every layer for a loss module that does not say."""
        if hasattr(self.loss_fn, "teacher_layers_read"):
            return self.loss_fn.teacher_layers_read(self.layer_map, teacher.num_layers)
        return tuple(range(teacher.num_layers + 1))

    def identity(self) -> Optional[dict]:
        """The teacher part of the run identity, from the digests recorded with the rows (or the live teacher's
        weights); None without a teacher."""
        live = None if self.live_teacher is None else tensors_digest(self.live_teacher.state_dict())
        if self.rows is None:
            return None if live is None else {"teacher_targets": live}
        layers = self.teacher_layers(self.rows) if self._reads_hidden() else ()
        rows = self.rows.identity(set(self.teacher_fields.values()), layers)
        return rows if live is None else {**rows, "teacher_live": live}

    def load(self, indices: np.ndarray) -> Batch:
        """The global batch `indices` as this process's share on the device, with its cached teacher rows."""
        examples, (indices, weight) = len(indices), distributed.share(indices)  # this rank's share, w_r = W n_r / N
        batch = collate(self.train_data, indices, pad_token_id=self.pad_token_id)
        tokens = int(batch["attention_mask"].sum())
        copy = non_blocking(self.device)  # asynchronous host-to-device copies on CUDA only
        teacher = {}  # this batch's teacher rows, moved to the device (only the stored layers of cls_hidden)
        if "teacher_logits" in self.teacher_fields:
            teacher["teacher_logits"] = self.rows.logits.index_select(0, batch["index"]).to(self.device,
                                                                                            non_blocking=copy)
        if "teacher_cls_hidden" in self.teacher_fields:
            teacher["teacher_cls_hidden"] = self.rows.cls_rows(batch["index"], self.device)
        if self.has_gold is not None:  # augmented data: the task loss skips the examples without a gold label
            teacher["has_gold"] = self.has_gold.index_select(0, batch["index"]).to(self.device, non_blocking=copy)
        tensors = {k: v.to(self.device, non_blocking=copy) for k, v in batch.items()}
        return Batch(tensors, teacher, weight, examples, tokens)

    def teacher_targets(self, batch: Batch) -> dict:
        """z_t (and h_t, attentions) of `batch` as LossInputs fields: its cached rows, or the live teacher's forward."""
        if self.live_teacher is None:
            return batch.teacher
        live = run_live_teacher(self.live_teacher, batch.tensors, self.requires)
        return {**batch.teacher, **({"teacher_hidden_states": live["teacher_hidden_states"]} if self.hidden_only
                                    else live)}


@torch.no_grad()
def run_live_teacher(teacher, batch: dict, requires) -> dict:
    """Teacher outputs for a loss that needs more than the cache holds (no_grad: targets, not inference tensors)."""
    out = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], output_hidden_states=True,
                  output_attentions="teacher_attentions" in requires)
    return {"teacher_logits": out.logits, "teacher_attentions": out.attentions,
            "teacher_hidden_states": out.hidden_states,
            "teacher_cls_hidden": torch.stack([h[:, 0] for h in out.hidden_states], dim=1)}


def _listed(layers) -> str:
    return ", ".join(str(x) for x in layers) or "none"


def as_teacher_rows(teacher) -> Optional[TeacherRows]:
    """`teacher` as TeacherRows: rows made in memory ({"logits", "cls_hidden"}, every layer) are hashed here, as
    nothing recorded them; TeacherRows or None unchanged."""
    if isinstance(teacher, dict):
        return TeacherRows.from_tensors(teacher.get("logits"), teacher.get("cls_hidden"))
    return teacher
