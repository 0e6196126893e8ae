"""The one training loop of pea-kd: teacher fine-tuning, PTP and distillation all run through `train`.

    for epoch e:   batches = make_batches(train, B, shuffle=True, seed, e)        # depend only on (seed, e)
      for batch:   z_s, h_s = student(x)                 # hidden states/attentions only when the loss reads them
                   z_t, h_t = teacher[batch.index]       # rows of the cached teacher outputs: no teacher forward
                   L = loss(LossInputs(...));  g = dL/dtheta
                   g <- g * min(1, max_grad_norm / ||g||_2)                      # global clipping
                   theta <- AdamW(theta, g, lr_t)   lr_t = lr * f(t),  f: linear warm-up, then linear decay to 0
      every eval_every steps and at each epoch end: dev loss + metrics -> log.jsonl, best-so-far, checkpoint.pt

Files in out_dir: log.jsonl (one line per evaluation), checkpoint.pt (resume; removed when the run completes unless
keep_checkpoint), final/ (the model at the end of training), best/ (keep_best: the model with the best dev `select`
score) and result.json. `final_*` is the honest headline; `best_dev_*` is selected *and* scored on the dev set (what
the authors report), so it is optimistic.

Deliberate differences from the authors' BertAdam loop (docs/method.md#where-we-differ): torch.optim.AdamW (with
bias correction, eps 1e-8; BertAdam had none and eps 1e-6), one global gradient-norm clip instead of one per tensor,
shuffled training data (theirs was sequential), the schedule applied once and run to its end, and the dev loss
computed on dev data (C1/C2 logged the last training batch's loss).

Resume: batches of epoch e depend only on (seed, e), so a run restored from checkpoint.pt skips the batches of its
epoch it had already trained, restores optimiser, schedule, GradScaler and RNG states, and on CPU reaches bit-identical
weights and metrics to an uninterrupted run.

Under torchrun the same loop runs in every process; the lines marked `distributed.` are no-ops in a plain run
(pea_kd.distributed explains how a global batch is shared and why only rank 0 evaluates and writes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from . import distributed
from .features import Features, collate, count_batches, make_batches
from .glue import get_task
from .identity import check_same_run, run_identity, tensors_digest
from .losses import LossConfig, LossInputs, build_loss, task_loss
from .runtime import (keep_freed_memory, non_blocking, precision_name, resolve_amp, resolve_device, rng_state,
                      set_rng_state, set_seed)
from .storage import directory_lock, storage_error, write_atomic
from .teacher_rows import TeacherRows

log = logging.getLogger(__name__)
CHECKPOINT, LOG, RESULT = "checkpoint.pt", "log.jsonl", "result.json"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite. The run stops; checkpoint.pt still holds the last good state."""


@dataclass
class TrainConfig:
    """Optimisation settings of one run. Stage defaults (docs/method.md#authors-settings) live in pea_kd.cli.

    lr: peak learning rate (authors: 2e-5 for teacher, PTP and KD).   warmup: fraction of all steps spent warming up.
    weight_decay: AdamW decay, not applied to biases and LayerNorm weights.   max_grad_norm: global L2 clip (0 = off).
    eval_every: evaluate every N optimiser steps (0 = only at the end of each epoch; epoch ends are always evaluated).
    checkpoint_every: None = write checkpoint.pt at every evaluation, N = every N steps, 0 = never.
    select: dev score that picks `best_dev_*`: "auto" (the task's primary metric, or the first key of metrics_fn),
        a metric name (higher is better), or "loss" (dev loss, lower is better; used by PTP).
    device: "auto" (cuda if available, else mps on Apple silicon, else cpu), "cpu", "cuda", "cuda:1", "mps".
    amp: "auto" (bf16 autocast where the device has native bf16, CPU or CUDA; else fp16 with a GradScaler on CUDA,
        fp32 on CPU and MPS), "bf16", "fp16" (CUDA, MPS), "off" (fp32). Weights, optimiser state and loss stay fp32
        (runtime.resolve_amp).
    progress: tqdm bar; None = only when stderr is a terminal.
    """

    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int = 0
    eval_batch_size: int = 64
    checkpoint_every: Optional[int] = None
    keep_checkpoint: bool = False
    keep_best: bool = False
    select: str = "auto"
    device: str = "auto"
    amp: str = "auto"
    progress: Optional[bool] = None

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and 0 <= self.warmup < 1 and self.weight_decay >= 0 and self.max_grad_norm >= 0):
            raise ValueError(f"TrainConfig: need lr > 0, 0 <= warmup < 1, weight_decay >= 0, max_grad_norm >= 0; "
                             f"got lr={self.lr}, warmup={self.warmup}, weight_decay={self.weight_decay}, "
                             f"max_grad_norm={self.max_grad_norm}")
        if self.eval_every < 0 or (self.checkpoint_every or 0) < 0 or self.seed < 0:
            raise ValueError("TrainConfig: eval_every, checkpoint_every and seed must be >= 0")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"TrainConfig: amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        # an unknown or absent device is refused here, before any work, and so is MPS under torchrun
        distributed.check_device(resolve_device(self.device))


