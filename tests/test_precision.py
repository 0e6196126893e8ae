"""Mixed precision: which precision a run uses, how close bf16 stays to fp32, and that a bf16 run is what it says.

bf16 here means `torch.autocast(dtype=torch.bfloat16)` around the model's forward: the matrix products run in bf16,
while the master weights, AdamW's state and the loss stay fp32 (pea_kd.runtime.resolve_amp, pea_kd.trainer).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import bert_mini.attention_kernels as kernels
from bert_mini import load_pretrained, load_tokenizer
from pea_kd.feature_cache import load_features
from pea_kd.features import collate, make_batches
from pea_kd.runtime import native_bf16
from pea_kd import runtime
from pea_kd.identity import RunMismatch
from pea_kd.runtime import precision_name, resolve_amp
from pea_kd.trainer import Trainer, TrainResult, predict
from test_trainer import assert_same_weights, tiny_run, weights

pytestmark = pytest.mark.usefixtures("single_thread")
FIXTURES = Path(__file__).parent / "fixtures"
CPU = torch.device("cpu")


def test_auto_picks_bf16_only_where_the_device_has_it(monkeypatch):
    monkeypatch.delenv(runtime.AUTO_BF16_ENV, raising=False)  # the hardware decides (make test-cpus sets it)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    assert resolve_amp("auto", CPU) is None  # emulated bf16 is slower than fp32: auto stays in fp32
    assert resolve_amp("bf16", CPU) is torch.bfloat16  # asked for explicitly: honoured (with a warning)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    assert resolve_amp("auto", CPU) is torch.bfloat16
    assert resolve_amp("off", CPU) is None
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", CPU)
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]


def test_auto_bf16_env_sets_what_auto_picks_and_nothing_else(monkeypatch, caplog):
    """PEA_KD_AUTO_BF16 answers "does auto pick bf16?" for the tests of make test-cpus: 1 = as with native bf16
    (emulated here, and the log says so), 0 = as without; native_bf16 still reports the hardware."""
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    monkeypatch.setenv(runtime.AUTO_BF16_ENV, "1")
    with caplog.at_level("WARNING", logger="pea_kd.runtime"):
        assert resolve_amp("auto", CPU) is torch.bfloat16
    assert "PEA_KD_AUTO_BF16=1: --amp auto uses bf16 on cpu, which has no native bf16" in caplog.text
    assert resolve_amp("off", CPU) is None and runtime.native_bf16(CPU) is False
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    monkeypatch.setenv(runtime.AUTO_BF16_ENV, "0")
    assert resolve_amp("auto", CPU) is None  # as on a CPU without native bf16
    assert resolve_amp("bf16", CPU) is torch.bfloat16  # an explicit choice is not the env's business
    monkeypatch.setenv(runtime.AUTO_BF16_ENV, "yes")
    with pytest.raises(ValueError, match=r"\$PEA_KD_AUTO_BF16='yes': expected 1 .*, 0 .* or unset"):
        resolve_amp("auto", CPU)


def test_precision_note_says_what_auto_trains_in_and_why(monkeypatch):
    monkeypatch.delenv(runtime.AUTO_BF16_ENV, raising=False)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    capability = torch.backends.cpu.get_cpu_capability()
    assert runtime.precision_note() == \
        f"precision: forward passes fp32, training with --amp auto fp32 ({capability} CPU kernels, native bf16: no)"
    monkeypatch.setenv(runtime.AUTO_BF16_ENV, "1")
    assert runtime.precision_note("cpu").endswith(
        f"training with --amp auto bf16 ({capability} CPU kernels, native bf16: no, PEA_KD_AUTO_BF16=1)")
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    monkeypatch.delenv(runtime.AUTO_BF16_ENV)
    assert runtime.precision_note().endswith(f"auto bf16 ({capability} CPU kernels, native bf16: yes)")


def test_native_bf16_flag_agrees_with_the_cpu_flags():
    """oneDNN's flag decides `auto`; on x86 Linux it must agree with what the CPU says it has."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags (not x86 Linux)")
    hardware = bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))
    assert native_bf16("cpu") == hardware


@pytest.fixture(scope="module")
def golden():
    return np.load(FIXTURES / "minilm_golden.npz", allow_pickle=False)


def cpu_bf16_sdpa_refusal() -> str | None:
    """torch's own error where its CPU bf16 SDPA kernel cannot run here, else None. torch 2.13 refuses it for 64 or
    more tokens on a CPU with AMX run with ATEN_CPU_CAPABILITY=default ("pack_vnni2 is only supported when avx512 is
    supported"); auto picks SDPA for CPU bf16 only where it runs (bert_mini.attention_kernels.cpu_bf16_sdpa_runs)."""
    q = torch.zeros(1, 1, 64, 32, dtype=torch.bfloat16)
    try:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError as err:
        if "pack_vnni2" in str(err):
            return str(err)
        raise
    return None


