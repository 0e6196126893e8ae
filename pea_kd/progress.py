"""The overall progress of `make reproduce`: the plan at the start, a bar or a log line per stage, the ETA's error.

A reproduction is a list of stages (the teacher, then one student per method and seed) whose FLOPs pea_kd.budget
counts from the trainer's own batches. Time is predicted from FLOPs:

    expected(stage) = F_stage x s          s = seconds per FLOP
    before any stage is timed:  s = 1 / (f R)     R = this machine's matmul rate in the run's precision, measured
                                                   at the start; f = ASSUMED_FRACTION, the share of R training reaches
    afterwards:                 s = sum(seconds) / sum(F) over the stages this invocation ran from scratch
    ETA = sum over stages not done of max(0, F s - t)     t = how long a running stage has run so far (0 if queued)

Stages reused from an earlier run (result.json present) count as done from the start, and stages resumed from a
checkpoint count as done when they finish: neither is timed, since their seconds do not cover their FLOPs. With
`--jobs N` the students share N workers (their part of the ETA is divided by N) and each worker has 1/N of the threads,
so the teacher, which runs alone with all of them, is timed apart from the students (until a student is timed, a
student's s is the teacher's times N, and the other way round).

At the end the real time is set beside every prediction made (the plan's, then one after each stage): results.json
holds them under "progress", with the ETA error of each.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .run_files import CHECKPOINT, RESULT

log = logging.getLogger(__name__)

# f: the share of the matmul rate R that training is assumed to reach until a stage is timed. On the reference
# 2-core AVX2 CPU, fp32 training reached 31% (make bench) to 61% (a quiet FT epoch) of R (docs/performance.md).
ASSUMED_FRACTION = 0.5


@dataclass
class Stage:
    """One stage of a reproduction: what it is, its FLOPs, and what has happened to it in this invocation.

    status: "todo", "running", "done", or "reused" (finished in an earlier run: done from the start).
    resumed: continued from an earlier run's checkpoint, so its seconds here do not cover its FLOPs: not timed.
    alone: runs with nothing beside it and all the threads (the teacher); students share the --jobs workers.
    """

    name: str
    flops: float
    alone: bool = False
    status: str = "todo"
    resumed: bool = False
    started: Optional[float] = None
    seconds: Optional[float] = None  # wall time this invocation, for a stage run from scratch

    @property
    def finished(self) -> bool:
        return self.status in ("done", "reused")


def stage_status(run_dirs: Sequence[Path], files: Sequence[Path] = ()) -> str:
    """"reused" when every run directory holds a finished run (result.json, no checkpoint.pt) and every file exists,
    "resumed" when some of that work is there (Stage.resumed), "todo" when none is."""
    finished = [(d / RESULT).is_file() and not (d / CHECKPOINT).is_file() for d in run_dirs]
    finished += [Path(f).is_file() for f in files]
    if all(finished):
        return "reused"
    if any(finished) or any((d / CHECKPOINT).is_file() for d in run_dirs):
        return "resumed"
    return "todo"


class Eta:
    """The ETA arithmetic (module docstring) over `stages`, on `clock` (seconds; time.monotonic by default).

    seconds_per_flop_assumed = 1 / (f R), the rate before anything is timed; jobs = worker processes (--jobs).
    """

    def __init__(self, stages: list[Stage], seconds_per_flop_assumed: float, jobs: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        self.stages = {s.name: s for s in stages}
        self.assumed, self.jobs, self.clock = seconds_per_flop_assumed, jobs, clock
        self.t0, self.t_end = clock(), None
        self.history = [self.record(None)]  # the plan's prediction first, then one per stage finished here

    def begin(self, name: str) -> None:
        stage = self.stages[name]
        if stage.status == "todo":
            stage.status, stage.started = "running", self.clock()

    def end(self, name: str) -> Optional[dict]:
        """Mark a stage finished; returns the prediction made at that moment (also kept in `history`), or None for a
        stage reused from an earlier run (done from the start)."""
        stage = self.stages[name]
        if stage.status != "running":
            return None
        stage.status = "done"
        stage.seconds = None if stage.resumed else self.clock() - stage.started
        stage.started = None
        if all(s.finished for s in self.stages.values()):
            self.t_end = self.clock()
        self.history.append(self.record(name))
        return self.history[-1]

    def seconds_per_flop(self, stage: Stage) -> float:
        """s for `stage`: seconds / FLOPs over the stages timed so far; with jobs > 1 over those of its own kind (the
        teacher alone, or the students), else the other kind's times the thread ratio (a student has 1/jobs of the
        threads); before anything is timed, the assumption (times jobs for a student)."""
        timed = [s for s in self.stages.values() if s.seconds is not None]
        mine = [s for s in timed if self.jobs == 1 or s.alone == stage.alone]
        if mine:
            return sum(s.seconds for s in mine) / sum(s.flops for s in mine)
        if timed:  # jobs > 1 and only the other kind timed
            return sum(s.seconds for s in timed) / sum(s.flops for s in timed) * (1 / self.jobs if stage.alone
                                                                                  else self.jobs)
        return self.assumed * (1.0 if stage.alone else self.jobs)

    def remaining(self) -> tuple[float, bool]:
        """(ETA in seconds, whether it is only a lower bound: a running stage has outrun its own estimate)."""
        now, total, overdue = self.clock(), {True: 0.0, False: 0.0}, False
        for stage in self.stages.values():
            if stage.finished:
                continue
            left = stage.flops * self.seconds_per_flop(stage) - (0.0 if stage.started is None else now - stage.started)
            overdue |= left < 0
            total[stage.alone] += max(0.0, left)
        return total[True] + total[False] / self.jobs, overdue

    def elapsed(self) -> float:
        """Seconds since the plan; frozen when the last stage ends (the real time of the stages)."""
        return (self.t_end if self.t_end is not None else self.clock()) - self.t0

    def record(self, name: Optional[str]) -> dict:
        """The prediction now: after which stage, stages done, elapsed, ETA and their sum (the expected real time)."""
        elapsed, (eta, _) = self.elapsed(), self.remaining()
        return {"after": name, "done": self.done(), "elapsed_s": elapsed, "eta_s": eta,
                "expected_total_s": elapsed + eta}

    def done(self) -> int:
        return sum(s.finished for s in self.stages.values())

    def summary(self, rate: dict) -> dict:
        """What results.json keeps under "progress"; the ETA errors once every stage is done. rate: the plan's R.

        reached_fraction_of_rate: FLOPs of the timed stages / their wall time / R, the students' seconds divided by
        jobs (they ran that many at a time): what `f` turned out to be.
        """
        stages = list(self.stages.values())
        timed = [s for s in stages if s.seconds is not None]
        real = self.t_end - self.t0 if self.t_end is not None else None
        history = [dict(h, error_s=None if real is None else h["expected_total_s"] - real) for h in self.history]
        expected = history[0]["expected_total_s"]
        out = {"stages": len(stages), "done": self.done(), "jobs": self.jobs, "matmul_rate": rate,
               "reused": [s.name for s in stages if s.status == "reused"],
               "resumed": [s.name for s in stages if s.resumed],
               "flops": sum(s.flops for s in stages), "flops_run": sum(s.flops for s in stages if s.status != "reused"),
               "expected_seconds": expected, "real_seconds": real, "eta_error_seconds": None, "eta_error_percent": None,
               "reached_fraction_of_rate": None, "history": history}
        if real:
            out["eta_error_seconds"] = expected - real
            out["eta_error_percent"] = 100 * (expected - real) / real
        if timed:
            wall = sum(s.seconds if s.alone else s.seconds / self.jobs for s in timed)
            out["reached_fraction_of_rate"] = sum(s.flops for s in timed) / wall / (rate["gflops"] * 1e9)
        return out


def clock_time(seconds: float) -> str:
    """h:mm:ss."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _percent(error: float, real: float) -> str:
    return f"{error:+.0f} s, {100 * error / real:+.0f}%" if real else f"{error:+.0f} s"