@dataclass
class TrainResult:
    """What a run produced. `final_*`: the end of training (the honest number). `best_dev_*`: the best evaluation by
    `select`, chosen on the same dev set it is scored on (optimistic; the authors report this)."""

    final_metrics: dict
    final_dev_loss: float
    final_step: int
    best_dev_metrics: dict
    best_dev_loss: float
    best_dev_step: int
    select: str
    history: list = field(default_factory=list)
    timing: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    out_dir: str = ""

    @property
    def seconds(self) -> float:
        """Wall time of the run: training plus dev evaluations."""
        return self.timing["train_seconds"] + self.timing["eval_seconds"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path) -> "TrainResult":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class _State:
    """The plain-Python part of a checkpoint: where the loop is and what it has seen so far."""

    epoch: int = 0  # epoch being trained
    batch_in_epoch: int = 0  # batches of that epoch already trained
    step: int = 0  # optimiser steps so far
    loss_sum: float = 0.0  # sum of batch losses since the last evaluation
    part_sums: dict = field(default_factory=dict)
    loss_count: int = 0
    best_value: Optional[float] = None
    best_record: Optional[dict] = None
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    examples: int = 0
    tokens: int = 0  # real (non-pad) tokens trained on


def param_groups(modules, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights decay; biases and LayerNorm weights (every tensor with < 2 dims) do not."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for p in module.parameters():  # parameters() yields a shared tensor once; `seen` dedups across modules
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """f(t) for the update at step t (0-based): (t+1)/W while t < W, then (T-t)/(T-W), reaching 0 after step T-1."""
    def f(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        return max(0.0, (total_steps - t) / max(1, total_steps - warmup_steps))
    return f


@torch.inference_mode()
def predict(model, data: Features, device, batch_size: int = 64, amp_dtype=None) -> torch.Tensor:
    """Logits (N, C) float32 in example order; sorted-by-length batches, eval mode (restores the previous mode)."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(data), model.num_labels, dtype=torch.float32)
    for idx in make_batches(data, batch_size, shuffle=False):
        b = collate(data, idx, pad_token_id=model.config.pad_token_id)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(b["input_ids"].to(device), b["attention_mask"].to(device), b["token_type_ids"].to(device),
                           cls_only=True).logits  # the logits read the last layer's [CLS] row only
        out[b["index"]] = logits.float().cpu()
    model.train(was_training)
    return out


def train(model, train_data: Features, dev_data: Features, *, task, out_dir, config: Optional[TrainConfig] = None,
          loss="ce", loss_config: Optional[LossConfig] = None, teacher: Optional[dict] = None, live_teacher=None,
          metrics_fn: Optional[Callable] = None, save_fn: Optional[Callable] = None, resume: bool = False,
          overwrite: bool = False, meta: Optional[dict] = None) -> TrainResult:
    """Train `model` (a BertForSequenceClassification) on `train_data`, evaluating on `dev_data`.

    task: GLUE task name for compute_metrics (ignored when metrics_fn(preds, labels) -> dict is given, e.g. PTP).
    loss: a spec for losses.build_loss ("ce", "kd", "kd+pkd", ...) or a built module with forward(LossInputs).
    loss_config: LossConfig (alpha, T, beta, layer_map, ...); is_regression is set from model.num_labels.
    teacher: cached teacher outputs of the *train* split, rows in example order: TeacherRows.from_cache(cache,
        "train") (pea_kd.teacher_rows; it may hold only the layers the loss reads), or a dict {"logits": (N, C),
        "cls_hidden": (N, L_t+1, H_t)} holding every layer; live_teacher: a model run under no_grad, only for losses
        that need what the cache lacks (teacher attentions).
    save_fn(model, path): how to write final/ and best/ (default bert_mini.save_pretrained).
    resume: continue from out_dir/checkpoint.pt (or return the stored result of a finished run); without it an
        out_dir holding a run is refused unless overwrite=True.
    meta: extra facts stored in result.json (stage, task, model, ...).
    """
    trainer = Trainer(model, train_data, dev_data, task=task, out_dir=out_dir, config=config, loss=loss,
                      loss_config=loss_config, teacher=teacher, live_teacher=live_teacher, metrics_fn=metrics_fn,
                      save_fn=save_fn, meta=meta)
    return trainer.fit(resume=resume, overwrite=overwrite)


class Trainer:
    """One run: set-up in __init__, the loop in `fit`, one optimiser step in `step`, dev evaluation in `evaluate`."""

    def __init__(self, model, train_data: Features, dev_data: Features, *, task, out_dir, config=None, loss="ce",
                 loss_config=None, teacher=None, live_teacher=None, metrics_fn=None, save_fn=None, meta=None):
        from bert_mini import save_pretrained

        self.config = config = config or TrainConfig()
        if config.select not in ("auto", "loss") and metrics_fn is None and config.select not in _task_metrics(task):
            raise ValueError(f"train: select={config.select!r} is not a metric of {get_task(task).name}; "
                             f"choose loss or one of {', '.join(_task_metrics(task))}")
        if train_data.labels is None or dev_data.labels is None:
            raise ValueError("train: train and dev features need labels")
        self.model, self.train_data, self.dev_data, self.task = model, train_data, dev_data, task
        self.metrics_fn, self.save_fn, self.meta = metrics_fn, save_fn or save_pretrained, meta or {}
        self.out_dir = Path(out_dir)
        self.ckpt_path, self.log_path, self.result_path = (self.out_dir / n for n in (CHECKPOINT, LOG, RESULT))
        self.device = resolve_device(config.device)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        self.is_regression = model.num_labels == 1
        self.loss_config = dataclasses.replace(loss_config or LossConfig(), is_regression=self.is_regression)
        if isinstance(teacher, dict):  # rows made in memory, every layer: hashed here, as nothing recorded them
            teacher = TeacherRows.from_tensors(teacher.get("logits"), teacher.get("cls_hidden"))
        teacher_hidden = teacher.hidden_size if teacher is not None else None
        self.loss_fn = build_loss(loss, model.config.hidden_size, teacher_hidden) if isinstance(loss, str) else loss
        self.loss_name = getattr(self.loss_fn, "spec", type(self.loss_fn).__name__)
        self.requires = getattr(self.loss_fn, "requires", frozenset({"labels"}))
        # what the loss reads of the student's last layer: its [CLS] row only (LossModule.student_cls_only), or more
        self.student_cls_only = getattr(self.loss_fn, "student_cls_only", False)
        self.teacher_rows, self.teacher_fields, self.live_teacher = self._teacher_inputs(teacher, live_teacher)
        # what this run is (pea_kd.identity): a checkpoint or result is reused only when all of it matches. Data and
        # teacher rows are named by the digests recorded when their cache files were written: nothing is re-read.
        self.identity = run_identity(config, model, self.loss_fn, self.loss_config, train_data, dev_data,
                                     self._teacher_identity(), self.amp_dtype)
        keep_freed_memory()  # each step's 47 MB word-embedding gradient from the heap, not from fresh pages (runtime)
        model.to(self.device)
        self.loss_fn.to(self.device)
        self.train_model = distributed.wrap(model, self.loss_fn)  # under torchrun: DDP (averages gradients), else model
        # fused=True: one kernel updates every tensor (CPU, CUDA, MPS); an FT epoch on MRPC, 2 CPU threads: -2.5% time
        self.optimizer = torch.optim.AdamW(param_groups([model, self.loss_fn], config.weight_decay), lr=config.lr,
                                           fused=True)
        self.steps_per_epoch = [count_batches(len(train_data), config.batch_size)] * config.epochs
        self.total_steps = sum(self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(self.total_steps, int(config.warmup * self.total_steps)))
        # fp16 only (CUDA or MPS: runtime.resolve_amp refuses it elsewhere)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.state = _State()

    def _teacher_inputs(self, teacher: Optional[TeacherRows], live_teacher):
        """(rows, {LossInputs field: cached tensor}, live teacher): the cached teacher rows the loss reads (or the live
        teacher, for attentions). The rows stay where the cache put them, in host memory (memory-mapped by
        load_teacher_outputs, so the ranks of a torchrun job share one copy); each step moves only its batch's rows
        to the device. A loss that needs a layer the cache does not hold is refused here, in one line."""
        if "teacher_attentions" in self.requires and live_teacher is None:
            raise ValueError(f"train: loss {self.loss_name!r} needs teacher attentions, which the teacher cache "
                             "lacks; pass live_teacher=<teacher model>")
        if live_teacher is not None:
            return None, {}, live_teacher.to(self.device).eval()
        fields = {f: k for f, k in (("teacher_logits", "logits"), ("teacher_cls_hidden", "cls_hidden"))
                  if f in self.requires}
        missing = [f for f, k in fields.items() if teacher is None or getattr(teacher, k) is None]
        if missing:
            raise ValueError(f"train: loss {self.loss_name!r} needs {', '.join(missing)}: pass teacher=<cached "
                             "teacher outputs of the train split> (pea_kd.teacher.load_teacher_outputs)")
        if fields and len(teacher) != len(self.train_data):
            raise ValueError(f"train: the teacher cache has {len(teacher)} rows, the train data "
                             f"{len(self.train_data)} examples")
        absent = teacher.missing_layers(self._teacher_layers(teacher)) if "cls_hidden" in fields.values() else []
        if absent:
            raise ValueError(f"train: loss {self.loss_name!r} reads teacher layers {_listed(absent)}, which the "
                             f"teacher cache does not hold (it has {_listed(teacher.layers)} of 0..{teacher.num_layers}"
                             "); recompute it with those layers (ensure_teacher_outputs(..., layers=...))")
        return (teacher if fields else None), fields, None

    def _teacher_layers(self, teacher: TeacherRows) -> tuple[int, ...]:
        """The teacher_cls_hidden indices the loss reads; every layer for a loss module that does not say."""
        if hasattr(self.loss_fn, "teacher_layers_read"):
            return self.loss_fn.teacher_layers_read(self.loss_config.layer_map, teacher.num_layers)
        return tuple(range(teacher.num_layers + 1))

    def _teacher_identity(self) -> Optional[dict]:
        """The teacher part of the run identity, from the digests recorded with the rows (or the live teacher's
        weights); None without a teacher."""
        if self.live_teacher is not None:
            return {"teacher_targets": tensors_digest(self.live_teacher.state_dict())}
        if self.teacher_rows is None:
            return None
        layers = self._teacher_layers(self.teacher_rows) if "cls_hidden" in self.teacher_fields.values() else ()
        return self.teacher_rows.identity(set(self.teacher_fields.values()), layers)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, overwrite: bool = False) -> TrainResult:
        """Train for config.epochs (from checkpoint.pt when resuming), write final/ and result.json. out_dir is
        locked meanwhile (storage.directory_lock); a full disk or read-only directory is a one-line StorageError."""
        with directory_lock(self.out_dir) if distributed.is_main() else contextlib.nullcontext():  # rank 0's lock
            try:
                return self._fit(resume, overwrite)
            except OSError as err:
                raise storage_error(err.filename or self.out_dir, err) from None

    def _fit(self, resume: bool, overwrite: bool) -> TrainResult:
        config = self.config
        if resume and self.result_path.is_file() and not self.ckpt_path.is_file():
            done = TrainResult.load(self.result_path)
            check_same_run(self.result_path, done.meta.get("identity"), self.identity, "cannot reuse this finished run")
            log.info("%s: run already finished; returning its result", self.out_dir)
            return dataclasses.replace(done, out_dir=str(self.out_dir))  # if moved
        with distributed.main_process_first():  # under torchrun: rank 0 clears an overwritten run before the others look
            if not resume and any(p.exists() for p in (self.ckpt_path, self.log_path, self.result_path)):
                if not overwrite:
                    raise FileExistsError(f"{self.out_dir} already holds a run; resume it (--resume) or pass "
                                          "--overwrite")
                for p in (self.ckpt_path, self.log_path, self.result_path):
                    p.unlink(missing_ok=True)
        if resume and self.ckpt_path.is_file():
            self.load_checkpoint()
        else:
            if resume:  # killed before its first checkpoint: nothing to continue from
                log.info("%s: no checkpoint.pt to resume from; starting from scratch", self.out_dir)
                self.log_path.unlink(missing_ok=True)
            set_seed(config.seed)  # dropout draws depend on the seed only, not on how the model was built
            distributed.seed_per_rank(config.seed)
        state = self.state
        self.model.train()
        self.show = (config.progress if config.progress is not None else sys.stderr.isatty()) and distributed.is_main()
        # leave=None: kept on screen when it is the only bar, cleared when it runs under reproduce's overall bar
        bar = tqdm(total=self.total_steps, initial=state.step, disable=not self.show, unit="step",
                   desc=f"train {self.out_dir.name}", leave=None)
        for epoch in range(state.epoch, config.epochs):
            batches = make_batches(self.train_data, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch)
            for b in range(state.batch_in_epoch, len(batches)):  # on resume: skip the batches already trained
                self.step(batches[b], where=f"epoch {epoch}, batch {b}")
                state.epoch, state.batch_in_epoch = (epoch + 1, 0) if b + 1 == len(batches) else (epoch, b + 1)
                bar.update(1)
                bar.set_postfix(loss=f"{state.loss_sum / state.loss_count:.4f}", refresh=False,
                                ex_s=f"{state.examples / state.train_seconds:.1f}",
                                tok_s=f"{state.tokens / state.train_seconds:.0f}")
                evaluated = b + 1 == len(batches) or (config.eval_every and state.step % config.eval_every == 0)
                if evaluated and distributed.is_main():  # evaluated once, by rank 0
                    self.evaluate(bar)
                every = config.checkpoint_every
                if (every is None and evaluated) or (every and state.step % every == 0):
                    self.save_checkpoint()
        bar.close()
        if not distributed.is_main():  # the other ranks wait for rank 0's files and return its result
            distributed.barrier()
            return TrainResult.load(self.result_path)
        self.save_fn(self.model, self.out_dir / "final")
        result = self.result()
        write_atomic(self.result_path, json.dumps(result.to_dict(), indent=2) + "\n")
        if not config.keep_checkpoint:
            self.ckpt_path.unlink(missing_ok=True)
        distributed.barrier()
        return result

    def step(self, indices, where: str = "") -> None:
        """One optimiser step on the examples at `indices`; raises NonFiniteLossError before touching the weights."""
        t0, state, model = time.perf_counter(), self.state, self.model
        examples, (indices, weight) = len(indices), distributed.share(indices)  # this rank's share, w_r = W n_r / N
        batch = collate(self.train_data, indices, pad_token_id=model.config.pad_token_id)
        tokens = int(batch["attention_mask"].sum())
        copy = non_blocking(self.device)  # asynchronous host-to-device copies on CUDA only
        teacher = {}  # this batch's teacher rows, moved to the device (only the stored layers of cls_hidden)
        if "teacher_logits" in self.teacher_fields:
            teacher["teacher_logits"] = self.teacher_rows.logits.index_select(0, batch["index"]).to(
                self.device, non_blocking=copy)
        if "teacher_cls_hidden" in self.teacher_fields:
            teacher["teacher_cls_hidden"] = self.teacher_rows.cls_rows(batch["index"], self.device)
        batch = {k: v.to(self.device, non_blocking=copy) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.train_model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                   output_hidden_states="student_hidden_states" in self.requires,  # plain FT: none
                                   output_attentions="student_attentions" in self.requires,
                                   cls_only=self.student_cls_only)  # the last layer's [CLS] row, when that is all
            if self.live_teacher is not None:
                teacher.update(_run_live_teacher(self.live_teacher, batch, self.requires))
        # The loss outside autocast, on fp32 copies of the outputs: softmax(z/T), KL, the normalised MSE, CE (and a
        # plug-in loss's own layers) run in fp32 even when the matrix products above ran in bf16/fp16.
        result = self.loss_fn(LossInputs(
            student_logits=_fp32(out.logits), student_hidden_states=_fp32(out.hidden_states),
            student_attentions=_fp32(out.attentions), labels=batch["labels"], config=self.loss_config,
            attention_mask=batch["attention_mask"], **{f: _fp32(t) for f, t in teacher.items()}))
        value, parts, tokens = distributed.reduce_batch(result.total.detach(), result.parts, tokens, weight)
        if not math.isfinite(value):
            kept = self.ckpt_path if self.ckpt_path.is_file() else "no checkpoint"
            raise NonFiniteLossError(f"loss is {value} at global step {state.step + 1} ({where}); stopped. {kept} "
                                     "holds the last good state; try a lower --lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:  # fp16: scale the loss so that small gradients do not underflow
            self.scaler.scale(result.total * weight).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            (result.total * weight).backward()  # weight 1 in a plain run
        distributed.average_gradients(self.loss_fn)
        if self.config.max_grad_norm > 0:  # g <- g * min(1, max_norm / ||g||_2) over all parameters together
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        state.step += 1
        state.loss_sum += value
        state.loss_count += 1
        for k, v in parts.items():
            state.part_sums[k] = state.part_sums.get(k, 0.0) + float(v)
        state.examples += examples
        state.tokens += tokens
        state.train_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ evaluation and results
    def evaluate(self, bar=None) -> dict:
        """Dev loss (task CE/MSE on the dev labels) and metrics; logs a record, updates best-so-far (and best/)."""
        from .metrics import compute_metrics

        t0, state, config = time.perf_counter(), self.state, self.config
        logits = predict(self.model, self.dev_data, self.device, config.eval_batch_size, self.amp_dtype)
        labels = self.dev_data.labels
        dev_loss = float(task_loss(logits, torch.from_numpy(labels), self.is_regression))
        preds = (logits[:, 0] if self.is_regression else logits.argmax(-1)).numpy()
        metrics = self.metrics_fn(preds, labels) if self.metrics_fn else compute_metrics(self.task, preds, labels)
        n = max(state.loss_count, 1)
        epoch = state.epoch + (state.batch_in_epoch / self.steps_per_epoch[state.epoch] if state.batch_in_epoch else 0)
        record = {"step": state.step, "epoch": round(epoch, 4), "train_loss": state.loss_sum / n,
                  "train_parts": {k: v / n for k, v in state.part_sums.items()}, "dev_loss": dev_loss,
                  "metrics": metrics, "lr": self.scheduler.get_last_lr()[0],
                  "elapsed_s": state.train_seconds + state.eval_seconds,
                  "examples_per_s": state.examples / max(state.train_seconds, 1e-9)}
        state.loss_sum, state.part_sums, state.loss_count = 0.0, {}, 0
        key = self.select_key(metrics)
        value = dev_loss if key == "dev_loss" else metrics[key]
        if state.best_value is None or (value < state.best_value if key == "dev_loss" else value > state.best_value):
            state.best_value, state.best_record = value, record
            if config.keep_best:
                self.save_fn(self.model, self.out_dir / "best")
        state.history.append(record)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        line = (f"step {record['step']}: train loss {record['train_loss']:.4f}  dev loss {dev_loss:.4f}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        bar.write(line) if bar is not None and self.show else log.info(line)
        state.eval_seconds += time.perf_counter() - t0
        return record

    def select_key(self, metrics: dict) -> str:
        """The record field that picks best_dev_*: "dev_loss" (lower is better) or a metric (higher is better)."""
        select = self.config.select
        if select == "loss":
            return "dev_loss"
        if select == "auto":
            return next(iter(metrics)) if self.metrics_fn else get_task(self.task).primary_metric
        if select not in metrics:
            raise ValueError(f"train: select={select!r} is not a dev metric; available: loss, {', '.join(metrics)}")
        return select

    def result(self) -> TrainResult:
        state, config = self.state, self.config
        final, best = state.history[-1], state.best_record
        seconds = max(state.train_seconds, 1e-9)
        return TrainResult(
            final_metrics=final["metrics"], final_dev_loss=final["dev_loss"], final_step=final["step"],
            best_dev_metrics=best["metrics"], best_dev_loss=best["dev_loss"], best_dev_step=best["step"],
            select=self.select_key(final["metrics"]), history=state.history, out_dir=str(self.out_dir),
            meta={**self.meta, "config": dataclasses.asdict(config), "loss": self.loss_name, "device": str(self.device),
                  "amp": str(self.amp_dtype), "precision": precision_name(self.amp_dtype),
                  "total_steps": self.total_steps, "identity": self.identity},
            timing={"train_seconds": state.train_seconds, "eval_seconds": state.eval_seconds,
                    "seconds_per_epoch": state.train_seconds / config.epochs,
                    "examples_per_s": state.examples / seconds, "tokens_per_s": state.tokens / seconds})

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Everything needed to continue bit for bit, written atomically (pea_kd.storage.write_atomic)."""
        payload = {"version": 1, "config": dataclasses.asdict(self.config), "identity": self.identity,
                   "model": self.model.state_dict(), "loss_fn": self.loss_fn.state_dict(),
                   "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(),
                   "scaler": self.scaler.state_dict() if self.scaler else None,
                   "rng": rng_state(), "state": dataclasses.asdict(self.state),
                   **distributed.checkpoint_fields()}  # under torchrun: world size, every rank's RNG (all ranks call)
        if distributed.is_main():
            write_atomic(self.ckpt_path, lambda f: torch.save(payload, f))

    def load_checkpoint(self) -> None:
        try:
            ckpt = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
            identity = ckpt.get("identity")
        except Exception as err:  # truncated, corrupt, not a torch file, or a pickle that weights_only refuses
            raise ValueError(f"{self.ckpt_path}: unreadable checkpoint ({type(err).__name__}); delete it, or pass "
                             "--overwrite instead of --resume to start fresh") from None
        distributed.check_resume(ckpt, self.ckpt_path)  # the same number of processes as the run that wrote it
        check_same_run(self.ckpt_path, identity, self.identity, "cannot resume")
        self.model.load_state_dict(ckpt["model"])
        self.loss_fn.load_state_dict(ckpt["loss_fn"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = _State(**ckpt["state"])
        set_rng_state(distributed.rank_rng(ckpt))
        if not distributed.is_main():  # rank 0 alone trims log.jsonl
            return
        kept = [r for r in _read_log(self.log_path) if r["step"] <= self.state.step]  # drop evals after the checkpoint
        write_atomic(self.log_path, "".join(json.dumps(r) + "\n" for r in kept))
        log.info("%s: resuming at step %d (epoch %d, batch %d)", self.out_dir, self.state.step, self.state.epoch,
                 self.state.batch_in_epoch)


def _fp32(x):
    """A tensor (or tuple of tensors, or None) in float32: what autocast produced in 16 bits, upcast for the loss."""
    if isinstance(x, tuple):
        return tuple(_fp32(t) for t in x)
    return x.float() if x is not None and x.is_floating_point() else x


def _listed(layers) -> str:
    return ", ".join(str(x) for x in layers) or "none"


def _task_metrics(task) -> tuple:
    return get_task(task).metrics


@torch.no_grad()
def _run_live_teacher(teacher, batch: dict, requires) -> dict:
    """Teacher outputs for a loss that needs more than the cache holds (no_grad: targets, not inference tensors)."""
    out = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], output_hidden_states=True,
                  output_attentions="teacher_attentions" in requires)
    return {"teacher_logits": out.logits, "teacher_attentions": out.attentions,
            "teacher_cls_hidden": torch.stack([h[:, 0] for h in out.hidden_states], dim=1)}


def _read_log(path: Path) -> list[dict]:
    """The evaluation records in log.jsonl; a last line cut short by a kill is dropped."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records
