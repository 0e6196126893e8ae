"""pea_kd.trainer: schedule, optimiser groups, determinism, files, NaN guard, and kill -9 + resume = uninterrupted."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bert_mini import BertConfig, BertForSequenceClassification, load_pretrained, load_tokenizer
from pea_kd.feature_cache import load_features
from pea_kd.losses import LossResult
from pea_kd.train_checks import NonFiniteLossError
from pea_kd.trainer import TrainConfig, TrainResult, linear_schedule, param_groups, train

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parent.parent


def tiny_run(tiny_env, out_dir, task="mrpc", loss="ce", model=None, resume=False, **config):
    """Train the tiny checkpoint (+ a head) on the tiny task (or resume that run); returns (result, model)."""
    checkpoint, glue = tiny_env
    tok = load_tokenizer(checkpoint)
    train_data = load_features(task, "train", tok, 32)
    dev_data = load_features(task, "dev", tok, 32)
    torch.manual_seed(0)
    model = model or load_pretrained(checkpoint, num_labels=1 if task == "stsb" else 2)
    settings = dict(epochs=2, batch_size=8, lr=1e-3, progress=False)
    settings.update(config)
    result = train(model, train_data, dev_data, task=task, out_dir=out_dir, loss=loss, config=TrainConfig(**settings),
                   resume=resume)
    return result, model


def weights(directory):
    (path,) = Path(directory).glob("*.safetensors")  # model.safetensors, or pea_kd_sps.safetensors for SPS students
    return load_file(path)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = linear_schedule(total_steps=10, warmup_steps=2)
    assert [f(t) for t in range(10)] == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    assert f(10) == 0.0
    assert linear_schedule(4, 0)(0) == 1.0  # no warm-up: start at the peak


def test_param_groups_exclude_bias_and_layernorm_and_dedup_shared():
    model = BertForSequenceClassification(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16), num_labels=2)
    decay, no_decay = param_groups([model, model.classifier], weight_decay=0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if p.dim() < 2}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))  # classifier counted once
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)


FAULTS_SCRIPT = """
import resource, sys, torch
from pea_kd.runtime import keep_freed_memory

def faults_per_gradient(n=3):  # minor page faults of allocating, zeroing and freeing a 30522 x 384 fp32 gradient
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.zeros(30522, 384)[7].add_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

default = faults_per_gradient()
assert keep_freed_memory()
faults_per_gradient(6)  # the heap grows to hold it (a few steps)
print(default, faults_per_gradient())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"),
                    reason="keep_freed_memory sets glibc's malloc; elsewhere it is a no-op")
def test_keep_freed_memory_stops_refaulting_the_embedding_gradient_every_step():
    """A 47 MB tensor made anew each step (the word-embedding gradient) is faulted in page by page under glibc's
    defaults (11,450 pages of 4 KiB); after keep_freed_memory() it reuses heap pages already there. Own process: the
    setting is process-wide."""
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    default, kept = map(float, out.stdout.split())
    assert default > 10_000 and kept < 100


def test_run_files_log_and_result(tiny_env, tmp_path):
    result, _ = tiny_run(tiny_env, tmp_path / "run", epochs=2, eval_every=3, keep_best=True)
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6, 8, 9, 12, 15, 16]  # every 3 steps and at both epoch ends (8 steps)
    fields = {"step", "epoch", "train_loss", "train_parts", "dev_loss", "metrics", "lr", "elapsed_s", "examples_per_s"}
    assert fields <= lines[0].keys()
    assert lines[-1]["lr"] == 0.0  # linear decay reaches 0 at the end
    stored = TrainResult.load(run / "result.json")
    assert stored.final_metrics == result.final_metrics == lines[-1]["metrics"] and stored.final_step == 16
    best = max(lines, key=lambda r: r["metrics"]["f1"])  # select=auto -> MRPC's primary metric, F1; first best wins
    assert result.select == "f1" and result.best_dev_step == best["step"]
    assert result.timing["train_seconds"] > 0 and result.timing["tokens_per_s"] > 0
    assert result.seconds == result.timing["train_seconds"] + result.timing["eval_seconds"]
    assert (run / "final" / "model.safetensors").is_file() and (run / "best" / "model.safetensors").is_file()
    assert not (run / "checkpoint.pt").exists()  # removed once the run is complete
    reloaded = load_pretrained(run / "final", num_labels=2)
    assert not reloaded.load_report.newly_initialized


def test_same_seed_same_result_other_seed_differs(tiny_env, tmp_path):
    a, _ = tiny_run(tiny_env, tmp_path / "a", seed=3)
    b, _ = tiny_run(tiny_env, tmp_path / "b", seed=3)
    c, _ = tiny_run(tiny_env, tmp_path / "c", seed=4)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert a.final_metrics == b.final_metrics and a.final_dev_loss == b.final_dev_loss
    assert_same_weights(weights(tmp_path / "a" / "final"), weights(tmp_path / "b" / "final"))
    assert a.final_dev_loss != c.final_dev_loss


