"""The machinery around `reproduce.run_all`: where each stage runs, what is reused, and what the results record.

    StageRunner(cfg, units, teacher_dir, data_dir)
        run_teacher(stage, ...)    the teacher stage, alone, with every thread
        run_students(stage, ...)   the (seed, method) students, `--jobs` at a time (pea_kd.parallel), one GPU each on
                                   a CUDA machine; yields the records of the stages that finished
        environment(...)           code commit, versions, machine, jobs, devices, precision, peak memory
    plan_progress                  the overall progress view and ETA (pea_kd.progress, FLOPs from pea_kd.budget)
    stage_dirs                     runs/<task>/<method>/seed<k>/ (and ptp-<variant>/seed<k>/ before it)
    run_shared                     a stage two rows share (their PTP stage), run once: a second worker waits for it
    run_record, teacher_record     one row of results.json: metrics, parameters, depth, time
    stage_process                  a stage's CPU seconds and peak memory, stored with it (process.json) for reuse

Every stage resumes (pea_kd.identity): a finished one returns its stored result, an interrupted one continues from its
checkpoint, and one made with other settings stops the reproduction with a one-line error saying how to start fresh.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import subprocess
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import safe_open

from . import __version__, distributed
from .budget import device_words, matmul_rates, reproduce_budget
from .identity import RunMismatch
from .methods import Method
from .parallel import (executor, is_sps, next_unit, peak_rss_mb, process_usage, resolve_jobs, start_order,
                       worker_devices)
from .progress import ASSUMED_FRACTION, Eta, ReproduceProgress, Stage, stage_status
from .runtime import precision_name, resolve_amp, resolve_device
from .storage import DirectoryInUse, directory_lock, write_atomic
from .teacher import CACHE_FILE
from .trainer import TrainResult

log = logging.getLogger(__name__)


class StageRunner:
    """Runs the stages of one reproduction (a `reproduce.ReproduceConfig` `cfg`) in worker processes, a fresh one per
    stage, cfg.jobs at a time, each with torch threads / jobs threads (under torchrun: in this process); shows the
    overall progress.

    `units` are the (seed, Method) students in table order; they start seed-major, the costlier first, at most
    `jobs` at a time and at most jobs // 2 SPS students at once. Use it as a context manager around the stages.
    """

    def __init__(self, cfg, units: list[tuple], teacher_dir: Path, data_dir):
        self.commit = code_commit()
        self.jobs, self.threads = resolve_jobs(cfg.jobs)
        if self.jobs > 1 and distributed.is_distributed():
            raise ValueError("reproduce: --jobs > 1 under torchrun; the torchrun processes already share every stage: "
                             "use --jobs 1 (the default)")
        self.queue = start_order(units)
        # the overall view (pea_kd.progress): rank 0 alone under torchrun
        self.progress = plan_progress(cfg, self.queue, self.jobs, teacher_dir, data_dir) \
            if distributed.is_main() else None
        # every stage in a fresh worker process (pea_kd.parallel.executor), but under torchrun in this one
        self.in_workers = not distributed.is_distributed()
        self.quiet_workers = False
        if self.in_workers:  # one bar per process would be unreadable: the workers train without bars, and under the
            cfg = dataclasses.replace(cfg, progress=False)  # overall bar they log warnings only (its line says each)
            self.quiet_workers = self.progress is not None and self.progress.show_bar
        if self.jobs > 1:
            log.info("running %d training processes at a time, %d torch thread(s) each", self.jobs, self.threads)
        self.cfg = cfg  # the settings the stages run with (and results.json records)
        self.devices = worker_devices(self.jobs, cfg.device) if self.jobs > 1 else [cfg.device]  # CUDA: a GPU a slot
        if self.devices != [cfg.device] * self.jobs:
            log.info("worker devices (round-robin over %d visible GPUs): %s", torch.cuda.device_count(),
                     ", ".join(f"slot {i} -> {d}" for i, d in enumerate(self.devices)))
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "StageRunner":
        self.pool = self._stack.enter_context(executor(self.jobs, self.threads,
                                                       logging.WARNING if self.quiet_workers else None))
        self._stack.enter_context(fresh_start_hint(self.cfg.run_root))
        self._stack.enter_context(self.progress or contextlib.nullcontext())
        return self

    def __exit__(self, *exc) -> Optional[bool]:
        return self._stack.__exit__(*exc)

    def run_teacher(self, stage, teacher_dir: Path, data_dir):
        """stage(cfg, teacher_dir, data_dir, threads), alone: nothing else runs meanwhile, so it gets every thread."""
        if self.progress:
            self.progress.begin("teacher")
        result = self.pool.submit(stage, self.cfg, teacher_dir, data_dir, self.jobs * self.threads).result()
        if self.progress:
            self.progress.end("teacher")
        return result

    def run_students(self, stage, teacher_dir: Path, data_dir):
        """Run stage(cfg, method, seed, teacher_dir, data_dir) for every unit; yield the records of the stages that
        finished, as they finish (a failed stage raises here and stops the rest)."""
        free_slots = list(range(self.jobs))
        running, slots = {}, {}  # running: future -> (seed, Method); slots: future -> worker slot
        while self.queue or running:
            while len(running) < self.jobs:
                unit = next_unit(self.queue, sps_running=sum(is_sps(m) for _, m in running.values()), jobs=self.jobs)
                if unit is None:
                    break
                self.queue.remove(unit)
                slot = free_slots.pop(0)
                if self.devices[slot] != self.cfg.device:
                    log.info("%s seed %d: worker slot %d on %s", unit[1].name, unit[0], slot, self.devices[slot])
                if self.progress:
                    self.progress.begin(stage_name(*unit))
                future = self.pool.submit(stage, dataclasses.replace(self.cfg, device=self.devices[slot]), unit[1],
                                          unit[0], teacher_dir, data_dir)
                running[future], slots[future] = unit, slot
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            finished = []
            for future in done:
                unit = running.pop(future)
                free_slots.append(slots.pop(future))
                finished.append(future.result())
                if self.progress:
                    self.progress.end(stage_name(*unit))
            yield finished

    def environment(self, teacher: TrainResult, runs: list[dict]) -> dict:
        """Where and how the results were made: code, versions, machine, processes, devices, precision, and the peak
        memory of the largest process: this one, its reaped workers, and each student stage's own record (a worker
        that has just exited may not be reaped yet: its stage still counts; a reused stage counts by its stored one)."""
        return {"code_commit": self.commit, "torch": torch.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "cpu_count": os.cpu_count(), "jobs": self.jobs,
                "torch_threads": self.threads, "device": teacher.meta.get("device"), "worker_devices": self.devices,
                "data_parallel_processes": distributed.world_size(),
                "precision": _precision([teacher.meta] + [r["result"]["meta"] for r in runs]),
                "peak_rss_mb": max([peak_rss_mb()] + [r["process"]["peak_rss_mb"] for r in runs if "process" in r])}

    def progress_summary(self) -> Optional[dict]:
        """The plan's and the ETA's errors, when complete (None without a progress view)."""
        return self.progress.summary() if self.progress else None

    def finish(self, summary: Optional[dict]) -> None:
        """Close the progress view with its summary."""
        if self.progress:
            self.progress.finish(summary)


def code_commit() -> Optional[str]:
    """The git commit of the code that runs, with "+changes" when tracked files differ from it; None outside a git
    checkout (an installed package) or without git."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if changed else "")


