"""Machinery: a training run's directory, its checkpoints, and resuming a killed run bit for bit.

    checkpoint.pt   model, loss module, AdamW, schedule, loss scaler and every RNG state, with the loop's position
                    (LoopState): everything needed to continue. Removed when the run completes unless kept.
    log.jsonl       one line per dev evaluation; on resume, the lines after the checkpoint's step are dropped
    result.json     the finished run (TrainResult); with no checkpoint.pt beside it, --resume returns it

When to write checkpoint.pt. It holds the weights and AdamW's two moments, 12 bytes a parameter: 209 MB for the
3-layer student, 272 MB for the MiniLM-L6 teacher, 1.3 GB for BERT-base (1.7, 2.4 and 22 s to write and sync on a
VM's disk). Losing the work since the last one costs that work. So by default a step writes one when the last one
(or the start of the run) is at least CHECKPOINT_MINUTES old, and the last step writes none (final/ and result.json
follow at once) unless the checkpoint is kept: a stage of a few minutes writes none, a stage of hours loses at most
CHECKPOINT_MINUTES on a kill, and the writes cost under 4% of its time even for BERT-base (22 s every 10 min).
TrainConfig.checkpoint_every = N forces one every N steps (0: never).

Resume: the batches of epoch e depend only on (seed, e), so a run restored from checkpoint.pt skips the batches of
its epoch it had already trained and, with the optimiser, schedule, scaler and RNG states restored, reaches
bit-identical weights and metrics (on CPU) to an uninterrupted run, wherever its last checkpoint was.

The directory is locked while a run trains in it (storage.directory_lock), every file is written atomically
(storage.write_atomic), and a checkpoint or result is reused only when the run identity matches (pea_kd.identity).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import distributed
from .identity import check_same_run
from .runtime import precision_name, rng_state, set_rng_state, set_seed
from .storage import directory_lock, storage_error, write_atomic

log = logging.getLogger(__name__)
CHECKPOINT, LOG, RESULT = "checkpoint.pt", "log.jsonl", "result.json"
CHECKPOINT_MINUTES = 10.0  # work whose loss justifies a checkpoint: a kill costs at most this (and one step)
clock = time.monotonic  # seconds; a test replaces it with a fake clock


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
        """The fields as plain data (what result.json holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path) -> "TrainResult":
        """The result stored in a result.json."""
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))



@dataclass
class LoopState:
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

    def count_step(self, loss: float, parts: dict, examples: int, tokens: int, seconds: float) -> None:
        """Add one optimiser step's global batch loss, loss parts, examples, tokens and time to the running sums."""
        self.step += 1
        self.loss_sum += loss
        self.loss_count += 1
        for k, v in parts.items():
            self.part_sums[k] = self.part_sums.get(k, 0.0) + float(v)
        self.examples += examples
        self.tokens += tokens
        self.train_seconds += seconds

    def evaluation_record(self, dev_loss: float, metrics: dict, lr: float, steps_per_epoch: list) -> dict:
        """The log.jsonl record of an evaluation now; the running training-loss sums start again from zero."""
        n = max(self.loss_count, 1)
        epoch = self.epoch + (self.batch_in_epoch / steps_per_epoch[self.epoch] if self.batch_in_epoch else 0)
        record = {"step": self.step, "epoch": round(epoch, 4), "train_loss": self.loss_sum / n,
                  "train_parts": {k: v / n for k, v in self.part_sums.items()}, "dev_loss": dev_loss,
                  "metrics": metrics, "lr": lr, "elapsed_s": self.train_seconds + self.eval_seconds,
                  "examples_per_s": self.examples / max(self.train_seconds, 1e-9)}
        self.loss_sum, self.part_sums, self.loss_count = 0.0, {}, 0
        return record


def run_result(trainer) -> TrainResult:
    """The TrainResult of a trainer whose loop has ended: its last and best evaluations, settings, identity, timing."""
    state, config = trainer.state, trainer.config
    final, best = state.history[-1], state.best_record
    seconds = max(state.train_seconds, 1e-9)
    return TrainResult(
        final_metrics=final["metrics"], final_dev_loss=final["dev_loss"], final_step=final["step"],
        best_dev_metrics=best["metrics"], best_dev_loss=best["dev_loss"], best_dev_step=best["step"],
        select=trainer.select_key(final["metrics"]), history=state.history, out_dir=str(trainer.out_dir),
        meta={**trainer.meta, "config": dataclasses.asdict(config), "loss": trainer.loss_name,
              "device": str(trainer.device), "amp": str(trainer.amp_dtype),
              "precision": precision_name(trainer.amp_dtype), "total_steps": trainer.total_steps,
              "identity": trainer.identity},
        timing={"train_seconds": state.train_seconds, "eval_seconds": state.eval_seconds,
                "seconds_per_epoch": state.train_seconds / config.epochs,
                "examples_per_s": state.examples / seconds, "tokens_per_s": state.tokens / seconds})


@contextlib.contextmanager
def locked(out_dir: Path):
    """Hold out_dir's lock for the block (rank 0's, under torchrun); a full disk or read-only directory becomes a
    one-line StorageError."""
    with directory_lock(out_dir) if distributed.is_main() else contextlib.nullcontext():
        try:
            yield
        except OSError as err:
            raise storage_error(err.filename or out_dir, err) from None