def test_learns_the_tiny_task(tiny_env, tmp_path):
    result, _ = tiny_run(tiny_env, tmp_path / "run", epochs=8, lr=3e-3)
    assert result.history[-1]["train_loss"] < 0.6 * result.history[0]["train_loss"]
    assert result.best_dev_metrics["acc"] > 0.8


def test_regression_task_and_select_loss(tiny_env, tmp_path):
    result, _ = tiny_run(tiny_env, tmp_path / "run", task="stsb", select="loss", eval_every=4)
    assert set(result.final_metrics) == {"pearson", "spearman", "corr"}
    assert result.select == "dev_loss"
    assert result.best_dev_loss == min(h["dev_loss"] for h in result.history)


def test_ptp_style_run_four_classes_metrics_fn_select_loss(tiny_env, tmp_path):
    """PTP reuses the loop: 4-class labels on the same inputs, accuracy-only metrics, selection by dev loss."""
    from dataclasses import replace

    import numpy as np
    from pea_kd.metrics import accuracy

    checkpoint, _ = tiny_env
    tok = load_tokenizer(checkpoint)
    train_data, dev_data = (load_features("mrpc", s, tok, 32) for s in ("train", "dev"))
    train_data = replace(train_data, labels=np.arange(len(train_data)) % 4)
    dev_data = replace(dev_data, labels=np.arange(len(dev_data)) % 4)
    result = train(load_pretrained(checkpoint, num_labels=4), train_data, dev_data, task="mrpc",
                   out_dir=tmp_path / "ptp", metrics_fn=lambda p, y: {"acc": accuracy(p, y)},
                   config=TrainConfig(epochs=1, batch_size=8, lr=1e-3, select="loss", eval_every=2, progress=False))
    assert set(result.final_metrics) == {"acc"} and result.select == "dev_loss"
    assert result.best_dev_loss == min(h["dev_loss"] for h in result.history)


def test_plain_ft_asks_for_no_hidden_states(tiny_env, tmp_path):
    checkpoint, _ = tiny_env
    model = load_pretrained(checkpoint, num_labels=2)
    flags = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        flags.append((kwargs.get("output_hidden_states"), kwargs.get("output_attentions"), kwargs.get("cls_only")))
        return forward(*args, **kwargs)
    model.forward = recording_forward
    tiny_run(tiny_env, tmp_path / "run", model=model, epochs=1)
    # training steps ask for no states and the last layer's [CLS] row only; evaluation for the [CLS] row only
    assert set(flags) == {(False, False, True), (None, None, True)}


def test_a_loss_reading_every_token_gets_the_full_last_layer(tiny_env, tmp_path):
    """A loss that does not declare student_tokens="cls" (a plug-in without the attribute, here) sees (B, T, H)."""
    class EveryToken(torch.nn.Module):
        requires = frozenset({"labels", "student_hidden_states"})

        def forward(self, inputs):
            shapes.add(tuple(inputs.student_hidden_states[-1].shape[1:]))
            loss = F.cross_entropy(inputs.student_logits, inputs.labels)
            return LossResult(loss + 0 * inputs.student_hidden_states[-1].sum(), {"ce": loss.detach()})

    shapes = set()
    tiny_run(tiny_env, tmp_path / "run", loss=EveryToken(), epochs=1)
    assert shapes and all(length > 1 for length, _ in shapes)


class NanAt(torch.nn.Module):
    """CE, except that call number `k` returns NaN."""

    requires = frozenset({"labels"})

    def __init__(self, k):
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, inputs):
        self.calls += 1
        loss = F.cross_entropy(inputs.student_logits, inputs.labels)
        if self.calls == self.k:
            loss = loss * math.nan
        return LossResult(loss, {"ce": loss.detach()})


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_env, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"global step 7 .*checkpoint\.pt holds the last good state"):
        tiny_run(tiny_env, tmp_path / "run", loss=NanAt(7), eval_every=3, checkpoint_every=3)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (tmp_path / "run" / "result.json").exists() and not (tmp_path / "run" / "final").exists()


