"""The one training loop of pea-kd: teacher fine-tuning, PTP and distillation all run through `train`.

Every step is the paper's step (`Trainer.step`), on a batch x with labels y:

    z_s, h_s = student(x)                      logits; [CLS] hidden states h_s only when the loss reads them
    z_t, h_t = teacher[batch.index]            rows of the cached teacher outputs: no teacher forward pass
    L = loss(z_s, h_s, z_t, h_t, y)            e.g. kd+pkd: alpha T^2 KL(softmax(z_t/T) || softmax(z_s/T))
                                                 + (1 - alpha) CE(z_s, y) + beta PKD(h_s, h_t)   (pea_kd.losses)
    g = dL/dtheta;  g <- g min(1, c / ||g||_2)  one global clip, c = max_grad_norm
    theta <- AdamW(theta, g, lr_t)              lr_t = lr f(t), f: linear warm-up, then linear decay to 0

The batches of epoch e are shuffled by (seed, e) alone. Every eval_every steps and at each epoch end the dev set is
scored (a line of out_dir/log.jsonl); at the end out_dir holds final/ (the model), best/ (keep_best) and result.json:
`final_*` is the honest headline, `best_dev_*` is selected *and* scored on dev (as the authors report): optimistic.

Where this loop differs from the authors' BertAdam loop (AdamW with bias correction, one global clip, shuffled data,
the dev loss on dev data), and why: docs/method.md#where-we-differ.

Machinery, one named call each, to skip on a first reading: several processes (pea_kd.distributed), mixed precision
(pea_kd.mixed_precision), the batch on its device with its teacher rows or a live teacher (pea_kd.step_inputs),
checkpoints, resume and the run directory (pea_kd.run_files), run identity (pea_kd.identity), memory and devices
(pea_kd.runtime), the progress bar (pea_kd.train_progress), the checks of settings and loss (pea_kd.train_checks).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from . import distributed
from .features import Features, collate, count_batches, make_batches
from .identity import run_identity
from .losses import LossConfig, LossInputs, build_loss, task_loss
from .mixed_precision import MixedPrecision, fp32_loss_inputs, inference_autocast
from .run_files import LoopState, RunFiles, TrainResult, locked, run_result
from .runtime import keep_freed_memory, resolve_amp, resolve_device
from .step_inputs import StepInputs, as_teacher_rows
from .train_checks import check_train_config, check_train_inputs, selection_key, stop_if_not_finite
from .train_progress import TrainingBar, report


@dataclass
class TrainConfig:
    """Optimisation settings of one run. Stage defaults (docs/method.md#authors-settings) live in pea_kd.cli.

    lr: peak learning rate (authors: 2e-5 for teacher, PTP and KD).   warmup: fraction of all steps spent warming up.
    weight_decay: AdamW decay, not applied to biases and LayerNorm weights.   max_grad_norm: global L2 clip (0 = off).
    eval_every: evaluate every N optimiser steps (0 = only at the end of each epoch; epoch ends are always evaluated).
    select: dev score that picks `best_dev_*`: "auto" (the task's primary metric, or the first key of metrics_fn),
        a metric name (higher is better), or "loss" (dev loss, lower is better; used by PTP).
    Machinery: checkpoint_every (None: when the last checkpoint.pt is 10 minutes old, N: every N steps, 0: never) and
    keep_checkpoint (pea_kd.run_files); device "auto", "cpu", "cuda", "cuda:1", "mps" (runtime.resolve_device); amp
    "auto", "bf16", "fp16", "off", weights and loss staying fp32 (runtime.resolve_amp); progress (None: on a terminal).
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
        check_train_config(self)  # a one-line error for an impossible setting or an absent device (train_checks)


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
    """f(k) at step k (0-based): (k+1)/N_warm while k < N_warm, then (N_steps-k)/(N_steps-N_warm), 0 at k = N_steps."""
    def f(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        return max(0.0, (total_steps - t) / max(1, total_steps - warmup_steps))
    return f


def predict(model, data: Features, device, batch_size: int = 64, amp_dtype=None) -> torch.Tensor:
    """Logits (N, C) float32 in example order; sorted-by-length batches, eval mode (restores the previous mode)."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(data), model.num_labels, dtype=torch.float32)
    with inference_autocast(device, amp_dtype):  # no_grad + autocast; fast path: each weight cast once per pass
        for idx in make_batches(data, batch_size, shuffle=False):
            b = collate(data, idx, pad_token_id=model.config.pad_token_id)
            logits = model(b["input_ids"].to(device), b["attention_mask"].to(device),
                           b["token_type_ids"].to(device), cls_only=True).logits  # reads the last layer's [CLS] row
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
        check_train_inputs(config, task, metrics_fn, train_data, dev_data)  # select names a metric; labels exist
        self.model, self.train_data, self.dev_data, self.task = model, train_data, dev_data, task
        self.metrics_fn, self.save_fn, self.meta = metrics_fn, save_fn or save_pretrained, meta or {}
        self.out_dir, self.files = Path(out_dir), RunFiles(out_dir, config)
        self.device = resolve_device(config.device)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        self.precision = MixedPrecision(self.device, self.amp_dtype)  # autocast; a loss scaler for fp16
        self.is_regression = model.num_labels == 1
        self.loss_config = dataclasses.replace(loss_config or LossConfig(), is_regression=self.is_regression)
        teacher = as_teacher_rows(teacher)  # TeacherRows (a dict of tensors is hashed here), or None
        hidden = teacher.hidden_size if teacher is not None else None  # H_t, for a loss with a projection
        self.loss_fn = build_loss(loss, model.config.hidden_size, hidden) if isinstance(loss, str) else loss
        self.loss_name = getattr(self.loss_fn, "spec", type(self.loss_fn).__name__)
        self.requires = getattr(self.loss_fn, "requires", frozenset({"labels"}))
        # what the loss reads of the student's last layer: its [CLS] row only (LossModule.student_cls_only), or more
        self.student_cls_only = getattr(self.loss_fn, "student_cls_only", False)
        self.inputs = StepInputs(train_data, self.loss_fn, self.loss_name, self.loss_config.layer_map, teacher,
                                 live_teacher, self.device, model.config.pad_token_id)  # refuses a cache that lacks
        self.teacher_fields = self.inputs.teacher_fields  # {LossInputs field: cache field} filled from the cache
        # what this run is (pea_kd.identity): a checkpoint or result is reused only when all of it matches. Data and
        # teacher rows are named by the digests recorded when their cache files were written: nothing is re-read.
        self.identity = run_identity(config, model, self.loss_fn, self.loss_config, train_data, dev_data,
                                     self.inputs.identity(), self.amp_dtype)
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
        self.state, self.bar = LoopState(), None

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, overwrite: bool = False) -> TrainResult:
        """Train for config.epochs (from checkpoint.pt when resuming), write final/ and result.json. out_dir is
        locked meanwhile (storage.directory_lock); a full disk or read-only directory is a one-line StorageError."""
        with locked(self.out_dir):
            done = self.files.finished_result(resume, self.identity)  # resuming a finished run: its stored result
            if done is not None:
                return done
            self.files.start(self, resume, overwrite)  # from checkpoint.pt, or seeded afresh
            return self._loop()

    def _loop(self) -> TrainResult:
        config, state = self.config, self.state
        self.model.train()
        self.bar = TrainingBar(self.total_steps, state.step, self.out_dir.name, config.progress)
        for epoch in range(state.epoch, config.epochs):
            batches = make_batches(self.train_data, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch)
            for b in range(state.batch_in_epoch, len(batches)):  # on resume: skip the batches already trained
                self.step(batches[b], where=f"epoch {epoch}, batch {b}")
                state.epoch, state.batch_in_epoch = (epoch + 1, 0) if b + 1 == len(batches) else (epoch, b + 1)
                self.bar.update(state)
                if b + 1 == len(batches) or (config.eval_every and state.step % config.eval_every == 0):
                    if distributed.is_main():  # evaluated once, by rank 0
                        self.evaluate(self.bar)
                if self.files.due(state.step, last=state.step == self.total_steps):
                    self.files.save(self)  # checkpoint.pt: everything needed to resume bit for bit
        self.bar.close()
        if not distributed.is_main():  # the other ranks wait for rank 0's files and return its result
            distributed.barrier()
            return TrainResult.load(self.files.result)
        self.save_fn(self.model, self.out_dir / "final")
        result = run_result(self)  # the last and best evaluations, settings, identity and timing
        self.files.finish(result)  # result.json, atomically; checkpoint.pt removed unless kept
        distributed.barrier()
        return result

    def step(self, indices, where: str = "") -> None:
        """One optimiser step on the examples at `indices`; raises NonFiniteLossError before touching the weights."""
        started = time.perf_counter()
        batch = self.inputs.load(indices)  # x, y and the cached z_t, h_t on the device (torchrun: this rank's share)
        with self.precision.autocast():  # --amp: the matrix products in bf16/fp16 (weights stay fp32)
            out = self.train_model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                   output_hidden_states="student_hidden_states" in self.requires,  # plain FT: none
                                   output_attentions="student_attentions" in self.requires,
                                   cls_only=self.student_cls_only)  # the last layer's [CLS] row, when that is all
            teacher = self.inputs.teacher_targets(batch)  # z_t, h_t: the cached rows, or a live teacher's forward
        result = self.loss_fn(fp32_loss_inputs(LossInputs(  # L(z_s, h_s, z_t, h_t, y), computed in fp32
            student_logits=out.logits, student_hidden_states=out.hidden_states, student_attentions=out.attentions,
            labels=batch["labels"], config=self.loss_config, attention_mask=batch["attention_mask"], **teacher)))
        value, parts, tokens = distributed.reduce_batch(result.total.detach(), result.parts, batch.tokens,
                                                        batch.weight)  # the global batch's L (torchrun: all ranks)
        stop_if_not_finite(value, self.state.step + 1, where, self.files.checkpoint)  # NaN/inf: stop, weights intact
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(result.total * batch.weight, self.optimizer)  # g = dL/dtheta (weight 1 in one process)
        distributed.average_gradients(self.loss_fn)  # torchrun: the loss's own parameters (DDP averages the model's)
        if self.config.max_grad_norm > 0:  # g <- g * min(1, max_norm / ||g||_2) over all parameters together
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.precision.step(self.optimizer)  # theta <- AdamW(theta, g, lr_t)  (fp16: skipped if g overflowed)
        self.scheduler.step()  # lr_{t+1} = lr f(t + 1)
        self.state.count_step(value, parts, batch.examples, tokens, time.perf_counter() - started)

    # ------------------------------------------------------------------ evaluation and results
    def evaluate(self, bar: Optional[TrainingBar] = None) -> dict:
        """Dev loss (task CE/MSE on the dev labels) and metrics; logs a record, updates best-so-far (and best/)."""
        from .metrics import compute_metrics

        t0, state, config = time.perf_counter(), self.state, self.config
        logits = predict(self.model, self.dev_data, self.device, config.eval_batch_size, self.amp_dtype)
        labels = self.dev_data.labels
        dev_loss = float(task_loss(logits, torch.from_numpy(labels), self.is_regression))
        preds = (logits[:, 0] if self.is_regression else logits.argmax(-1)).numpy()
        metrics = self.metrics_fn(preds, labels) if self.metrics_fn else compute_metrics(self.task, preds, labels)
        # step, epoch, mean train loss (and parts) since the last evaluation, dev loss, metrics, lr, time, throughput
        record = state.evaluation_record(dev_loss, metrics, self.scheduler.get_last_lr()[0], self.steps_per_epoch)
        key = self.select_key(metrics)
        value = dev_loss if key == "dev_loss" else metrics[key]
        if state.best_value is None or (value < state.best_value if key == "dev_loss" else value > state.best_value):
            state.best_value, state.best_record = value, record
            if config.keep_best:
                self.save_fn(self.model, self.out_dir / "best")
        state.history.append(record)
        self.files.append_log(record)
        report(f"step {record['step']}: train loss {record['train_loss']:.4f}  dev loss {dev_loss:.4f}  "
               + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), bar)
        state.eval_seconds += time.perf_counter() - t0
        return record

    def select_key(self, metrics: dict) -> str:
        """The record field that picks best_dev_*: "dev_loss" (lower is better) or a metric (higher is better)."""
        return selection_key(self.config.select, metrics, self.task, self.metrics_fn is not None)
