"""pea_kd_bench.throughput on a tiny checkpoint, one step per mode: report structure, CLI and JSON. Not timed."""
import ast
import json
import math
import re
from pathlib import Path

import pytest
import torch

from bert_mini import BertConfig, BertForSequenceClassification, save_pretrained
from pea_kd.runtime import native_bf16
from pea_kd_bench import throughput as bench

TINY = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16)
FAST = dict(batch_size=2, seq_len=8, iters=1, warmup=0, matmul_size=32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_pretrained(BertForSequenceClassification(BertConfig(**TINY)), tmp_path_factory.mktemp("bench") / "m")


def check_report(report, impls):
    assert set(report["modes"]) == {"train", "infer"}
    assert report["flops"]["train"] == pytest.approx(3 * report["flops"]["infer"])
    assert report["matmul"]["gflops"] > 0 and report["matmul"]["size"] == FAST["matmul_size"]
    for mode, result in report["modes"].items():
        assert set(result) >= set(impls)
        for impl in impls:
            e = result[impl]
            assert len(e["times_s"]) == len(e["cpu_times_s"]) == FAST["iters"] and e["median_s"] > 0
            assert all(cpu > 0 for cpu in e["cpu_times_s"])
            assert e["tokens_per_s"] == pytest.approx(FAST["batch_size"] * FAST["seq_len"] / e["median_s"])
            assert e["gflops"] == pytest.approx(report["flops"][mode] / e["median_s"] / 1e9)
            assert e["fraction_of_ceiling"] == pytest.approx(e["gflops"] / report["matmul"]["gflops"])
            assert e["peak_mib"] > 0 and e["memory_kind"].startswith("cpu_peak_rss")
        assert ("ratio_ours_over_ref" in result) == ("cpu_ratio_ours_over_ref" in result) == ("reference" in impls)
    text = bench.format_report(report)
    assert "bert_mini" in text and "training" in text and "inference" in text and "matmul ceiling" in text


def test_in_process_without_reference(tiny_dir, monkeypatch):
    monkeypatch.setattr(bench, "reference_available", lambda: False)
    report = bench.run_benchmark(str(tiny_dir), "cpu", isolate=False, **FAST)
    check_report(report, ["ours"])
    assert report["reference"].startswith("unavailable") and report["isolated"] is False
    assert report["config"]["hidden_size"] == 16
    report = bench.run_benchmark(str(tiny_dir), "cpu", isolate=False, reference=False, **FAST)
    assert report["reference"].startswith("skipped") and "reference" not in report["modes"]["train"]


def test_cli_runs_workers_in_subprocesses_and_writes_json(tiny_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--model", str(tiny_dir), "--batch-size", "2", "--seq-len", "8", "--iters", "1",
            "--warmup", "0", "--matmul-size", "32", "--no-reference", "--json", str(out)]
    reports = bench.main(argv + ["--precision", "fp32"])
    assert list(reports) == ["fp32"]
    report = reports["fp32"]
    check_report(report, ["ours"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(reports))
    for result in report["modes"].values():  # a fresh process: loaded RSS is known and the peak is above it
        e = result["ours"]
        assert e["loaded_mib"] is None or e["peak_mib"] >= e["loaded_mib"] > 0
    assert "speed ratio" not in capsys.readouterr().out


def test_bf16_is_measured_under_autocast_next_to_a_bf16_ceiling(tiny_dir, monkeypatch):
    products = []
    real = bench.matmul_gflops
    monkeypatch.setattr(bench, "matmul_gflops", lambda *a, **k: products.append(k.get("dtype")) or real(*a, **k))
    report = bench.run_benchmark(str(tiny_dir), "cpu", isolate=False, reference=False, precision="bf16", **FAST)
    check_report(report, ["ours"])
    assert report["precision"] == "bf16" and set(products) == {torch.bfloat16}
    assert "precision bf16 (autocast" in bench.format_report(report)
    assert bench.resolve_precisions("fp32,bf16", "cpu") == ["fp32", "bf16"]
    assert bench.resolve_precisions("auto", "cpu") == (["fp32", "bf16"] if native_bf16("cpu") else ["fp32"])
    with pytest.raises(ValueError, match="--precision 'fp8'"):
        bench.resolve_precisions("fp8", "cpu")


def test_both_precisions_report_the_bf16_step_speedup_next_to_the_matmul_one(tiny_dir, tmp_path, capsys):
    """With fp32 and bf16 measured (what --precision auto does where bf16 is native) the bench prints and stores
    fp32 time / bf16 time of bert_mini's training step and inference, and the ceiling's bf16 / fp32 GFLOP/s."""
    out = tmp_path / "bench.json"
    reports = bench.main(["--device", "cpu", "--model", str(tiny_dir), "--batch-size", "2", "--seq-len", "8",
                          "--iters", "3", "--warmup", "0", "--matmul-size", "32", "--no-reference",
                          "--precision", "fp32,bf16", "--json", str(out)])
    fp32, bf16, speedup = reports["fp32"], reports["bf16"], reports["bf16_speedup"]
    for mode in ("train", "infer"):
        times = [r["modes"][mode]["ours"] for r in (fp32, bf16)]
        assert speedup[mode] == pytest.approx(times[0]["median_s"] / times[1]["median_s"])
        cpu = [sorted(t["cpu_times_s"])[1] for t in times]  # the median of 3
        assert speedup[f"{mode}_cpu"] == pytest.approx(cpu[0] / cpu[1])
    assert speedup["matmul"] == pytest.approx(bf16["matmul"]["gflops"] / fp32["matmul"]["gflops"])
    assert speedup["native_bf16"] == native_bf16("cpu")
    text = capsys.readouterr().out
    table = text[text.index("bf16 speed-up over fp32"):]
    for name, key in (("training", "train"), ("inference", "infer")):
        assert re.search(rf"bert_mini {name} step +{speedup[key]:.2f}x +{speedup[key + '_cpu']:.2f}x\n", table)
    assert re.search(rf"matmul ceiling \(GFLOP/s ratio\) +{speedup['matmul']:.2f}x\n", table)
    assert ("native bf16" if native_bf16("cpu") else "EMULATED bf16") in table
    assert json.loads(out.read_text())["bf16_speedup"] == json.loads(json.dumps(speedup))
    assert bench.precision_speedups({"fp32": fp32}) is None  # one precision: nothing to compare


def test_reference_side_when_transformers_is_importable(tiny_dir):
    pytest.importorskip("transformers")
    report = bench.run_benchmark(str(tiny_dir), "cpu", isolate=False, **FAST)
    check_report(report, ["ours", "reference"])
    assert report["modes"]["infer"]["reference"]["label"].startswith("transformers")
    assert math.isfinite(report["modes"]["train"]["ratio_ours_over_ref"])


def test_bad_arguments_are_refused(tiny_dir):
    with pytest.raises(ValueError, match="iters"):
        bench.run_benchmark(str(tiny_dir), "cpu", **{**FAST, "iters": 0})
    with pytest.raises(SystemExit):
        bench.main(["--model", str(tiny_dir / "missing")])


def test_transformers_is_never_imported_at_module_level():
    tree = ast.parse(Path(bench.__file__).read_text())
    for node in tree.body:  # only top-level statements; the import inside Runner._build is allowed
        names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
        if isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
        assert not any(n.split(".")[0] == "transformers" for n in names)


def test_step_profile_groups_a_trainer_steps_operators(tiny_env, tmp_path, single_thread):
    """pea_kd_bench.step_profile on the tiny checkpoint and task: the shares cover every operator once and the
    groups the issue asks about are seen (matrix products, the dropout masks of bert_mini.dropout)."""
    from pea_kd_bench import step_profile

    assert step_profile.group_of("aten::addmm").startswith("matrix products")
    assert step_profile.group_of("aten::bernoulli_").startswith("dropout masks")
    assert step_profile.group_of("aten::random_").startswith("dropout masks")
    assert step_profile.group_of("aten::gelu_backward").startswith("GELU")
    assert step_profile.group_of("aten::_fused_adamw_").startswith("optimiser")
    assert step_profile.group_of("aten::tanh") == step_profile.OTHER
    checkpoint, _ = tiny_env
    out = tmp_path / "profile.json"
    report = step_profile.main(["--model", str(checkpoint), "--layers", "1", "--steps", "2", "--warmup", "1",
                                "--batch-size", "8", "--threads", "1", "--json", str(out)])
    assert report["steps"] == 2 and report["tokens"] > 0 and report["cpu_s_per_step"] > 0
    assert sum(report["shares"].values()) == pytest.approx(1.0)
    matmul = report["shares"]["matrix products (mm, addmm, bmm, linear)"]  # the ms/step lines split the same total
    assert report["matmul_ms_per_step"] == pytest.approx(matmul * report["self_cpu_s"] * 1e3 / report["steps"])
    assert report["non_matmul_ms_per_step"] == pytest.approx((1 - matmul) * report["self_cpu_s"] * 1e3 / 2)
    assert report["shares"]["matrix products (mm, addmm, bmm, linear)"] > 0
    assert report["shares"]["dropout masks (bernoulli, random words, their compare)"] > 0
    assert "aten::bernoulli_" not in report["top_operators"]  # bert_mini draws its masks with random_
    assert json.loads(out.read_text())["shares"] == report["shares"]


def test_step_profile_without_glue_data_is_one_line_error(tmp_path, capsys):
    """No GLUE files where --data-dir points: argparse's one-line error naming the missing file, exit status 2."""
    from pea_kd_bench import step_profile
    with pytest.raises(SystemExit) as err:
        step_profile.main(["--data-dir", str(tmp_path), "--steps", "1", "--warmup", "0"])
    assert err.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("python -m pea_kd_bench.step_profile: error: GLUE MRPC split 'train' not found")
    assert str(tmp_path / "MRPC" / "train.tsv") in message