class ReproduceProgress:
    """The view: the plan when it starts, then per stage a log line (and on a terminal one bar), the errors at the end.

    Use as a context manager around the stages, calling begin(name) / end(name) as each one starts and finishes.
    bar: None = only when `stream` is a terminal; False = log lines only. interval: seconds between bar refreshes
    (the elapsed time and ETA move on while a stage runs; None: only when a stage ends, for tests).
    """

    def __init__(self, eta: Eta, rate: dict, where: str, bar: Optional[bool] = None, stream=None,
                 interval: Optional[float] = 1.0):
        self.eta, self.rate, self.where = eta, rate, where
        self.stream = stream or sys.stderr
        self.show_bar = bar if bar is not None else self.stream.isatty()
        self.interval, self.bar, self._stop, self._redirect = interval, None, threading.Event(), None
        self.total = sum(s.flops for s in eta.stages.values())

    # ------------------------------------------------------------------ lines
    def plan(self) -> str:
        """The plan: the stages in the order they start, their FLOPs, share and expected time, and how it is derived."""
        eta, total = self.eta, self.total
        lines = [f"reproduce plan: {len(eta.stages)} stages, {total / 1e12:,.1f} TFLOP in {self.rate['precision']} on "
                 f"{self.where}" + (f", {eta.jobs} worker processes" if eta.jobs > 1 else ""),
                 f"  {'#':>3}  {'stage':<18} {'TFLOP':>9} {'share':>6}  expected"]
        for k, stage in enumerate(eta.stages.values(), 1):
            expected = ("reused (done in an earlier run)" if stage.status == "reused"
                        else clock_time(stage.flops * eta.seconds_per_flop(stage))
                        + (" (resumed from a checkpoint)" if stage.resumed else ""))
            lines.append(f"  {k:>3}  {stage.name:<18} {stage.flops / 1e12:>9.2f} {stage.flops / total:>6.1%}  "
                         f"{expected}")
        expected, _ = eta.remaining()
        rate = self.rate
        if all(s.status == "reused" for s in eta.stages.values()):
            return "\n".join(lines + ["nothing to run: every stage was done by an earlier run"])
        lines.append(f"expected {clock_time(expected)}: FLOPs x seconds per FLOP, at first assuming training reaches "
                     f"{ASSUMED_FRACTION:.0%} of R = {rate['gflops']:,.1f} GFLOP/s (a {rate['precision']} "
                     f"{rate['size']}^3 product measured now; training reached 31-61% of R on the reference 2-core "
                     "CPU); from the first stage timed on, the ETA uses the seconds per FLOP measured in this run")
        return "\n".join(lines)

    def stage_line(self, stage: Stage, record: dict) -> str:
        k, n = record["done"], len(self.eta.stages)
        took = f"in {clock_time(stage.seconds)}" if stage.seconds is not None else "resumed from a checkpoint"
        return (f"reproduce: stage {k} of {n} done: {stage.name} ({took}, {stage.flops / self.total:.1%} of the "
                f"FLOPs); elapsed {clock_time(record['elapsed_s'])}, ETA {clock_time(record['eta_s'])}")

    def final_line(self, summary: dict) -> str:
        """The real time beside the plan's prediction and the one made after the first stage timed here."""
        real = summary["real_seconds"]
        if real is None or summary["flops_run"] == 0:
            return f"reproduce: all {summary['stages']} stages were reused from an earlier run"
        line = (f"reproduce: {summary['stages']} stages done in {clock_time(real)} (real); expected at the start "
                f"{clock_time(summary['expected_seconds'])} (error {_percent(summary['eta_error_seconds'], real)})")
        timed = {s.name for s in self.eta.stages.values() if s.seconds is not None}
        first = next((h for h in summary["history"] if h["after"] in timed), None)
        if first is not None and first["done"] < summary["stages"]:
            line += (f", after stage {first['done']} {clock_time(first['expected_total_s'])} "
                     f"(error {_percent(first['error_s'], real)})")
        if summary["reached_fraction_of_rate"] is not None:
            line += f"; training ran at {summary['reached_fraction_of_rate']:.0%} of R"
        return line

    # ------------------------------------------------------------------ the view
    def __enter__(self) -> "ReproduceProgress":
        log.info("%s", self.plan())
        reused = [s.name for s in self.eta.stages.values() if s.status == "reused"]
        if reused:
            log.info("reproduce: %d of %d stages reused from an earlier run: %s", len(reused), len(self.eta.stages),
                     ", ".join(reused))
        if self.show_bar:
            # log lines (ours, the stages') go through tqdm.write above the bars instead of breaking them
            self._redirect = logging_redirect_tqdm(tqdm_class=tqdm)
            self._redirect.__enter__()
            done = sum(s.flops for s in self.eta.stages.values() if s.finished)
            self.bar = tqdm(total=self.total / 1e12, initial=done / 1e12, file=self.stream, dynamic_ncols=True,
                            bar_format="{desc} |{bar}| {percentage:3.0f}% of the FLOPs{postfix}", position=0,
                            desc="reproduce")
            self.refresh()
            if self.interval:
                threading.Thread(target=self._tick, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.bar is not None:
            self.refresh()
            self.bar.close()
        if self._redirect is not None:
            self._redirect.__exit__(*exc)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        """Redraw the bar: which stage, the elapsed time and the ETA (a lower bound, ">", once a stage runs late)."""
        if self.bar is None:
            return
        eta, n = self.eta, len(self.eta.stages)
        running = sum(s.started is not None for s in eta.stages.values())
        k = eta.done()
        where = (f"stage {k + 1} of {n}" if running <= 1 else f"stages {k + 1}-{k + running} of {n}") if k < n \
            else f"stage {n} of {n} done"
        left, overdue = eta.remaining()
        self.bar.set_description_str(f"reproduce: {where}", refresh=False)
        self.bar.set_postfix_str(f"elapsed {clock_time(eta.elapsed())}, ETA {'>' if overdue else ''}"
                                 f"{clock_time(left)}", refresh=False)
        self.bar.refresh()

    def begin(self, name: str) -> None:
        self.eta.begin(name)
        self.refresh()

    def end(self, name: str) -> None:
        record = self.eta.end(name)
        stage = self.eta.stages[name]
        if record is not None:
            log.info("%s", self.stage_line(stage, record))
        if self.bar is not None:
            self.bar.update((sum(s.flops for s in self.eta.stages.values() if s.finished) / 1e12) - self.bar.n)
            self.refresh()

    def summary(self) -> dict:
        """results.json's "progress" (Eta.summary)."""
        return self.eta.summary(self.rate)

    def finish(self, summary: dict) -> None:
        """Log the final line for `summary`, the one results.json holds."""
        log.info("%s", self.final_line(summary))