def stage_name(seed: int, method: Method) -> str:
    """A student stage's name in the progress view: "<method> seed <k>"."""
    return f"{method.name} seed {seed}"


def stage_dirs(root: Path, method: Method, seed: int) -> list[Path]:
    """The run directories of one student: its PTP stage (when the method has one), then its distillation."""
    ptp = [root / f"ptp-{method.variant}" / f"seed{seed}"] if method.ptp else []
    return ptp + [root / method.slug / f"seed{seed}"]


def plan_progress(cfg, queue: list[tuple], jobs: int, teacher_dir: Path, data_dir) -> ReproduceProgress:
    """The overall progress view of run_all: the teacher, then the students in the order they start, each with its
    FLOPs (pea_kd.budget, on the data the stages read) and whether an earlier run already did it; R measured now in
    the run's precision."""
    rows = reproduce_budget(dataclasses.replace(cfg, data_dir=data_dir))
    by_method = {row.name: row for row in rows[2:]}
    stages = [_stage("teacher", rows[0].flops + rows[1].flops, stage_status([teacher_dir], [teacher_dir / CACHE_FILE]),
                     alone=True)]
    stages += [_stage(stage_name(seed, m), by_method[m.name].seed_flops[seed],
                      stage_status(stage_dirs(cfg.run_root, m, seed))) for seed, m in queue]
    device = resolve_device(cfg.device)
    precision = precision_name(resolve_amp(cfg.amp, device))
    ((size, gflops),) = matmul_rates(device, repeats=1, precisions=(precision,)).values()
    rate = {"precision": precision, "size": size, "gflops": gflops}
    eta = Eta(stages, 1 / (ASSUMED_FRACTION * rate["gflops"] * 1e9), jobs)
    return ReproduceProgress(eta, rate, device_words(device), bar=cfg.progress)


def _stage(name: str, flops: float, status: str, alone: bool = False) -> Stage:
    return Stage(name, flops, alone=alone, status="reused" if status == "reused" else "todo",
                 resumed=status == "resumed")


