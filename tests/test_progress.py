"""The overall progress of `make reproduce` (pea_kd.progress): the ETA arithmetic on a fake clock and fake FLOPs, the
plan and the per-stage lines (non-TTY), the bar (TTY), reuse counting, and the ETA errors kept for results.json.
The whole pipeline's view is checked by tests/test_reproduce.py's smoke run."""
import io
import logging
import re
import sys

import pytest
from tqdm.auto import tqdm

from pea_kd.progress import Eta, ReproduceProgress, Stage, clock_time, stage_status

RATE = {"precision": "fp32", "size": 2048, "gflops": 20e-9}  # R = 20 FLOP/s: 1 / (0.5 R) = 0.1 s per FLOP


class Clock:
    """A clock that moves only when told: `clock.t = 12`."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def three_stages(**status) -> list[Stage]:
    """teacher (100 FLOPs, alone), then students A and B (50 each); status: name -> "reused" or "resumed"."""
    stages = [Stage("teacher", 100.0, alone=True), Stage("A seed 0", 50.0), Stage("B seed 0", 50.0)]
    for stage in stages:
        what = status.get(stage.name.split()[0])
        stage.status = "reused" if what == "reused" else "todo"
        stage.resumed = what == "resumed"
    return stages


def run(eta: Eta, clock: Clock, name: str, start: float, end: float) -> dict:
    clock.t = start
    eta.begin(name)
    clock.t = end
    return eta.end(name)


def test_eta_starts_from_the_assumed_rate_and_corrects_itself_from_the_stages_timed():
    clock = Clock()
    eta = Eta(three_stages(), seconds_per_flop_assumed=0.1, clock=clock)
    assert eta.remaining() == (pytest.approx(20.0), False)  # 200 FLOPs x 0.1 s
    eta.begin("teacher")
    clock.t = 5
    assert eta.remaining() == (pytest.approx(15.0), False)  # the running stage's 10 s less the 5 s it has had
    clock.t = 12
    assert eta.remaining() == (pytest.approx(10.0), True)  # it runs late: the ETA is only a lower bound now
    after_teacher = eta.end("teacher")  # 12 s for 100 FLOPs: s = 0.12
    assert after_teacher == {"after": "teacher", "done": 1, "elapsed_s": 12.0, "eta_s": pytest.approx(12.0),
                             "expected_total_s": pytest.approx(24.0)}
    assert run(eta, clock, "A seed 0", 12, 21)["eta_s"] == pytest.approx(50 * 21 / 150)  # s = 21 s / 150 FLOPs
    clock.t = 22
    run(eta, clock, "B seed 0", 22, 26)
    clock.t = 100  # after the last stage the real time is frozen: the report written later does not count
    summary = eta.summary(RATE)
    assert summary["real_seconds"] == 26.0 and summary["expected_seconds"] == pytest.approx(20.0)
    assert summary["eta_error_seconds"] == pytest.approx(-6.0)
    assert summary["eta_error_percent"] == pytest.approx(-600 / 26)
    assert [h["after"] for h in summary["history"]] == [None, "teacher", "A seed 0", "B seed 0"]
    assert [h["error_s"] for h in summary["history"]] == pytest.approx([20 - 26, 24 - 26, 21 + 7 - 26, 0.0])
    # FLOPs per second over the timed stages, against R: 200 FLOPs / 25 s of stages = 8 FLOP/s, R = 20 FLOP/s
    assert summary["reached_fraction_of_rate"] == pytest.approx(200 / 25 / 20)


def test_reused_stages_count_as_done_and_resumed_ones_are_not_timed():
    clock = Clock()
    eta = Eta(three_stages(teacher="reused", A="resumed"), seconds_per_flop_assumed=0.1, clock=clock)
    assert eta.done() == 1 and eta.remaining()[0] == pytest.approx(10.0)  # the teacher is not in the ETA
    assert eta.end("teacher") is None  # a reused stage finishing is no news
    record = run(eta, clock, "A seed 0", 0, 1)  # resumed: 1 s says nothing about its 50 FLOPs
    assert eta.stages["A seed 0"].seconds is None and record["eta_s"] == pytest.approx(5.0)  # still assumed
    run(eta, clock, "B seed 0", 1, 3)  # the only timed stage: s = 2 s / 50 FLOPs
    summary = eta.summary(RATE)
    assert (summary["done"], summary["reused"], summary["resumed"]) == (3, ["teacher"], ["A seed 0"])
    assert (summary["flops"], summary["flops_run"], summary["real_seconds"]) == (200.0, 100.0, 3.0)
    assert summary["expected_seconds"] == pytest.approx(10.0) and summary["eta_error_seconds"] == pytest.approx(7.0)
    assert summary["reached_fraction_of_rate"] == pytest.approx(50 / 2 / 20)
    everything = Eta(three_stages(teacher="reused", A="reused", B="reused"), 0.1, clock=clock)
    assert everything.remaining() == (0.0, False) and everything.summary(RATE)["real_seconds"] is None


def test_with_jobs_the_students_share_the_workers_and_finish_in_any_order():
    clock = Clock()
    stages = three_stages() + [Stage("C seed 0", 50.0), Stage("D seed 0", 50.0)]
    eta = Eta(stages, seconds_per_flop_assumed=0.1, jobs=2, clock=clock)
    # the teacher alone with all threads; each student on 1/2 of them (twice the seconds), two at a time
    assert eta.remaining()[0] == pytest.approx(100 * 0.1 + 4 * 50 * 0.2 / 2)
    run(eta, clock, "teacher", 0, 8)  # s = 0.08 with all threads: a student's estimate is 0.16 until one is timed
    assert eta.remaining()[0] == pytest.approx(4 * 50 * 0.16 / 2)
    clock.t = 8
    eta.begin("A seed 0")
    eta.begin("B seed 0")
    clock.t = 14
    assert eta.end("B seed 0")["done"] == 2  # B finished first: 6 s, s = 0.12 for the students from now on
    assert eta.remaining()[0] == pytest.approx(((50 * 0.12 - 6) + 2 * 50 * 0.12) / 2)
    assert eta.seconds_per_flop(eta.stages["teacher"]) == pytest.approx(0.08)  # the teacher keeps its own rate


def test_stage_status_reads_the_run_directories(tmp_path):
    one, two = tmp_path / "ptp", tmp_path / "kd"
    assert stage_status([one, two]) == "todo"
    one.mkdir()
    (one / "checkpoint.pt").write_bytes(b"x")
    assert stage_status([one, two]) == "resumed"  # killed during PTP
    (one / "checkpoint.pt").unlink()
    (one / "result.json").write_text("{}")
    assert stage_status([one, two]) == "resumed"  # PTP finished, the distillation not started
    two.mkdir()
    (two / "result.json").write_text("{}")
    assert stage_status([one, two]) == "reused"
    assert stage_status([one, two], [tmp_path / "teacher_outputs.pt"]) == "resumed"  # the cache still to compute


def view(bar: bool, stream=None, **status):
    clock = Clock()
    progress = ReproduceProgress(Eta(three_stages(**status), 0.1, clock=clock), RATE, "cpu, 2 threads", bar=bar,
                                 stream=stream, interval=None)
    return progress, clock


def test_without_a_terminal_the_plan_then_one_log_line_per_stage_then_the_errors(caplog):
    caplog.set_level(logging.INFO, logger="pea_kd.progress")
    progress, clock = view(bar=None, stream=io.StringIO(), teacher="reused")  # not a terminal: no bar
    with progress:
        plan = caplog.messages[0].splitlines()
        assert plan[0] == "reproduce plan: 3 stages, 0.0 TFLOP in fp32 on cpu, 2 threads"
        assert plan[2].split() == ["1", "teacher", "0.00", "50.0%", "reused", "(done", "in", "an", "earlier", "run)"]
        assert plan[3].split()[1:] == ["A", "seed", "0", "0.00", "25.0%", "0:00:05"]
        assert plan[-1].startswith("expected 0:00:10: FLOPs x seconds per FLOP, at first assuming training reaches "
                                   "50% of R")
        assert caplog.messages[1] == "reproduce: 1 of 3 stages reused from an earlier run: teacher"
        for name, start, end in (("A seed 0", 0, 6), ("B seed 0", 6, 12)):
            clock.t = start
            progress.begin(name)
            clock.t = end
            progress.end(name)
    assert caplog.messages[2:] == [
        "reproduce: stage 2 of 3 done: A seed 0 (in 0:00:06, 25.0% of the FLOPs); elapsed 0:00:06, ETA 0:00:06",
        "reproduce: stage 3 of 3 done: B seed 0 (in 0:00:06, 25.0% of the FLOPs); elapsed 0:00:12, ETA 0:00:00"]
    summary = progress.summary()
    progress.finish(summary)
    assert caplog.messages[-1] == ("reproduce: 3 stages done in 0:00:12 (real); expected at the start 0:00:10 "
                                   "(error -2 s, -17%), after stage 2 0:00:12 (error +0 s, +0%); training ran at "
                                   "42% of R")


def test_on_a_terminal_one_bar_with_stage_elapsed_and_eta_and_log_lines_above_it(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)  # the console logging handler writes where the bar does
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    monkeypatch.setattr(root, "level", logging.INFO)
    try:
        progress, clock = view(bar=True, stream=stream)
        with progress:
            progress.begin("teacher")
            clock.t = 4
            progress.refresh()  # what the ticker thread does every second
            trainer_bar = tqdm(total=3, file=stream, leave=None)  # a run's own bar, beside the overall one
            assert trainer_bar.pos == 1
            trainer_bar.close()
            clock.t = 10
            progress.end("teacher")
    finally:
        root.removeHandler(handler)
    frames = [f for f in re.split(r"[\r\n]", stream.getvalue()) if f.strip()]
    assert any(f.startswith("reproduce: stage 1 of 3 |") and f.endswith("0% of the FLOPs, elapsed 0:00:04, ETA "
                                                                          "0:00:16") for f in frames), frames
    assert "reproduce: stage 1 of 3 done: teacher (in 0:00:10, 50.0% of the FLOPs); elapsed 0:00:10, ETA 0:00:10" \
        in frames  # the log line, written above the bar (tqdm.write), not into it
    last = [f for f in frames if f.startswith("reproduce: stage 2 of 3 |")][-1]
    assert last.endswith(" 50% of the FLOPs, elapsed 0:00:10, ETA 0:00:10")
    assert not any("reproduce plan" in f and "|" in f for f in frames)


def test_clock_time():
    assert [clock_time(s) for s in (0, 59.6, 3600 + 61, 36000)] == ["0:00:00", "0:01:00", "1:01:01", "10:00:00"]