@pytest.mark.parametrize("kernel", ["explicit", "sdpa"])
def test_bf16_forward_of_the_golden_batch_stays_close_to_fp32(golden, kernel, monkeypatch):
    """Under bf16 autocast (8 mantissa bits: one rounding is up to 2^-9 = 0.2% relative) MiniLM's last hidden states
    stay within 0.05 of the fp32 reference (|x| reaches 5.7; measured 0.017 explicit, 0.013 SDPA) and the pooled
    output within 0.01 (measured 0.0017, 0.0018): about 3x the measured error, far above fp32's 1e-5."""
    if kernel == "sdpa" and (refusal := cpu_bf16_sdpa_refusal()):
        pytest.skip(f"torch's CPU bf16 SDPA kernel does not run with these CPU kernels: {refusal}")
    monkeypatch.setattr(kernels, "ATTENTION_KERNEL", kernel)
    model = load_pretrained("minilm-l6").eval()
    batch = {k: torch.from_numpy(golden[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    real = golden["attention_mask"].astype(bool)
    hidden = np.abs(out.last_hidden_state.float().numpy()[real] - golden["last_hidden_state"][real]).max()
    pooled = np.abs(out.pooler_output.float().numpy() - golden["pooler_output"]).max()
    assert hidden < 0.05 and pooled < 0.01
    assert pooled > 1e-4  # bf16 really ran: an fp32 forward matches the reference to 1e-5


def test_cpu_bf16_inference_takes_sdpa_where_its_kernel_runs():
    """Without dropout CPU bf16 goes to SDPA's flash kernel, unless torch refuses it with these CPU kernels (then the
    explicit path); with dropout (training) always the explicit path; fp32 inference always SDPA."""
    q32 = torch.zeros(1, 1, 2, 2)
    assert kernels.attention_kernel(q32) == "sdpa"
    runs = cpu_bf16_sdpa_refusal() is None
    assert kernels.cpu_bf16_sdpa_runs() is runs
    assert kernels.attention_kernel(q32.bfloat16()) == ("sdpa" if runs else "explicit")
    assert kernels.attention_kernel(q32.bfloat16(), dropout_p=0.1) == "explicit"
    model = load_pretrained("minilm-l6").eval()  # auto's bf16 forward of 64+ tokens runs wherever the suite runs
    ids = torch.randint(1000, 2000, (2, 70), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(ids).last_hidden_state.float()).all()


def test_a_tiny_bf16_run_learns_and_records_its_precision(tiny_env, tmp_path):
    result, _ = tiny_run(tiny_env, tmp_path / "run", epochs=8, lr=3e-3, amp="bf16")
    assert result.history[-1]["train_loss"] < 0.6 * result.history[0]["train_loss"]
    assert result.best_dev_metrics["acc"] > 0.8
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored["meta"]["precision"] == "bf16" and stored["meta"]["config"]["amp"] == "bf16"
    fp32, _ = tiny_run(tiny_env, tmp_path / "fp32", epochs=1, amp="off")
    assert fp32.meta["precision"] == "fp32"
    with pytest.raises(RunMismatch, match="precision 'fp32' -> 'bf16'"):  # a finished fp32 run is not a bf16 one
        tiny_run(tiny_env, tmp_path / "fp32", epochs=1, amp="bf16", resume=True)


def test_bf16_same_seed_twice_and_resume_are_bit_identical(tiny_env, tmp_path, monkeypatch):
    full, _ = tiny_run(tiny_env, tmp_path / "full", amp="bf16", eval_every=3)
    again, _ = tiny_run(tiny_env, tmp_path / "again", amp="bf16", eval_every=3)
    def numbers(result):
        return [(h["step"], h["train_loss"], h["dev_loss"], h["metrics"]) for h in result.history]

    assert numbers(full) == numbers(again)
    assert_same_weights(weights(tmp_path / "full" / "final"), weights(tmp_path / "again" / "final"))

    step = Trainer.step
    calls = {"n": 0}

    def interrupted(self, indices, where=""):  # stop the run in its second epoch, after a checkpoint (step 9)
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return step(self, indices, where)

    monkeypatch.setattr(Trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tiny_env, tmp_path / "cut", amp="bf16", eval_every=3, checkpoint_every=3)
    monkeypatch.setattr(Trainer, "step", step)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["state"]["step"] == 9
    resumed, _ = tiny_run(tiny_env, tmp_path / "cut", amp="bf16", eval_every=3, resume=True)
    assert numbers(resumed) == numbers(full)
    assert_same_weights(weights(tmp_path / "full" / "final"), weights(tmp_path / "cut" / "final"))
    assert TrainResult.load(tmp_path / "cut" / "result.json").meta["precision"] == "bf16"


def casts_of_shapes(run, shapes) -> int:
    """How many dtype casts (aten::_to_copy) of a tensor with one of `shapes` `run()` makes."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    return sum(e.count for e in prof.key_averages(group_by_input_shape=True)
               if e.key == "aten::_to_copy" and e.input_shapes and e.input_shapes[0] in shapes)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, None])
def test_predict_casts_each_weight_once_per_pass_and_gives_the_per_batch_logits(tiny_env, amp_dtype):
    """pea_kd.mixed_precision.inference_autocast: one autocast context around predict's batches (no_grad, not
    inference_mode, where autocast caches nothing) casts each weight matrix once per pass, and the logits equal, bit
    for bit, those of an autocast entered per batch under inference_mode (what predict did before)."""
    checkpoint, _ = tiny_env
    data = load_features("mrpc", "dev", load_tokenizer(checkpoint), 32)
    torch.manual_seed(0)
    model = load_pretrained(checkpoint, num_labels=2)
    model.bert.encoder.plan = [(0, False), (1, False), (0, True), (1, True)]  # SPS: each layer used twice a batch
    device = torch.device("cpu")
    batch_size = 8
    per_batch = torch.empty(len(data), 2)
    with torch.inference_mode():
        model.eval()
        for idx in make_batches(data, batch_size, shuffle=False):
            b = collate(data, idx, pad_token_id=model.config.pad_token_id)
            with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
                per_batch[b["index"]] = model(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                                              cls_only=True).logits.float()
    logits = predict(model, data, device, batch_size, amp_dtype)
    assert torch.equal(logits, per_batch)
    assert len(make_batches(data, batch_size, shuffle=False)) >= 3
    matrices = [p for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n]  # linear weights
    shapes = [list(p.shape) for p in matrices]
    casts = casts_of_shapes(lambda: predict(model, data, device, batch_size, amp_dtype), shapes)
    assert casts == (len(matrices) if amp_dtype is not None else 0)