def _precision(metas: list[dict]) -> str:
    """The precision the stages trained in ("fp32", "bf16", ...); several joined by "+" if they differ."""
    return "+".join(sorted({m["precision"] for m in metas}))


@contextlib.contextmanager
def fresh_start_hint(root: Path):
    """A stage directory holding a run with other settings stops the reproduction (nothing is reused or mixed):
    the one-line error says how to start fresh here, where there is no --overwrite."""
    try:
        yield
    except RunMismatch as err:
        raise RunMismatch(err.args[0], err.args[1], f"{root} holds runs made with other settings: delete it or "
                                                    "pass another --out-root") from None


def _count_parameters(final_dir: Path) -> int:
    meta = json.loads((final_dir / "student.json").read_text(encoding="utf-8"))
    return int(meta["num_parameters"])


def run_record(method: Method, seed: int, result: TrainResult, ptp: Optional[TrainResult], reused: bool) -> dict:
    """One student's entry of results.json: its final and best dev metrics, size, depth and time (PTP included);
    made in the stage's worker, so `process` is that stage's CPU seconds and peak memory (stage_process; under
    torchrun, of the whole process). `reused`: the stage had finished before this worker started."""
    final_dir = Path(result.out_dir) / "final"
    seconds = result.seconds + (ptp.seconds if ptp is not None else 0.0)
    process = stage_process(Path(result.out_dir), result, reused)
    return {"method": method.name, "slug": method.slug, "seed": seed, "variant": method.variant, "loss": method.loss,
            "ptp": method.ptp, "final": result.final_metrics, "best_dev": result.best_dev_metrics,
            "best_dev_step": result.best_dev_step, "final_step": result.final_step,
            "parameters": _count_parameters(final_dir), "effective_layers": result.meta["effective_layers"],
            "seconds": seconds, **({"process": process} if process else {}),
            "ptp_result": ptp.to_dict() if ptp else None, "result": result.to_dict()}


def stage_finished(run_root: Path, method: Method, seed: int) -> bool:
    """Whether the distillation of (method, seed) under run_root holds a finished run (progress.stage_status)."""
    return stage_status(stage_dirs(run_root, method, seed)[-1:]) == "reused"


PROCESS_RECORD = "process.json"  # next to a stage's result.json: what its worker cost when it trained


def stage_process(run_dir: Path, result: TrainResult, reused: bool) -> Optional[dict]:
    """The CPU seconds and peak memory of the worker that trained the stage in run_dir (parallel.process_usage).

    A worker that trained it (or finished it after a resume) measures itself and stores the record in process.json
    with the run's timing as its fingerprint; a later table that reuses the stage reads that record back, marked
    "reused", instead of the cost of reading a result. A reused stage without a matching record (made by an older
    version, or retrained since) has none: None, never a figure that is not the stage's. Under torchrun the usage is
    the whole process's, every stage so far: reported for this table, not stored as the stage's.
    """
    path = run_dir / PROCESS_RECORD
    if reused:
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return {**stored["process"], "reused": True} if stored.get("timing") == result.timing else None
    usage = process_usage()
    if not distributed.is_distributed():
        write_atomic(path, json.dumps({"process": usage, "timing": result.timing}, indent=1) + "\n")
    return usage


def _checkpoint_parameters(model_dir: Path) -> int:
    """Number of parameters stored in a checkpoint directory's model.safetensors (buffers excluded)."""
    with safe_open(model_dir / "model.safetensors", framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith("position_ids"))


def teacher_record(teacher: TrainResult, cache_seconds: Optional[float]) -> dict:
    """The teacher's entry of results.json: its metrics, depth, size, training time and the time its cache took."""
    return {"final": teacher.final_metrics, "best_dev": teacher.best_dev_metrics,
            "best_dev_step": teacher.best_dev_step, "layers": teacher.meta["num_layers"],
            "parameters": _checkpoint_parameters(Path(teacher.out_dir) / "final"), "seconds": teacher.seconds,
            "cache_seconds": cache_seconds, "result": teacher.to_dict()}


def run_shared(directory: Path, stage: Callable, *args, **kwargs):
    """`stage(*args, **kwargs)`, a resumable stage that trains in `directory` and that several rows share (Pea-KD and
    the rows beyond the paper built on it share one PTP stage per seed). When another worker holds the directory,
    wait until it has finished, then call `stage` again: it returns the finished result instead of training twice."""
    while True:
        try:
            return stage(*args, **kwargs)
        except DirectoryInUse as err:
            if Path(err.directory) != Path(directory):  # another lock than the shared stage's: not ours to wait for
                raise
            with directory_lock(directory, wait=True, what="PTP directory"):  # logs who holds it, then blocks
                pass
