"""`make reproduce SMOKE=1` on real MRPC data: every stage runs, every artefact is written and well-formed."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pea_kd.glue import load_examples
from pea_kd import reproduce, reproduce_runs
from pea_kd.parallel import next_unit, resolve_jobs, start_order
from pea_kd.report import format_seed_table, format_table, majority_baseline, mean_std, summarize, with_provenance
from pea_kd.reproduce import METHODS, ReproduceConfig
from pea_kd.reproduce_setup import smoke_data_dir
from pea_kd.reproduce_runs import code_commit

ROOT = Path(__file__).resolve().parent.parent
GLUE = Path(os.environ.get("GLUE_DIR") or ROOT.parent / "shared" / "glue_data")
needs_glue = pytest.mark.skipif(not (GLUE / "MRPC" / "train.tsv").is_file(), reason="GLUE MRPC data not available")


@needs_glue
def test_smoke_data_dir_keeps_header_and_first_rows(tmp_path):
    smoke_data_dir("mrpc", GLUE, tmp_path, 10)
    train = load_examples("mrpc", "train", tmp_path)
    assert len(train) == 10 and train == load_examples("mrpc", "train", GLUE)[:10]
    smoke_data_dir("cola", GLUE, tmp_path, 7)  # CoLA: no header line
    assert load_examples("cola", "dev", tmp_path) == load_examples("cola", "dev", GLUE)[:7]


def test_summary_is_mean_and_sample_std_over_seeds_and_keeps_each_seed():
    runs = [{"method": "KD", "slug": "kd", "seed": s, "parameters": 5, "effective_layers": 3, "seconds": 10.0 * (s + 1),
             "final": {"acc": a}, "best_dev": {"acc": b}} for s, a, b in ((0, 0.70, 0.72), (1, 0.74, 0.75))]
    (row,) = summarize(runs, ("acc",))
    assert row["final"]["acc"] == pytest.approx((72.0, 2 ** 0.5 * 2))  # stdev of 70, 74 = 2.83
    assert row["best_dev"]["acc"] == pytest.approx((73.5, 2 ** 0.5 * 1.5))
    assert (row["slug"], row["seeds"]) == ("kd", [0, 1])
    assert row["per_seed"] == {"final": {"acc": pytest.approx([70.0, 74.0])},
                               "best_dev": {"acc": pytest.approx([72.0, 75.0])}}  # in %, in the order of "seeds"
    assert mean_std([3.0]) == (3.0, 0.0)


def test_majority_baseline_is_the_most_frequent_training_label_scored_on_dev():
    # train: class 1 twice, class 0 once -> predict 1 for every dev example; dev labels 1, 0, 1, 1
    m = majority_baseline("mrpc", [1, 0, 1], [1, 0, 1, 1])
    assert (m["rule"], m["prediction"], m["label"], m["train_share"]) == ("majority class of train", 1, "1", 2 / 3)
    tp, fp, fn = 3, 1, 0  # F1 of class 1 = 2TP / (2TP + FP + FN)
    assert m["metrics"] == pytest.approx({"acc": 0.75, "f1": 2 * tp / (2 * tp + fp + fn),
                                          "acc_and_f1": (0.75 + 6 / 7) / 2})
    assert (m["train_examples"], m["dev_examples"]) == (3, 4)
    assert majority_baseline("sst2", [0, 1], [1, 1])["prediction"] == 0  # a tie goes to the lowest class id
    assert majority_baseline("cola", [1, 1, 0], [0, 1])["metrics"] == {"mcc": 0.0}  # one class predicted: MCC 0
    stsb = majority_baseline("stsb", [1.0, 2.0, 4.5], [0.5, 3.0])  # regression: the mean training score
    assert (stsb["rule"], stsb["label"], stsb["train_share"]) == ("mean training score", None, None)
    assert stsb["prediction"] == pytest.approx(2.5)
    assert stsb["metrics"] == {"pearson": 0.0, "spearman": 0.0, "corr": 0.0}
    with pytest.raises(ValueError, match="needs a non-empty 1-D array of training labels"):
        majority_baseline("mrpc", [], [1])


@needs_glue
def test_majority_baseline_on_mrpc_is_the_known_floor():
    train = [e.label for e in load_examples("mrpc", "train", GLUE)]
    dev = [e.label for e in load_examples("mrpc", "dev", GLUE)]
    m = majority_baseline("mrpc", train, dev)
    positives = sum(dev)  # 279 of 408 dev pairs are paraphrases
    assert (m["prediction"], len(train), len(dev), positives) == (1, 3668, 408, 279)
    assert m["train_share"] == pytest.approx(sum(train) / 3668)
    assert m["metrics"]["acc"] == pytest.approx(positives / 408)  # 68.4%
    assert m["metrics"]["f1"] == pytest.approx(2 * positives / (2 * positives + (408 - positives)))  # 81.2%
    assert (round(100 * m["metrics"]["acc"], 1), round(100 * m["metrics"]["f1"], 1)) == (68.4, 81.2)


def test_a_report_without_majority_or_per_seed_values_still_renders():
    """results.json files written before the majority row (and the hand-made notebooks/results file) keep working."""
    committed = json.loads((ROOT / "notebooks" / "results" / "mrpc_results.json").read_text())
    assert '| majority class ("1") | - | - | - | 68.4 | 81.2 | 68.4 | 81.2 | - |' in format_table(committed)
    old = {k: v for k, v in committed.items() if k != "majority"}
    old["summary"] = [{k: v for k, v in row.items() if k != "per_seed"} for row in old["summary"]]
    table = format_table(old)
    assert "majority" not in table and len(table.splitlines()) == 2 + 1 + len(old["summary"])  # head, teacher, rows
    assert format_seed_table(old) == ""


def test_the_readme_shows_the_committed_mrpc_table():
    """The README's headline table is the published results file, row for row (republishing must update both)."""
    committed = json.loads((ROOT / "notebooks" / "results" / "mrpc_results.json").read_text())
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    table = format_table(committed).splitlines()
    heading = next(i for i, line in enumerate(readme) if line.startswith("### MRPC (measured on"))
    start = readme.index(table[0], heading)
    assert readme[start:start + len(table)] == table
    precision = committed["environment"]["precision"]
    intro = " ".join(readme[heading + 1:start])  # between the heading and the table: the settings, precision included
    assert f"; {precision} (" in intro or f"; {precision}." in intro, (precision, intro)


