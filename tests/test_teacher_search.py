"""pea_kd.teacher_search and finetune_teacher(holdout=...): a teacher recipe chosen without reading dev."""
import json
import math

import numpy as np
import pytest

from pea_kd.cli import main
from pea_kd.features import split_holdout
from pea_kd.teacher import finetune_teacher
from pea_kd.teacher_search import format_search, search_teacher_recipe, summarize_search
from pea_kd.trainer import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = dict(batch_size=16, progress=False)


def test_split_holdout_is_a_seeded_partition():
    fit, held = split_holdout(100, 0.2, seed=3)
    assert len(held) == 20 and len(fit) == 80
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(100))
    again, _ = split_holdout(100, 0.2, seed=3)
    other, _ = split_holdout(100, 0.2, seed=4)
    assert np.array_equal(fit, again) and not np.array_equal(fit, other)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        split_holdout(10, 1.0, 0)


def test_holdout_teacher_never_reads_dev(tiny_env, tmp_path):
    checkpoint, glue = tiny_env
    (glue / "MRPC" / "dev.tsv").write_text("not a GLUE file\n")  # reading dev would raise a GlueFormatError
    result = finetune_teacher("mrpc", out_dir=tmp_path / "t", model_name=str(checkpoint), max_length=32,
                              holdout=0.25, config=TrainConfig(epochs=1, lr=1e-3, **FAST))
    assert result.meta["eval_split"] == "train-holdout"
    assert (result.meta["train_examples"], result.meta["dev_examples"]) == (48, 16)  # 64 train rows, 25% held out
    assert main(["finetune-teacher", "--task", "mrpc", "--model", str(checkpoint), "--holdout", "0.25", "--epochs",
                 "1", "--max-length", "32", "--out-dir", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "cli" / "result.json").read_text())["meta"]["dev_examples"] == 16


def test_summary_averages_seeds_and_prefers_cheaper_recipes_on_ties():
    def run(lr, epochs, seed, acc):
        return {"lr": lr, "epochs": epochs, "seed": seed, "heldout": {"acc": acc}, "heldout_loss": 1 - acc,
                "heldout_examples": 100, "seconds": 10.0}
    runs = [run(5e-5, 3, 0, 0.60), run(5e-5, 3, 1, 0.70),  # mean 0.65
            run(1e-4, 3, 0, 0.64), run(1e-4, 3, 1, 0.66),  # mean 0.65: tie, larger lr
            run(5e-5, 10, 0, 0.65), run(5e-5, 10, 1, 0.65),  # mean 0.65: tie, more epochs
            run(2e-5, 10, 0, 0.50), run(2e-5, 10, 1, 0.52)]
    rows = summarize_search(runs, "acc")
    assert [(r["lr"], r["epochs"]) for r in rows] == [(5e-5, 3), (1e-4, 3), (5e-5, 10), (2e-5, 10)]
    assert rows[0]["score"] == pytest.approx(0.65) and rows[-1]["score"] == pytest.approx(0.51)
    assert rows[0]["seconds"] == 20.0 and rows[0]["seeds"] == [0, 1]
    report = {"task": "RTE", "model": "m", "holdout": 0.2, "primary": "acc", "summary": rows, "complete": True,
              "best": {"lr": 5e-5, "epochs": 3}}
    table = format_search(report)
    se = 100 * math.sqrt(0.65 * 0.35 / 200)  # binomial standard error over 2 seeds x 100 held-out examples
    assert f"| 5e-05 | 3 | 0,1 | 65.0 | {se:.1f} |" in table and "Chosen: lr 5e-05, 3 epochs." in table


def test_search_runs_the_grid_resumes_and_writes_its_report(tiny_env, tmp_path, capsys):
    checkpoint, glue = tiny_env
    out = tmp_path / "search"
    argv = ["teacher-search", "--task", "mrpc", "--model", str(checkpoint), "--lrs", "1e-3,1e-4", "--epochs", "1",
            "--holdout", "0.25", "--batch-size", "16", "--max-length", "32", "--out-dir", str(out), "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "search.json").read_text())
    assert report["complete"] and len(report["runs"]) == 2 and report["task"] == "MRPC"
    scores = {r["lr"]: r["heldout"][report["primary"]] for r in report["runs"]}  # MRPC: acc_and_f1
    assert report["best"]["lr"] == max(scores, key=lambda lr: (scores[lr], -lr))
    assert all(not (out / f"lr{lr:g}-ep1-seed0" / "final").exists() for lr in scores)  # models dropped once scored
    assert "| lr | epochs |" in (out / "search.md").read_text()
    first = (out / "lr0.001-ep1-seed0" / "result.json").stat().st_mtime_ns
    again = search_teacher_recipe("mrpc", out_dir=out, model_name=str(checkpoint), lrs=(1e-3, 1e-4), epochs=(1,),
                                  holdout=0.25, max_length=32, config=TrainConfig(**FAST))
    assert again["summary"] == report["summary"]  # finished runs are reused, not retrained
    assert (out / "lr0.001-ep1-seed0" / "result.json").stat().st_mtime_ns == first


def test_search_rejects_bad_grids(tiny_env, tmp_path, capsys):
    with pytest.raises(ValueError, match="at least one value"):
        search_teacher_recipe("mrpc", out_dir=tmp_path, lrs=())
    with pytest.raises(SystemExit):
        main(["teacher-search", "--task", "mrpc", "--lrs", "1e-4,abc"])
    assert "expected comma-separated floats" in capsys.readouterr().err
