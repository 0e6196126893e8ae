"""A run is exactly what it says it is (issue 14): reuse only when everything matches, values given are honoured or
refused, two processes and a full disk are safe, and faults are one-line errors. Each test is one case of the issue."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pea_kd import storage
from pea_kd import teacher as teacher_module
from test_cli import run_cli
from pea_kd.distill import distill_student
from pea_kd.glue import load_examples
from pea_kd.glue_files import GlueFormatError
from pea_kd.identity import RunMismatch, file_digest
from pea_kd.reproduce import ReproduceConfig, run_all
from pea_kd.storage import StorageError
from pea_kd.teacher import CACHE_FILE, cache_teacher_outputs, ensure_teacher_outputs, finetune_teacher
from pea_kd.trainer import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parent.parent
FAST = dict(epochs=1, batch_size=16, lr=1e-3, progress=False)


def one_line_error(err: str) -> str:
    """The error line of a failed command, after checking it is the only line that is not a log line."""
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0]


def make_teacher(tiny_env, out_dir, seed=0, overwrite=False):
    checkpoint, _ = tiny_env
    return finetune_teacher("mrpc", out_dir=out_dir, model_name=str(checkpoint), max_length=32,
                            config=TrainConfig(seed=seed, **FAST), overwrite=overwrite)


def distill(tiny_env, out_dir, teacher_dir, **kwargs):
    checkpoint, _ = tiny_env
    config = TrainConfig(**{**FAST, "batch_size": 8, "keep_checkpoint": kwargs.pop("keep_checkpoint", False)})
    args = dict(teacher_dir=teacher_dir, student_model=str(checkpoint), num_layers=1, variant="sps", loss="kd+pkd",
                max_length=32, config=config)
    return distill_student("mrpc", out_dir=out_dir, **{**args, **kwargs})


# ---------------------------------------------------------------- silent wrong results

def test_a_retrained_teacher_gets_a_new_cache_and_a_moved_one_keeps_its_own(tiny_env, tmp_path, monkeypatch):
    teacher = tmp_path / "teacher"
    make_teacher(tiny_env, teacher)
    old = ensure_teacher_outputs(teacher, "mrpc", max_length=32)
    make_teacher(tiny_env, teacher, seed=1, overwrite=True)  # `finetune-teacher --overwrite`: other weights
    new = ensure_teacher_outputs(teacher, "mrpc", max_length=32)
    assert new["teacher_weights"] == file_digest(teacher / "final" / "model.safetensors") != old["teacher_weights"]
    assert not torch.equal(new["splits"]["train"]["logits"], old["splits"]["train"]["logits"])

    shutil.copytree(teacher, tmp_path / "copied")  # the path is not part of what the teacher is
    monkeypatch.setattr(teacher_module, "cache_teacher_outputs", lambda *a, **k: pytest.fail("recomputed"))
    copied = ensure_teacher_outputs(tmp_path / "copied", "mrpc", max_length=32)
    assert torch.equal(copied["splits"]["train"]["logits"], new["splits"]["train"]["logits"])


def test_a_cache_of_another_precision_is_not_reused(tiny_env, tmp_path):
    teacher = tmp_path / "teacher"
    make_teacher(tiny_env, teacher)
    cache_teacher_outputs(teacher, "mrpc", max_length=32)
    cache = torch.load(teacher / CACHE_FILE, weights_only=True)
    cache["precision"] = "bf16"  # as if computed under bf16 autocast
    torch.save(cache, teacher / CACHE_FILE)
    assert ensure_teacher_outputs(teacher, "mrpc", max_length=32)["precision"] == "fp32"  # recomputed


def test_reproduce_rerun_with_other_settings_is_refused_not_relabelled(tiny_env, tmp_path):
    checkpoint, glue = tiny_env
    base = dict(task="mrpc", teacher=str(checkpoint), student_layers=1, seeds=(0,), methods=("ft", "kd"),
                max_length=32, batch_size=16, smoke=True, smoke_examples=32, data_dir=str(glue),
                out_root=str(tmp_path), progress=False)
    first = run_all(ReproduceConfig(**base))
    assert run_all(ReproduceConfig(**base))["summary"] == first["summary"]  # same settings: reused
    md = (tmp_path / "mrpc-smoke" / "results.md").read_text()
    for change, named in (({"lr": 1e-3}, "lr 5e-05 -> 0.001"), ({"teacher_lr": 2e-3}, "lr 5e-05 -> 0.002"),
                          ({"alpha": 0.1}, "alpha 0.7 -> 0.1"), ({"temperature": 2.0}, "temperature 10.0 -> 2.0"),
                          ({"batch_size": 8}, "batch_size 16 -> 8")):
        with pytest.raises(RunMismatch, match=f"settings changed: .*{named}.*delete it or pass another --out-root"):
            run_all(ReproduceConfig(**{**base, **change}))
    assert (tmp_path / "mrpc-smoke" / "results.md").read_text() == md  # the table still says what was run


@pytest.mark.parametrize("change, named", [
    ({"loss": "kd"}, "loss 'kd\\+pkd' -> 'kd'"), ({"alpha": 0.1}, "alpha 0.7 -> 0.1"),
    ({"temperature": 2.0}, "temperature 10.0 -> 2.0"), ({"max_train_examples": 16}, "train_examples 64 -> 16"),
    ({"variant": "sps_no_shuffle"}, r"plan \[\[0, False\], \[0, True\]\] -> \[\[0, False\], \[0, False\]\]"),
])
def test_resume_with_other_loss_weights_or_data_is_refused(tiny_env, tmp_path, change, named):
    teacher = tmp_path / "teacher"
    make_teacher(tiny_env, teacher)
    distill(tiny_env, tmp_path / "run", teacher, keep_checkpoint=True)  # checkpoint.pt kept: what a kill leaves
    with pytest.raises(RunMismatch, match=f"checkpoint.pt: cannot resume, settings changed: .*{named}"):
        distill(tiny_env, tmp_path / "run", teacher, resume=True, **change)
    (tmp_path / "run" / "checkpoint.pt").unlink()  # a finished run is compared too before it is returned
    with pytest.raises(RunMismatch, match=f"result.json: cannot reuse this finished run, settings changed: .*{named}"):
        distill(tiny_env, tmp_path / "run", teacher, resume=True, **change)
    assert distill(tiny_env, tmp_path / "run", teacher, resume=True).final_step == 8  # same settings: reused


def test_ptp_and_pea_kd_honour_max_train_examples(capsys, tiny_env, tmp_path):
    checkpoint, _ = tiny_env
    teacher = tmp_path / "teacher"
    make_teacher(tiny_env, teacher)
    common = ["--task", "mrpc", "--teacher-dir", teacher, "--student-model", checkpoint, "--student-layers", "1",
              "--max-length", "32", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--no-progress",
              "--max-train-examples", "20"]
    code, out, err = run_cli(capsys, "ptp", *common, "--out-dir", tmp_path / "ptp")
    assert code == 0, err
    meta = json.loads(out)["meta"]
    assert meta["train_examples"] + meta["heldout_examples"] == 20
    code, out, err = run_cli(capsys, "pea-kd", *common, "--out-dir", tmp_path / "peakd", "--ptp-epochs", "1")
    assert code == 0, err
    assert json.loads(out)["meta"]["train_examples"] == 20
    ptp = json.loads((tmp_path / "peakd" / "ptp-sps" / "seed0" / "result.json").read_text())["meta"]
    assert ptp["train_examples"] + ptp["heldout_examples"] == 20


@pytest.mark.parametrize("command, argv, message", [
    ("finetune-teacher", ["--lr", "0"], "need lr > 0"),
    ("finetune-teacher", ["--lr", "-1e-5"], "need lr > 0"),  # argparse said "expected one argument"
    ("finetune-teacher", ["--max-train-examples", "0"], "--max-train-examples: expected a whole number >= 1"),
    ("finetune-teacher", ["--max-train-examples", "-5"], "--max-train-examples: expected a whole number >= 1"),
    ("finetune-teacher", ["--select", "foo"], "select='foo' is not a metric of MRPC; choose loss or one of"),
    ("finetune-teacher", ["--device", "foo"], "unknown device 'foo'"),
    ("distill", ["--loss", "kd+pkd", "--teacher-dir", "t", "--beta", "-5"], "beta must be a finite number >= 0"),
    ("reproduce", ["--teacher-lr", "0"], "need lr > 0"),
    ("reproduce", ["--teacher-epochs", "0"], "epochs must be >= 1"),
    ("reproduce", ["--student-epochs", "-1"], "epochs must be >= 1"),
    ("reproduce", ["--student-layers", "7"], "--student-layers 7: the student takes the bottom layers of the "
                                            "2-layer teacher"),
    ("reproduce", ["--beta", "-5"], "beta must be a finite number >= 0"),
    ("ptp", ["--teacher-dir", "t", "--t1", "1.5"], "t1 must be a number in (0, 1]"),
])
def test_zero_negative_and_out_of_range_values_are_refused_before_any_work(capsys, tiny_env, tmp_path, monkeypatch,
                                                                          command, argv, message):
    checkpoint, _ = tiny_env

    def expensive(*args, **kwargs):
        pytest.fail("work started before the check")

    monkeypatch.setattr("pea_kd.trainer.Trainer.step", expensive)  # training, and the teacher's cache or training:
    monkeypatch.setattr("pea_kd.reproduce.finetune_teacher", expensive)
    monkeypatch.setattr("pea_kd.ptp_stage.ensure_teacher_outputs", expensive)
    monkeypatch.setattr("pea_kd.distill.ensure_teacher_outputs", expensive)
    model = ["--teacher", checkpoint] if command == "reproduce" else (
        ["--model", checkpoint] if command == "finetune-teacher" else ["--student-model", checkpoint])
    out = ["--out-root" if command == "reproduce" else "--out-dir", tmp_path / "out"]
    code, _, err = run_cli(capsys, command, "--task", "mrpc", *model, *out, *argv)
    assert code in (1, 2) and message in one_line_error(err)
    assert len(one_line_error(err)) < 300


def test_stsb_scores_outside_0_to_5_are_refused_with_file_and_row(tmp_path):
    from conftest import STSB_HEADER
    (tmp_path / "STS-B").mkdir()
    for score in ("7.5", "-1", "1000"):
        (tmp_path / "STS-B" / "train.tsv").write_text(
            f"{STSB_HEADER}\n0\tg\tf\t2012\t0\tn\tn\ta\tb\t2.5\n1\tg\tf\t2012\t1\tn\tn\ta\tb\t{score}\n")
        with pytest.raises(GlueFormatError, match=rf"train.tsv:3: expected a score in \[0, 5\], got '{score}'"):
            load_examples("stsb", "train", tmp_path)


# ---------------------------------------------------------------- two runs at once, a full disk

def test_two_processes_on_one_run_directory_one_trains_the_other_names_it(tiny_env, tmp_path):
    from conftest import write_slow_cli

    checkpoint, _ = tiny_env
    script = write_slow_cli(tmp_path / "slow_main.py", seconds=0.1)
    command = [sys.executable, str(script), "distill", "--task", "mrpc", "--student-model", str(checkpoint),
               "--student-layers", "1", "--loss", "ce+slow", "--max-length", "32", "--epochs", "4",
               "--batch-size", "8", "--lr", "1e-3", "--out-dir", str(tmp_path / "run"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # started together
    outcomes = [(p.pid, p.wait(timeout=300), p.stderr.read()) for p in procs]
    winners = [o for o in outcomes if o[1] == 0]
    losers = [o for o in outcomes if o[1] != 0]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    line = one_line_error(losers[0][2])
    assert f"{tmp_path / 'run'} is in use by process {winners[0][0]} on " in line, line
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [8, 16, 24, 32]  # one run's evaluations, none twice
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tiny_env, tmp_path, monkeypatch):
    from test_trainer import tiny_run
    saves, real_save = [], torch.save

    def save(obj, f, *args, **kwargs):  # the 2nd checkpoint hits a full disk half-way
        saves.append(1)
        if len(saves) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    with pytest.raises(StorageError) as err:
        tiny_run(tiny_env, run, eval_every=3, checkpoint_every=3)
    assert str(err.value) == f"cannot write {run / 'checkpoint.pt'}: No space left on device"
    assert sorted(p.name for p in run.iterdir() if "lock" not in p.name) == ["checkpoint.pt", "log.jsonl"]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"] == 3  # the last good one


def test_a_read_only_output_directory_is_refused_before_training(capsys, tiny_env, tmp_path, monkeypatch):
    checkpoint, _ = tiny_env

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(storage.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr("pea_kd.trainer.Trainer.step", lambda *a, **k: pytest.fail("trained"))
    code, _, err = run_cli(capsys, "finetune-teacher", "--task", "mrpc", "--model", checkpoint, "--max-length", 32,
                           "--out-dir", tmp_path / "ro", "--no-progress")
    assert code == 1 and one_line_error(err).endswith(f"cannot write {tmp_path / 'ro'}: Read-only file system")


# ---------------------------------------------------------------- one line instead of a traceback

def test_a_truncated_or_malicious_checkpoint_on_resume_is_one_line(capsys, tiny_env, tmp_path):
    checkpoint, _ = tiny_env
    argv = ["finetune-teacher", "--task", "mrpc", "--model", checkpoint, "--max-length", 32, "--epochs", 1,
            "--batch-size", 16, "--no-progress", "--out-dir", tmp_path / "t"]
    assert run_cli(capsys, *argv, "--checkpoint-every", 2, "--select", "acc")[0] == 0
    ckpt = tmp_path / "t" / "checkpoint.pt"
    (tmp_path / "t" / "result.json").unlink()
    for content in (b"PK\x03\x04 truncated", b"cos\nsystem\n(S'echo hacked'\ntR."):
        ckpt.write_bytes(content)
        code, _, err = run_cli(capsys, *argv, "--resume")
        assert code == 1 and f"{ckpt}: unreadable checkpoint" in one_line_error(err)


def test_device_cuda_without_cuda_is_one_line(capsys, tiny_env, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    checkpoint, _ = tiny_env
    code, _, err = run_cli(capsys, "finetune-teacher", "--task", "mrpc", "--model", checkpoint,
                           "--out-dir", tmp_path / "t", "--device", "cuda")
    assert code == 1 and "device 'cuda': this machine has no CUDA GPU" in one_line_error(err)


def test_tensors_digest_sees_names_dtypes_shapes_and_values():
    from pea_kd.identity import tensors_digest
    base = {"w": torch.arange(6.0).reshape(2, 3), "s": torch.tensor(1.0)}
    same = {"s": torch.tensor(1.0), "w": torch.arange(6.0).reshape(2, 3)}  # order does not matter
    assert tensors_digest(base) == tensors_digest(same)
    for other in ({**base, "w": base["w"].reshape(3, 2)}, {**base, "w": base["w"].double()},
                  {**base, "s": torch.tensor(1.0 + 1e-7)}, {"v": base["w"], "s": base["s"]},
                  {**base, "w": base["w"].bfloat16()}):
        assert tensors_digest(other) != tensors_digest(base)


def test_file_digest_reads_a_replaced_file_again(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"one")
    first = file_digest(path)
    assert file_digest(path) == first
    storage.write_atomic(path, b"two")  # what save_pretrained / --overwrite does: a new file in its place
    assert file_digest(path) != first


# ---------------------------------------------------------------- identity from recorded digests (issue 25)

def test_a_run_is_identified_without_reading_the_teacher_rows_or_the_examples_again(tiny_env, tmp_path, monkeypatch):
    from pea_kd import features, teacher_cache
    teacher = tmp_path / "teacher"
    make_teacher(tiny_env, teacher)
    first = distill(tiny_env, tmp_path / "run", teacher, keep_checkpoint=True)
    monkeypatch.setattr(teacher_cache, "rows_digest", lambda *a: pytest.fail("teacher rows hashed"))
    monkeypatch.setattr(features, "inputs_digest", lambda *a: pytest.fail("examples hashed"))
    monkeypatch.setattr(teacher_module, "cache_teacher_outputs", lambda *a, **k: pytest.fail("recomputed"))
    again = distill(tiny_env, tmp_path / "run", teacher, resume=True)  # every digest from the files' records
    assert again.meta["identity"] == first.meta["identity"]


def test_resume_after_the_teacher_changed_is_refused_and_after_the_cache_grew_is_not(tiny_env, tmp_path):
    teacher = tmp_path / "teacher"
    make_teacher(tiny_env, teacher)
    distill(tiny_env, tmp_path / "run", teacher, keep_checkpoint=True)  # kd+pkd: the cache holds layer 1 only
    assert torch.load(teacher / CACHE_FILE, weights_only=True)["layers"] == [1]
    cache_teacher_outputs(teacher, "mrpc", max_length=32)  # every layer now; layer 1 and the logits bit-identical
    assert distill(tiny_env, tmp_path / "run", teacher, resume=True).final_step == 8
    make_teacher(tiny_env, teacher, seed=1, overwrite=True)  # another teacher: other targets
    with pytest.raises(RunMismatch, match="result.json: cannot reuse this finished run, settings changed: "
                                          "teacher_targets '[0-9a-f]{16}' -> '[0-9a-f]{16}'"):
        distill(tiny_env, tmp_path / "run", teacher, resume=True)