def test_publish_refuses_smoke_incomplete_and_old_reports():
    base = {"task": "MRPC", "complete": True, "config": {"smoke": False, "seeds": [0]}, "environment": {},
            "majority": {}, "summary": [{"method": "FT", "per_seed": {}}]}
    with pytest.raises(ValueError, match="not complete"):
        with_provenance({**base, "complete": False}, "r.json")
    with pytest.raises(ValueError, match="smoke run"):
        with_provenance({**base, "config": {"smoke": True}}, "r.json")
    with pytest.raises(ValueError, match="rerun `python -m pea_kd reproduce` with the same settings"):
        with_provenance({k: v for k, v in base.items() if k != "majority"}, "r.json")
    published = with_provenance(base, "runs/mrpc/results.json", note="a quiet machine")
    assert list(published)[0] == "provenance" and published["provenance"]["note"] == "a quiet machine"
    assert "runs/mrpc/results.json" in published["provenance"]["source"]
    assert published["provenance"]["code_commit"] == "not recorded"


def test_jobs_split_the_threads():
    threads = torch.get_num_threads()
    assert resolve_jobs(1) == (1, threads)
    assert resolve_jobs(2) == (2, max(1, threads // 2))
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        resolve_jobs(0)


def test_parallel_students_start_costly_first_and_never_two_sps_on_two_workers():
    by_slug = {m.slug: m for m in METHODS}
    units = [(seed, m) for seed in (3, 1) for m in METHODS]
    queue = start_order(units)
    assert [(seed, m.slug) for seed, m in queue[:6]] == [(3, "pea-kd"), (3, "sps-pkd"), (3, "ptp-pkd"), (3, "ft"),
                                                        (3, "kd"), (3, "pkd")]  # seeds keep their order
    assert next_unit(queue, sps_running=0, jobs=2) == (3, by_slug["pea-kd"])
    assert next_unit(queue, sps_running=1, jobs=2) == (3, by_slug["ptp-pkd"])  # skips sps-pkd while pea-kd runs
    assert next_unit(queue, sps_running=1, jobs=4) == (3, by_slug["pea-kd"])  # 4 workers: 2 SPS slots
    only_sps = [u for u in queue if u[1].variant == "sps"]
    assert next_unit(only_sps, sps_running=1, jobs=2) is None and next_unit([], 0, 2) is None
    assert next_unit(only_sps, sps_running=0, jobs=1) == (3, by_slug["pea-kd"])


def test_bad_method_is_refused():
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['nope'\]"):
        ReproduceConfig(methods=("kd", "nope"))


def test_regression_task_runs_every_method_but_ptp_and_refuses_ptp_when_asked():
    assert ReproduceConfig(task="stsb", lr=5e-5).methods == ("ft", "kd", "pkd", "sps-pkd")
    with pytest.raises(ValueError, match=r"pea-kd: PTP is defined for classification tasks; STS-B is a regression"):
        ReproduceConfig(task="stsb", lr=5e-5, methods=("kd", "pea-kd"))
    assert ReproduceConfig(task="mrpc", lr=5e-5).methods == tuple(m.slug for m in METHODS)


def test_the_rows_beyond_the_paper_come_only_with_the_switch():
    paper = tuple(m.slug for m in METHODS)
    assert ReproduceConfig(task="mrpc").methods == paper  # the paper's comparison, as it is
    beyond = ReproduceConfig(task="mrpc", beyond_paper=True)
    assert beyond.methods == paper + ("kd-da", "pea-kd-da", "pea-kd-da-hidden")
    assert [m.name for m in beyond.selected()][-3:] == ["KD + DA †", "Pea-KD + DA †", "Pea-KD + DA + hidden †"]
    assert ReproduceConfig(task="stsb", lr=5e-5, beyond_paper=True).methods == ("ft", "kd", "pkd", "sps-pkd", "kd-da")
    with pytest.raises(ValueError, match="--augment-epochs must be >= 1"):
        ReproduceConfig(beyond_paper=True, augment_epochs=0)
    with pytest.raises(ValueError, match=r"^--augment-rate \(r, .*\) must be in \(0, 1\], got 0\.0$"):
        ReproduceConfig(beyond_paper=True, augment_rate=0.0)
    with pytest.raises(ValueError, match=r"^--augment-neighbours \(K, .*\) must be >= 1, got 0$"):
        ReproduceConfig(beyond_paper=True, augment_neighbours=0)


@needs_glue
def test_reproduce_smoke_beyond_the_paper_adds_the_rows_and_labels_the_augmented_set_once(tmp_path):
    env = {**os.environ, "GLUE_DIR": str(GLUE), "PEA_KD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pea_kd", "reproduce", "--task", "mrpc", "--smoke", "--out-root", str(tmp_path),
           "--no-progress", "--methods", "kd", "--beyond-paper"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    root = tmp_path / "mrpc-smoke"
    results = json.loads((root / "results.json").read_text())
    names = ["KD", "KD + DA †", "Pea-KD + DA †", "Pea-KD + DA + hidden †"]
    assert [r["method"] for r in results["summary"]] == names and results["complete"]
    augment = results["augment"]
    assert (augment["variants"], augment["epochs"], augment["examples"]) == (2, 1, 128)  # smoke: 2 variants of 64
    assert augment["teacher_seconds"] > 0 and len(list((root / "teacher").glob("teacher_outputs-augmented-*.pt"))) == 1
    assert run.stderr.count("augment: teacher outputs on 128 augmented examples") == 1  # once, for every row
    runs = {r["method"]: r for r in results["runs"]}
    assert runs["KD + DA †"]["result"]["meta"]["train_examples"] == 64 * 3  # originals + 2 variants each
    assert runs["Pea-KD + DA + hidden †"]["loss"] == "kd+pkd+hidden"
    parts = json.loads((root / "pea-kd-da-hidden" / "seed0" / "log.jsonl").read_text().splitlines()[-1])
    assert {"kd", "ce", "pkd", "hidden"} <= set(parts["train_parts"])
    assert "| KD + DA † | 1 | 17.4M | 3 |" in (root / "results.md").read_text()
    assert "not in the paper (ours)" in (root / "results.md").read_text()
    budget = subprocess.run(cmd + ["--estimate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert budget.returncode == 0, budget.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in budget.stdout.splitlines() if line.startswith("| ")}
    assert {"teacher labels DA †", *names} <= set(rows)


def test_teacher_recipe_comes_from_the_search_table_unless_overridden(monkeypatch):
    monkeypatch.setattr(reproduce, "TEACHER_RECIPES", {("minilm-l6", "RTE"): {"lr": 1e-4, "epochs": 10}})
    rte = ReproduceConfig(task="rte", lr=5e-5)
    assert (rte.teacher_lr, rte.teacher_epochs, rte.lr) == (1e-4, 10, 5e-5)  # students keep their own lr
    assert (ReproduceConfig(task="rte", teacher_lr=3e-5, teacher_epochs=4).teacher_lr,
            ReproduceConfig(task="rte", teacher_epochs=4).teacher_epochs) == (3e-5, 4)
    mrpc = ReproduceConfig(task="mrpc", lr=5e-5)  # no entry: the plain recipe
    assert (mrpc.teacher_lr, mrpc.teacher_epochs) == (5e-5, 3)


@needs_glue
def test_reproduce_smoke_writes_every_artefact_and_resumes(tmp_path):
    env = {**os.environ, "GLUE_DIR": str(GLUE), "PEA_KD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pea_kd", "reproduce", "--task", "mrpc", "--smoke", "--out-root", str(tmp_path),
           "--no-progress"]
    first = subprocess.run(cmd + ["--jobs", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    root = tmp_path / "mrpc-smoke"
    results = json.loads((root / "results.json").read_text())
    # the overall progress (no terminal: log lines): the plan, "stage k of 7 done" per stage in whatever order the two
    # workers finish, the real time beside the expected one; results.json keeps the ETA errors
    assert "reproduce plan: 7 stages" in first.stderr and "expected at the start" in first.stderr
    assert sorted(re.findall(r"reproduce: stage (\d) of 7 done", first.stderr)) == list("1234567")
    progress = results["progress"]
    assert (progress["stages"], progress["done"], progress["reused"], progress["jobs"]) == (7, 7, [], 2)
    assert progress["real_seconds"] > 0 and len(progress["history"]) == 8 and progress["history"][-1]["eta_s"] == 0
    assert progress["eta_error_seconds"] == pytest.approx(progress["expected_seconds"] - progress["real_seconds"])
    assert progress["history"][-1]["error_s"] == pytest.approx(0.0, abs=1e-6)
    assert results["complete"] and results["task"] == "MRPC"
    assert (results["environment"]["jobs"], results["environment"]["torch_threads"]) == (2, 1)
    assert [r["method"] for r in results["summary"]] == [m.name for m in METHODS]
    assert [r["method"] for r in results["runs"]] == [m.name for m in METHODS]  # table order, whatever finished first
    for row in results["summary"]:
        assert set(row["final"]) == {"acc", "f1", "acc_and_f1"}
        assert all(0 <= mean <= 100 for mean, _ in row["final"].values())
    by_name = {r["method"]: r for r in results["summary"]}
    assert by_name["Pea-KD"]["parameters"] == by_name["PKD"]["parameters"]  # SPS adds no parameters
    assert (by_name["Pea-KD"]["effective_layers"], by_name["PKD"]["effective_layers"]) == (6, 3)
    for run in results["runs"]:  # each stage's own worker: its CPU seconds and peak memory, within the run's largest
        assert run["process"]["cpu_seconds"] > 1 and 100 < run["process"]["peak_rss_mb"]
        assert run["process"]["peak_rss_mb"] <= results["environment"]["peak_rss_mb"]
    for stage in ["teacher", "ptp-original/seed0", "ptp-sps/seed0"] + [f"{m.slug}/seed0" for m in METHODS]:
        assert json.loads((root / stage / "result.json").read_text())["final_metrics"], stage
    assert (root / "teacher" / "teacher_outputs.pt").is_file()
    table = (root / "results.md").read_text()
    assert "SMOKE RUN" in table and "| Pea-KD | 1 | 17.4M | 6 |" in table and "best dev" in table
    # the floor: the majority class of the (smoke) training rows, scored on the (smoke) dev rows with pea_kd.metrics
    smoke_train = [e.label for e in load_examples("mrpc", "train", root / "glue")]
    smoke_dev = [e.label for e in load_examples("mrpc", "dev", root / "glue")]
    assert results["majority"] == majority_baseline("mrpc", smoke_train, smoke_dev)
    floor = results["majority"]["metrics"]
    label = results["majority"]["label"]
    assert f'| majority class ("{label}") | - | - | - | {100 * floor["acc"]:.1f} | {100 * floor["f1"]:.1f} |' in table
    share = 100 * results["majority"]["train_share"]
    assert f"the most frequent label of the training set ({share:.1f}% of 64 examples)" in table
    for row in results["summary"]:  # each seed's values, in %, are those of the runs
        mine = [r for r in results["runs"] if r["method"] == row["method"]]
        assert row["per_seed"]["final"]["f1"] == [100 * r["final"]["f1"] for r in mine]
        assert row["per_seed"]["best_dev"]["acc"] == [100 * r["best_dev"]["acc"] for r in mine]
    assert results["environment"]["code_commit"] == code_commit()
    for png in ("results.png", "curves.png"):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(root.rglob("*.tmp*")) and not list(root.rglob("checkpoint.pt"))

    stamp = (root / "pea-kd" / "seed0" / "result.json").stat().st_mtime_ns
    again = subprocess.run(cmd + ["--jobs", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (root / "pea-kd" / "seed0" / "result.json").stat().st_mtime_ns == stamp  # finished stages are reused
    resumed = json.loads((root / "results.json").read_text())
    assert resumed["summary"] == results["summary"] and resumed["majority"] == results["majority"]
    assert len(resumed["progress"]["reused"]) == 7 and resumed["progress"]["real_seconds"] is None  # nothing ran
    for trained, reused in zip(results["runs"], resumed["runs"]):  # what each stage cost when it trained, not reading
        assert reused["process"] == {**trained["process"], "reused": True}
    assert resumed["environment"]["peak_rss_mb"] >= max(r["process"]["peak_rss_mb"] for r in results["runs"])
    assert "reproduce: all 7 stages were reused from an earlier run" in again.stderr

    # publish-results copies it with its provenance; a smoke run only when asked, and never half-written
    dest = tmp_path / "published" / "mrpc_results.json"
    publish = [sys.executable, "-m", "pea_kd", "publish-results", "--task", "mrpc", "--from",
               str(root / "results.json"), "--to", str(dest)]
    refused = subprocess.run(publish, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "a smoke run" in refused.stderr and not dest.parent.exists()
    dest.parent.mkdir()
    dest.write_text(json.dumps({"provenance": {"source": "hand-made"}, "config": {"seeds": [0, 1]},
                                "summary": [{"method": "FT", "final": {"acc": [70.0, 1.0]}}],
                                "other_runs": [{"description": "older", "seeds": [0], "summary": []}]}))
    done = subprocess.run(publish + ["--allow-smoke", "--keep-previous", "--note", "test"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    published = json.loads(dest.read_text())
    assert list(published)[0] == "provenance" and published["provenance"]["note"] == "test"
    # the commit the run recorded; outside a git checkout (the student copy) reproduce records none, publish says so
    recorded = resumed["environment"]["code_commit"]
    assert published["provenance"]["code_commit"] == (recorded if recorded is not None else "not recorded")
    assert {k: v for k, v in published.items() if k not in ("provenance", "other_runs")} == \
        {k: v for k, v in resumed.items()}
    assert [o["description"] for o in published["other_runs"]] == ["previously published: hand-made", "older"]
    assert published["other_runs"][0]["summary"] == [{"method": "FT", "final": {"acc": [70.0, 1.0]}}]
    assert not list(dest.parent.glob("*.tmp*"))
    assert resumed["teacher"]["cache_seconds"] == results["teacher"]["cache_seconds"]  # the time it took, not a reload

    # --estimate trains nothing and shows the finished runs' seconds next to each stage's FLOPs. "of R" compares
    # those seconds with a matmul rate measured later, on a shared machine that drifts up to 2x: only sanity-bounded.
    before = sorted(p.stat().st_mtime_ns for p in root.rglob("*"))
    budget = subprocess.run(cmd + ["--estimate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert budget.returncode == 0, budget.stderr[-3000:]
    assert sorted(p.stat().st_mtime_ns for p in root.rglob("*")) == before
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in budget.stdout.splitlines()
            if line.startswith("| ") and "%" in line]
    assert [r[0] for r in rows] == ["teacher (6L)", "teacher cache"] + [m.name for m in METHODS] + ["**total**"]
    seconds = {r["method"]: r["seconds"] for r in resumed["runs"]}
    seconds.update({"teacher (6L)": resumed["teacher"]["seconds"], "teacher cache": resumed["teacher"]["cache_seconds"]})
    for row in rows[:-1]:
        assert 0 < float(row[3]) and int(row[6]) == round(seconds[row[0]]) and 0 < int(row[7].rstrip("%")) < 500, row


def test_jobs_on_a_cuda_machine_get_one_gpu_each_round_robin(monkeypatch, tmp_path, caplog):
    """With CUDA devices (their count monkeypatched: this machine has none), each worker slot of `--jobs N` has its
    own GPU, round-robin over the visible ones, and the log says which; the stages are stand-ins run in threads."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from pea_kd.parallel import worker_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices(3) == worker_devices(3, "cuda") == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices(2, "cuda:1") == ["cuda:1"] * 2 and worker_devices(2, "cpu") == ["cpu"] * 2  # as named

    lock, busy, started = threading.Lock(), [], []

    def student_stage(cfg, method, seed, teacher_dir, data_dir):
        with lock:
            busy.append(cfg.device)
            started.append(list(busy))
        time.sleep(0.02)
        with lock:
            busy.remove(cfg.device)
        return {"seed": seed, "method": method.name, "result": {"meta": {}}}

    monkeypatch.setattr(reproduce, "_teacher_stage", lambda *a: (SimpleNamespace(meta={"device": "cuda"}), None))
    monkeypatch.setattr(reproduce, "_student_stage", student_stage)
    monkeypatch.setattr(reproduce_runs, "executor", lambda jobs, threads, log_level: ThreadPoolExecutor(jobs))
    monkeypatch.setattr(reproduce_runs, "plan_progress", lambda *a: None)  # its matmul rate would need a real GPU
    for module, name in ((reproduce, "teacher_record"), (reproduce, "summarize"), (reproduce, "write_report"),
                         (reproduce_runs, "_precision")):
        monkeypatch.setattr(module, name, lambda *a: None)
    caplog.set_level("INFO", logger="pea_kd.reproduce_runs")
    results = reproduce.run_all(ReproduceConfig(task="mrpc", seeds=(0, 1), methods=("ft", "kd", "pkd"), lr=5e-5,
                                                jobs=2, out_root=str(tmp_path)))
    assert len(started) == 6 and results["environment"]["worker_devices"] == ["cuda:0", "cuda:1"]
    assert all(len(set(running)) == len(running) for running in started)  # never two stages on one GPU
    assert any(len(running) == 2 for running in started)  # and both GPUs in use at once
    assert "slot 0 -> cuda:0, slot 1 -> cuda:1" in caplog.text and "worker slot 1 on cuda:1" in caplog.text


def test_a_shared_stage_held_by_another_worker_is_waited_for_then_reused(tmp_path):
    """Pea-KD and Pea-KD + DA share a PTP directory: the second worker waits for the first instead of failing."""
    from pea_kd.storage import DirectoryInUse, directory_lock
    shared = tmp_path / "ptp-sps" / "seed0"
    shared.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pea_kd.storage import directory_lock\n"
        f"with directory_lock({str(shared)!r}):\n"
        f"    open({str(shared / 'result.json')!r}, 'w').write('done'); print('held', flush=True); time.sleep(2)\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"

    calls = []

    def stage(directory):  # a resumable stage: trains under the directory's lock, or returns the finished result
        calls.append(1)
        with directory_lock(directory):
            return (directory / "result.json").read_text()

    with pytest.raises(DirectoryInUse):  # what a plain call does while the other worker trains
        stage(shared)
    assert reproduce_runs.run_shared(shared, stage, shared) == "done"
    assert holder.wait(timeout=30) == 0
    assert len(calls) == 3  # the refused call above, the refused first try, the call after the wait

    def other_stage(directory):  # held elsewhere: run_shared must not wait on `shared` for a lock it does not hold
        raise DirectoryInUse(f"{directory} is in use", directory)

    with pytest.raises(DirectoryInUse):
        reproduce_runs.run_shared(shared, other_stage, tmp_path / "teacher")


def test_the_largest_process_counts_a_stage_whose_worker_is_not_reaped_yet():
    """results.json's peak memory is the largest of this process, its reaped workers and every student stage's own
    record: a worker that has just exited and is not reaped yet still counts (its stage measured itself)."""
    from types import SimpleNamespace
    from pea_kd.parallel import peak_rss_mb
    from pea_kd.reproduce_runs import StageRunner
    runner = SimpleNamespace(commit=None, jobs=1, threads=1, devices=["cpu"])
    teacher = SimpleNamespace(meta={"device": "cpu", "precision": "fp32"})
    here = peak_rss_mb()
    runs = [{"result": {"meta": {"precision": "fp32"}}, "process": {"cpu_seconds": 1.0, "peak_rss_mb": here + 500}},
            {"result": {"meta": {"precision": "fp32"}}}]  # a run recorded before stages measured themselves
    assert StageRunner.environment(runner, teacher, runs)["peak_rss_mb"] == here + 500
    assert StageRunner.environment(runner, teacher, runs[1:])["peak_rss_mb"] >= here


def test_a_stage_stores_what_its_worker_cost_and_a_reuse_reads_it_back(tmp_path):
    """The worker that trains a stage stores its usage next to the result (fingerprinted by the run's timing); a
    table that reuses the stage reports that record, marked reused; a record of another run of the directory, or
    none at all, gives no figure rather than the cost of reading."""
    from types import SimpleNamespace
    from pea_kd.reproduce_runs import PROCESS_RECORD, stage_process
    result = SimpleNamespace(timing={"train_seconds": 12.5, "eval_seconds": 0.5})
    assert stage_process(tmp_path, result, reused=True) is None  # finished by an older version: no record
    trained = stage_process(tmp_path, result, reused=False)
    assert trained["cpu_seconds"] > 0 and trained["peak_rss_mb"] > 100
    assert json.loads((tmp_path / PROCESS_RECORD).read_text())["process"] == trained
    assert stage_process(tmp_path, result, reused=True) == {**trained, "reused": True}
    retrained = SimpleNamespace(timing={"train_seconds": 12.6, "eval_seconds": 0.5})
    assert stage_process(tmp_path, retrained, reused=True) is None  # the record belongs to another run
    assert not list(tmp_path.glob("*.tmp"))


def test_under_torchrun_a_stage_stores_no_record(tmp_path, monkeypatch):
    """Under torchrun every stage runs in one process: its usage covers all stages so far, so it is reported for the
    table but never stored as one stage's cost."""
    from types import SimpleNamespace
    from pea_kd.reproduce_runs import PROCESS_RECORD, stage_process
    monkeypatch.setattr(reproduce_runs.distributed, "is_distributed", lambda: True)
    result = SimpleNamespace(timing={"train_seconds": 12.5, "eval_seconds": 0.5})
    assert stage_process(tmp_path, result, reused=False)["cpu_seconds"] > 0
    assert not (tmp_path / PROCESS_RECORD).exists()
    assert stage_process(tmp_path, result, reused=True) is None


def test_results_md_says_which_reused_stages_its_peak_memory_cannot_count():
    """A stage reused without a stored record has no memory figure: results.md's peak says it leaves it out."""
    from pea_kd.report import _unrecorded
    recorded = {"process": {"cpu_seconds": 90.0, "peak_rss_mb": 1500.0}}
    assert _unrecorded([recorded, recorded]) == ""
    assert _unrecorded([recorded, {}, {}]) == \
        " (not counting 2 reused stage(s) that recorded no memory: made by an older version)"
