"""`python -m pea_kd`: documented flags, one-line usage errors, and the teacher -> cache -> distill pipeline."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pea_kd.cli import COMMANDS, build_parser, main

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parent.parent
FAST = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--max-length", "32", "--no-progress"]


def run_cli(capsys, *argv):
    """main(argv) -> (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_every_flag_of_every_command_is_documented():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"finetune-teacher", "cache-teacher", "distill"} <= set(subparsers.choices) == set(COMMANDS)
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings} has no help"


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "pea_kd", "distill", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--teacher-dir", "--student-layers", "--variant", "--loss", "--alpha", "--temperature", "--beta",
                 "--kl-reduction", "--init-from", "--seed", "--epochs", "--out-dir", "--resume", "--eval-every",
                 "--max-train-examples", "kd+pkd", "pkd_uncertainty"):
        assert flag in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["--loss", "kd"], "pass a teacher directory (--teacher-dir)"),
    (["--loss", "kd+pkd", "--teacher-dir", "t", "--student-layers", "1"], "1 effective layer"),
    (["--loss", "kd", "--teacher-dir", "t", "--beta", "10"], "--beta weights the layer-matching"),
    (["--loss", "ce", "--alpha", "0.5"], "--alpha/--temperature"),
    (["--loss", "kd", "--teacher-dir", "t", "--variant", "sps6", "--student-layers", "3"], "needs num_layers=6"),
    (["--loss", "kd+nope", "--teacher-dir", "t"], "unknown loss 'nope'"),
    (["--variant", "shuffled"], "invalid choice"),
])
def test_bad_flag_combinations_are_one_line_usage_errors(capsys, argv, message):
    code, out, err = run_cli(capsys, "distill", "--task", "mrpc", *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("python -m pea_kd distill: error:")


def test_runtime_errors_are_one_line(capsys, tmp_path, tiny_env):
    checkpoint, _ = tiny_env
    code, _, err = run_cli(capsys, "finetune-teacher", "--task", "rte", "--model", checkpoint,
                           "--out-dir", tmp_path / "t", *FAST)
    assert code == 1 and "GLUE RTE split 'train' not found" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "cache-teacher", "--task", "mrpc", "--teacher-dir", tmp_path / "nothing")
    assert code == 1 and "no teacher checkpoint" in err


def test_teacher_cache_distill_pipeline(capsys, tmp_path, tiny_env):
    checkpoint, _ = tiny_env
    teacher = tmp_path / "teacher"
    code, out, err = run_cli(capsys, "finetune-teacher", "--task", "mrpc", "--model", checkpoint,
                             "--out-dir", teacher, *FAST)
    assert code == 0, err
    result = json.loads(out)
    assert "history" not in result and result["meta"]["task"] == "MRPC" and result["final_step"] == 4
    code, out, err = run_cli(capsys, "finetune-teacher", "--task", "mrpc", "--model", checkpoint,
                             "--out-dir", teacher, *FAST)
    assert code == 1 and "--resume" in err  # an existing run is never overwritten silently

    code, out, err = run_cli(capsys, "cache-teacher", "--task", "mrpc", "--teacher-dir", teacher, "--max-length", 32)
    assert code == 0 and json.loads(out)["teacher_outputs"] == str(teacher / "teacher_outputs.pt")

    for loss, extra in (("ce", []), ("kd+pkd", ["--teacher-dir", teacher, "--beta", "10"])):
        code, out, err = run_cli(capsys, "distill", "--task", "mrpc", "--student-model", checkpoint,
                                 "--student-layers", "1", "--variant", "sps", "--loss", loss,
                                 "--out-dir", tmp_path / loss, "--max-train-examples", "32", *extra, *FAST)
        assert code == 0, err
        meta = json.loads(out)["meta"]
        assert (meta["loss"], meta["effective_layers"], meta["train_examples"]) == (loss, 2, 32)
        assert meta["config"]["lr"] == 1e-3 and meta["config"]["epochs"] == 1
    assert meta["beta"] == 10.0 and [tuple(p) for p in meta["layer_map"]] == [(1, 1)]
    assert (tmp_path / "kd+pkd" / "final" / "student.json").is_file()


def test_default_learning_rate_follows_model_width(tmp_path):
    from conftest import write_tiny_checkpoint
    from pea_kd.cli import default_lr
    assert default_lr("minilm-l6") == 5e-5  # hidden 384
    wide = write_tiny_checkpoint(tmp_path / "wide", hidden_size=768, num_attention_heads=12, intermediate_size=32)
    assert default_lr(wide) == 2e-5  # BERT-base width: the authors' rate


def test_plugin_losses_are_listed_in_help_and_unknown_loss_suggests_plugin(tmp_path, capsys):
    plugin = tmp_path / "course_plugin_loss.py"
    plugin.write_text('from pea_kd.losses import LossResult, register_loss\n\n\n'
                      '@register_loss("course_plugin_loss")\n'
                      'def course_plugin_loss(inputs):\n'
                      '    """A plugin loss for the CLI test."""\n'
                      '    return LossResult(inputs.student_logits.sum(), {})\n', encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "pea_kd", "--plugin", str(plugin), "distill", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    help_text = " ".join(out.stdout.split())  # argparse wraps the list of losses wherever the line is full
    assert out.returncode == 0 and "course_plugin_loss: A plugin loss for the CLI test" in help_text
    code, _, err = run_cli(capsys, "distill", "--task", "mrpc", "--loss", "kd+not_registered", "--teacher-dir", "t")
    assert code == 2 and "unknown loss 'not_registered'" in err and "--plugin" in err
    code, _, err = run_cli(capsys, "--plugin", tmp_path / "missing.py", "distill", "--task", "mrpc")
    assert code == 1 and err.strip() == f"python -m pea_kd: error: --plugin {tmp_path / 'missing.py'}: no such file"