class RunFiles:
    """The files of one run in `out_dir` and the checkpoint policy of its TrainConfig (see the module docstring)."""

    def __init__(self, out_dir, config):
        self.out_dir = Path(out_dir)
        self.checkpoint, self.log, self.result = (self.out_dir / n for n in (CHECKPOINT, LOG, RESULT))
        self.every, self.keep = config.checkpoint_every, config.keep_checkpoint
        self.written = clock()

    def finished_result(self, resume: bool, identity: dict) -> Optional[TrainResult]:
        """The stored result of a finished run of the same identity, when resuming one (out_dir: where it is now);
        else None."""
        if not (resume and self.result.is_file() and not self.checkpoint.is_file()):
            return None
        done = TrainResult.load(self.result)
        check_same_run(self.result, done.meta.get("identity"), identity, "cannot reuse this finished run")
        log.info("%s: run already finished; returning its result", self.out_dir)
        return dataclasses.replace(done, out_dir=str(self.out_dir))  # if moved

    def start(self, trainer, resume: bool, overwrite: bool) -> None:
        """Continue from checkpoint.pt when resuming one, else seed a fresh run (refusing to replace a run in out_dir
        unless overwrite)."""
        run_files = (self.checkpoint, self.log, self.result)
        with distributed.main_process_first():  # torchrun: rank 0 clears an overwritten run before the others look
            if not resume and any(p.exists() for p in run_files):
                if not overwrite:
                    raise FileExistsError(f"{self.out_dir} already holds a run; resume it (--resume) or pass "
                                          "--overwrite")
                for p in run_files:
                    p.unlink(missing_ok=True)
        if resume and self.checkpoint.is_file():
            self.load(trainer)
        else:
            if resume:  # killed before its first checkpoint: nothing to continue from
                log.info("%s: no checkpoint.pt to resume from; starting from scratch", self.out_dir)
                self.log.unlink(missing_ok=True)
            set_seed(trainer.config.seed)  # dropout draws depend on the seed only, not on how the model was built
            distributed.seed_per_rank(trainer.config.seed)
        self.written = clock()

    def due(self, step: int, last: bool) -> bool:
        """Whether to write checkpoint.pt after optimiser step `step` (`last`: the run's final step). Every process
        gets the same answer (rank 0's clock decides)."""
        if self.every is not None:  # forced: every N steps, or never (0)
            return bool(self.every) and step % self.every == 0
        if last:  # final/ and result.json come next: a checkpoint only when it is kept
            return self.keep
        return distributed.agree(clock() - self.written >= 60 * CHECKPOINT_MINUTES)

    def save(self, trainer) -> None:
        """Everything needed to continue bit for bit, written atomically (pea_kd.storage.write_atomic)."""
        payload = {"version": 1, "config": dataclasses.asdict(trainer.config), "identity": trainer.identity,
                   "model": trainer.model.state_dict(), "loss_fn": trainer.loss_fn.state_dict(),
                   "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
                   "scaler": trainer.precision.state_dict(), "rng": rng_state(),
                   "state": dataclasses.asdict(trainer.state),
                   **distributed.checkpoint_fields()}  # under torchrun: world size, every rank's RNG (all ranks call)
        if distributed.is_main():
            write_atomic(self.checkpoint, lambda f: torch.save(payload, f))
        self.written = clock()

    def load(self, trainer) -> None:
        """Restore a trainer from checkpoint.pt (refused in one line: unreadable, another run, another world size)."""
        try:
            ckpt = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            identity = ckpt.get("identity")
        except Exception as err:  # truncated, corrupt, not a torch file, or a pickle that weights_only refuses
            raise ValueError(f"{self.checkpoint}: unreadable checkpoint ({type(err).__name__}); delete it, or pass "
                             "--overwrite instead of --resume to start fresh") from None
        distributed.check_resume(ckpt, self.checkpoint)  # the same number of processes as the run that wrote it
        check_same_run(self.checkpoint, identity, trainer.identity, "cannot resume")
        trainer.model.load_state_dict(ckpt["model"])
        trainer.loss_fn.load_state_dict(ckpt["loss_fn"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.scheduler.load_state_dict(ckpt["scheduler"])
        trainer.precision.load_state_dict(ckpt["scaler"])
        trainer.state = state = LoopState(**ckpt["state"])
        set_rng_state(distributed.rank_rng(ckpt))
        if not distributed.is_main():  # rank 0 alone trims log.jsonl
            return
        kept = [r for r in read_log(self.log) if r["step"] <= state.step]  # drop evaluations after the checkpoint
        write_atomic(self.log, "".join(json.dumps(r) + "\n" for r in kept))
        log.info("%s: resuming at step %d (epoch %d, batch %d)", self.out_dir, state.step, state.epoch,
                 state.batch_in_epoch)

    def append_log(self, record: dict) -> None:
        """One evaluation record as a line of log.jsonl."""
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def finish(self, result: TrainResult) -> None:
        """Write result.json atomically; remove checkpoint.pt unless it is kept."""
        write_atomic(self.result, json.dumps(result.to_dict(), indent=2) + "\n")
        if not self.keep:
            self.checkpoint.unlink(missing_ok=True)


def read_log(path: Path) -> list[dict]:
    """The evaluation records in log.jsonl; a last line cut short by a kill is dropped."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records