def test_by_default_a_checkpoint_when_the_last_is_minutes_old_and_a_cut_run_resumes_bit_identically(
        tiny_env, tmp_path, monkeypatch):
    """No checkpoint_every: checkpoint.pt after a step when the last one (or the start) is CHECKPOINT_MINUTES old,
    never at the last step (final/ and result.json follow). A fake clock that moves 3 minutes per step: 16 steps write
    checkpoints after steps 4, 8 and 12; a run cut in step 11 resumes from step 8 to the uninterrupted run's numbers
    and weights, bit for bit. With the real clock a run of seconds writes none."""
    from pea_kd import run_files
    from pea_kd.trainer import Trainer

    assert run_files.CHECKPOINT_MINUTES == 10
    minutes, saved, calls = [0.0], [], [0]
    step, save = Trainer.step, run_files.RunFiles.save

    def timed_step(self, indices, where=""):
        calls[0] += 1
        if calls[0] == cut_at:
            raise KeyboardInterrupt
        step(self, indices, where)
        minutes[0] += 3

    def recorded_save(self, trainer):
        saved.append(trainer.state.step)
        save(self, trainer)

    monkeypatch.setattr(Trainer, "step", timed_step)
    monkeypatch.setattr(run_files.RunFiles, "save", recorded_save)
    cut_at = None
    tiny_run(tiny_env, tmp_path / "real", eval_every=3)
    assert saved == []  # seconds of work: no checkpoint
    monkeypatch.setattr(run_files, "clock", lambda: 60 * minutes[0])
    full, _ = tiny_run(tiny_env, tmp_path / "full", eval_every=3)
    assert saved == [4, 8, 12]
    cut_at, calls[0], minutes[0], saved[:] = 11, 0, 0.0, []
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tiny_env, tmp_path / "cut", eval_every=3)
    assert saved == [4, 8] and torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["state"]["step"] == 8
    cut_at = None
    resumed, _ = tiny_run(tiny_env, tmp_path / "cut", eval_every=3, resume=True)
    assert [(h["step"], h["train_loss"], h["dev_loss"], h["metrics"]) for h in resumed.history] == \
           [(h["step"], h["train_loss"], h["dev_loss"], h["metrics"]) for h in full.history]
    assert_same_weights(weights(tmp_path / "full" / "final"), weights(tmp_path / "cut" / "final"))
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()


def test_existing_run_resume_rules(tiny_env, tmp_path):
    checkpoint, _ = tiny_env
    tok = load_tokenizer(checkpoint)
    data = load_features("mrpc", "train", tok, 32), load_features("mrpc", "dev", tok, 32)

    def run(out_dir, lr=1e-3, **kwargs):
        torch.manual_seed(0)  # the same new head each time: the starting weights are part of what a run is
        return train(load_pretrained(checkpoint, num_labels=2), *data, task="mrpc", out_dir=out_dir,
                     config=TrainConfig(epochs=1, batch_size=8, lr=lr, progress=False,
                                        keep_checkpoint=kwargs.pop("keep_checkpoint", False)), **kwargs)

    first = run(tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        run(tmp_path / "run")
    done = run(tmp_path / "run", resume=True)  # a finished run: its stored result, no training
    assert done.final_metrics == first.final_metrics and done.history == first.history
    (tmp_path / "run").rename(tmp_path / "moved")  # a runs/ directory copied elsewhere still resumes in place
    assert run(tmp_path / "moved", resume=True).out_dir == str(tmp_path / "moved")
    (tmp_path / "moved").rename(tmp_path / "run")
    assert run(tmp_path / "run", lr=2e-3, overwrite=True).meta["config"]["lr"] == 2e-3
    run(tmp_path / "kept", keep_checkpoint=True)
    assert (tmp_path / "kept" / "checkpoint.pt").is_file()
    with pytest.raises(ValueError, match=r"settings changed: lr 0.001 -> 0.002"):
        run(tmp_path / "kept", lr=2e-3, resume=True)


def test_kill_and_resume_equals_uninterrupted_run(tiny_env, tmp_path):
    """SIGKILL a real `distill` run after its first checkpoint, resume it: same metrics and bit-identical weights."""
    from conftest import write_slow_cli
    from pea_kd.teacher import cache_teacher_outputs, finetune_teacher

    checkpoint, glue = tiny_env
    finetune_teacher("mrpc", out_dir=tmp_path / "teacher", model_name=str(checkpoint),
                     config=TrainConfig(epochs=1, batch_size=16, lr=1e-3, progress=False))
    cache_teacher_outputs(tmp_path / "teacher", "mrpc", max_length=32)
    script = write_slow_cli(tmp_path / "slow_main.py", seconds=0.05)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def command(out_dir, *extra):
        return [sys.executable, str(script), "distill", "--task", "mrpc", "--teacher-dir", str(tmp_path / "teacher"),
                "--student-model", str(checkpoint), "--student-layers", "1", "--variant", "sps",
                "--loss", "kd+pkd+slow", "--max-length", "32", "--epochs", "3", "--batch-size", "8", "--lr", "1e-3",
                "--eval-every", "3", "--checkpoint-every", "3", "--out-dir", str(out_dir), "--no-progress", *extra]

    full = subprocess.run(command(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr

    proc = subprocess.Popen(command(tmp_path / "cut"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    while not ckpt.exists() and proc.poll() is None:  # the event (first checkpoint, or the run ending), not a clock
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "cut" / "result.json").exists()
    step = torch.load(ckpt, weights_only=True)["state"]["step"]
    assert 0 < step < 24

    resumed = subprocess.run(command(tmp_path / "cut", "--resume"), env=env, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "result.json").read_text())
    b = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert a["final_metrics"] == b["final_metrics"] and a["final_dev_loss"] == b["final_dev_loss"]
    assert [(h["step"], h["train_loss"], h["dev_loss"]) for h in a["history"]] == \
           [(h["step"], h["train_loss"], h["dev_loss"]) for h in b["history"]]
    log_steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert log_steps == [h["step"] for h in a["history"]]  # no evaluation logged twice
    assert_same_weights(weights(tmp_path / "full" / "final"), weights(tmp_path / "cut" / "final"))
