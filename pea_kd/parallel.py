"""Training several students at once: the worker processes of `reproduce --jobs N`.

    resolve_jobs(N)            (N, torch threads // N): the threads are shared, not multiplied
    start_order(units)         seed-major, the costlier students of a seed first
    next_unit(queue, ...)      the next (seed, method) that may start: at most N // 2 SPS students at a time
    worker_devices(N, device)  on a CUDA machine, one GPU per worker slot, round-robin over the visible GPUs
    executor(N, threads)       N spawned workers, a fresh process per stage (N = 1 too); in this process under
                               torchrun, whose process group lives here
    in_fresh_process(fn, ...)  fn(...) in a process of its own (here under torchrun): a PTP stage inside the worker
                               of the distillation that follows it

A unit is a (seed, reproduce.Method) pair; students only read the teacher's cache, so units are independent.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import resource
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Optional

import torch

from . import distributed


def resolve_jobs(jobs: int) -> tuple[int, int]:
    """(training processes, torch threads each): the torch threads of this process shared among `jobs` workers.

    More than one job pays off where one process cannot keep the cores busy. On the 2-core reference machine, two
    1-thread workers took 122 s each for an FT epoch on MRPC (61 s per epoch of work) against 71 s for one 2-thread
    process: 1.16x faster, but two students in memory at once (MRPC: 4.2 GB peak instead of 2.5). Hence the
    default of 1.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    return jobs, max(1, torch.get_num_threads() // jobs)


def is_sps(method) -> bool:
    """Whether a reproduce.Method trains an SPS student (twice the layers of compute and activations)."""
    return method.variant != "original"


def start_order(units: list[tuple]) -> list[tuple]:
    """Seed-major, and within a seed the costlier students first (SPS: twice the layers of compute; PTP: one more
    stage), so that the last stage, which runs while the other workers idle, is a short one."""
    seeds = list(dict.fromkeys(seed for seed, _ in units))
    return sorted(units, key=lambda u: (seeds.index(u[0]), -(2 * is_sps(u[1]) + u[1].ptp)))


def next_unit(queue: list[tuple], sps_running: int, jobs: int) -> Optional[tuple]:
    """The first unit of `queue` that may start now; SPS students only while fewer than max(1, jobs // 2) run.

    An SPS student holds twice the activations of an original one: two at once take MRPC past 4 GB, one SPS + one
    original student fit, and per seed the two kinds cost about the same, so both workers stay busy.
    """
    sps_slot = sps_running < max(1, jobs // 2)
    return next((u for u in queue if sps_slot or not is_sps(u[1])), None)


def worker_devices(jobs: int, device: str = "auto") -> list[str]:
    """The device of each of `jobs` worker slots: round-robin over the visible GPUs (cuda:0, cuda:1, ..., cuda:0, ...)
    for device "auto" or "cuda" on a CUDA machine; else `device` for every slot (a GPU the user named is kept)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device not in ("auto", "cuda") or count == 0:
        return [device] * jobs
    return [f"cuda:{slot % count}" for slot in range(jobs)]


def process_usage() -> dict:
    """CPU seconds (user + system) and peak resident memory (MB) of this process and its finished children so far:
    in a stage's worker, what that stage cost, its imports and any PTP child included. With one torch thread the
    CPU seconds hardly grow when other programs share the cores (wall seconds do); with more, waiting threads spin
    and they grow too."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return {"cpu_seconds": sum(u.ru_utime + u.ru_stime for u in usages), "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """Largest resident set of this process and of its finished worker processes (not their sum), in MB."""
    return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024


class _InProcess:
    """Executor stand-in for torchrun: each call runs in this process when it is submitted."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args) -> Future:
        future = Future()
        future.set_result(fn(*args))
        return future


def executor(jobs: int, threads: int, log_level: Optional[int] = None):
    """The stage runner of reproduce.run_all: a pool of `jobs` spawned workers with `threads` torch threads each that
    log at `log_level` (default: this process's level), a fresh process per stage, also for jobs=1; under torchrun
    (whose process group lives here, and which refuses jobs > 1) this process.

    A fresh process per stage starts every stage on an empty heap: in one process that runs all the stages of a
    reproduction, each stage inherits the holes earlier stages left in glibc's heap and the bf16 kernels oneDNN
    compiled for them (a bf16 MRPC run: 3.6 GB after the teacher stage, 4.2 GB during the next; in a process of its
    own, with oneDNN's cache capped, the teacher stage: 2.3 GB), and a stage's time could depend on what ran before
    it. The price is a Python and torch start per stage (about 2 s of CPU)."""
    if distributed.is_distributed():
        return _InProcess()
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads, log_level or logging.getLogger().getEffectiveLevel()),
                               max_tasks_per_child=1)


def in_fresh_process(fn: Callable, *args, **kwargs) -> Any:
    """fn(*args, **kwargs) in a fresh spawned process with this process's torch threads and log level; its result
    is returned here and its exception raised here. Under torchrun: in this process (executor's rule).

    reproduce runs a PTP stage this way from the worker of the distillation that starts from its encoder, so that
    the distillation does not inherit the heap the PTP stage left (the holes of executor's docstring): each gets a
    heap of its own, like every other stage. The waiting worker holds only its imports meanwhile."""
    with executor(1, torch.get_num_threads()) as pool:
        return pool.submit(functools.partial(fn, *args, **kwargs)).result()


def _init_worker(threads: int, level: int) -> None:
    from .defaults import configure_logging
    torch.set_num_threads(threads)
    configure_logging(level)


__all__ = ["resolve_jobs", "is_sps", "start_order", "next_unit", "worker_devices", "process_usage", "peak_rss_mb",
           "executor", "in_fresh_process"]
