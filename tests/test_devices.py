"""Device choice: `auto` = CUDA, then MPS (Apple silicon), then CPU; what each precision needs; what MPS refuses.

This machine has neither CUDA nor MPS (a CPU build of torch: torch.backends.mps.is_built() is False), so the
availability checks are replaced here (monkeypatch) and only the choices and the one-line refusals are tested: no
computation on MPS was run or measured.
"""
import logging

import pytest
import torch

from pea_kd import budget, distributed, runtime
from pea_kd.reproduce import ReproduceConfig
from pea_kd.runtime import non_blocking, resolve_amp, resolve_device
from pea_kd.trainer import TrainConfig
from test_cli import run_cli

MPS, CPU, CUDA = torch.device("mps"), torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def mac(monkeypatch):
    """An Apple-silicon Mac: MPS available (macOS 13 unless a test says otherwise), no CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "mps_available", lambda: True)
    macos(monkeypatch, 13)


def macos(monkeypatch, major: int) -> None:
    """The Mac runs macOS `major` (torch.backends.mps.is_macos_or_newer answers for it)."""
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda want, minor: major >= want)


def test_auto_is_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime, "mps_available", lambda: True)
    assert resolve_device("auto") == CUDA  # a (hypothetical) machine with both: CUDA first
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == MPS
    monkeypatch.setattr(runtime, "mps_available", lambda: False)
    assert resolve_device("auto") == CPU


def test_mps_named_on_a_mac_is_the_mac_gpu(mac):
    assert resolve_device("mps") == MPS and resolve_device("mps:0") == torch.device("mps:0")
    with pytest.raises(ValueError, match=r"device 'mps:1': a Mac has one MPS device; use --device mps"):
        resolve_device("mps:1")


def test_mps_without_mps_is_one_line_saying_why(monkeypatch):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    with pytest.raises(ValueError, match=r"device 'mps': this torch build has no MPS support .*use --device cpu or "
                                         r"auto"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)  # a macOS build on an Intel Mac, say
    with pytest.raises(ValueError, match=r"device 'mps': no Apple-silicon GPU is available"):
        resolve_device("mps")


@pytest.mark.parametrize("name, message", [("meta", "pea-kd trains on cpu, cuda or mps"),
                                           ("xpu", "pea-kd trains on cpu, cuda or mps"),
                                           ("gpu", "unknown device 'gpu'; expected auto, cpu, cuda, cuda:N or mps")])
def test_devices_pea_kd_does_not_train_on_are_refused_before_any_work(name, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(device=name)


def test_precision_on_mps_auto_is_fp32_fp16_has_a_scaler_bf16_needs_macos_14(mac, monkeypatch, caplog):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)  # even if a chip reported native bf16
    assert resolve_amp("auto", MPS) is None  # fp32: no 16-bit training on MPS was measured
    assert resolve_amp("off", MPS) is None
    assert resolve_amp("fp16", MPS) is torch.float16  # asked for: autocast fp16 + GradScaler("mps")
    with pytest.raises(ValueError, match=r"--amp bf16 on mps needs macOS 14 or newer .*use --amp fp16 or --amp off"):
        resolve_amp("bf16", MPS)
    macos(monkeypatch, 14)
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        assert resolve_amp("bf16", MPS) is torch.bfloat16
    assert "amp=bf16 on mps: not measured in this project" in caplog.text
    with pytest.raises(ValueError, match=r"--amp fp16 needs a CUDA device or mps .* on cpu use --amp bf16"):
        resolve_amp("fp16", CPU)


def test_host_to_device_copies_are_asynchronous_on_cuda_only():
    """An asynchronous CPU->MPS copy of a tensor freed right after can read released memory (pytorch #189690)."""
    assert non_blocking(CUDA) and not non_blocking(MPS) and not non_blocking(CPU)


def test_mps_under_torchrun_is_refused_in_one_line(mac, monkeypatch):
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match=r"under torchrun the processes train on cpu or cuda: torch.distributed has "
                                         r"no backend for MPS tensors; pass --device cpu"):
        TrainConfig(device="auto")  # auto is mps on a Mac
    TrainConfig(device="cpu")
    monkeypatch.setattr(distributed, "is_distributed", lambda: False)
    TrainConfig(device="mps")  # one plain process on mps: fine


def test_reproduce_jobs_on_mps_is_refused_in_one_line_and_cpu_workers_are_not(mac, capsys, tiny_env, tmp_path):
    checkpoint, glue = tiny_env
    argv = ["reproduce", "--task", "mrpc", "--teacher", checkpoint, "--student-layers", 1, "--data-dir", glue,
            "--out-root", tmp_path, "--jobs", 2, "--estimate", "--no-progress"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and err.strip().splitlines()[-1].endswith(
        "error: --jobs 2 on mps: the worker processes would share the Mac's one GPU and its memory (not measured "
        "here); use --jobs 1, or --device cpu for CPU worker processes")
    ReproduceConfig(task="mrpc", teacher=str(checkpoint), student_layers=1, data_dir=str(glue), jobs=2, device="cpu")


def test_device_mps_on_this_machine_is_a_one_line_cli_error(capsys, tiny_env, tmp_path):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    checkpoint, _ = tiny_env
    code, _, err = run_cli(capsys, "finetune-teacher", "--task", "mrpc", "--model", checkpoint, "--out-dir",
                           tmp_path / "t", "--device", "mps")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "device 'mps': this torch build has no MPS support" in lines[0]
    code, out, _ = run_cli(capsys, "distill", "--help")
    assert "mps on Apple silicon" in " ".join(out.split())


def test_checkpoints_keep_and_restore_the_mps_generator(mac, monkeypatch):
    restored = []
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: torch.tensor([7, 8], dtype=torch.uint8))
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda state: restored.append(state.tolist()))
    state = runtime.rng_state()
    assert state["mps"].tolist() == [7, 8]
    runtime.set_rng_state(state)
    runtime.set_rng_state({k: v for k, v in state.items() if k != "mps"})  # a checkpoint from before MPS support
    assert restored == [[7, 8]]


def test_timing_waits_for_mps_and_estimate_measures_what_the_device_holds(mac, monkeypatch):
    waited = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append("mps"))
    budget.sync("mps")
    budget.sync("cpu")
    assert waited == ["mps"]
    assert budget.default_matmul_size("mps", "fp32") == budget.default_matmul_size("mps", "bf16") == 2048
    assert budget.compared_precisions(MPS, "fp32") == ("fp32",)  # no bf16 tensors before macOS 14
    assert budget.compared_precisions(MPS, "fp16") == ("fp32", "fp16")
    macos(monkeypatch, 14)
    assert budget.compared_precisions(MPS, "fp32") == ("fp32", "bf16")
    assert budget.compared_precisions(CPU, "fp32") == ("fp32", "bf16")
