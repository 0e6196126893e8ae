"""bert_mini.autocast_paths: under CPU bf16 autocast the fast paths (x cast once for Q, K, V; the mask M in bf16) stay
as close to the plain path as bf16 itself stays to fp32, are deterministic, and leave fp32 untouched bit for bit."""
import pytest
import torch
import torch.nn.functional as F

import bert_mini.attention_kernels as kernels
import bert_mini.autocast_paths as paths
import bert_mini.dropout as dropout_module
from bert_mini import load_pretrained
from test_trainer import assert_same_weights, tiny_run, weights

pytestmark = pytest.mark.usefixtures("single_thread")
SPS_PLAN = [(0, False), (1, False), (2, False), (0, True), (1, True), (2, True)]


def training_step(monkeypatch, setting: str, amp: bool, batch_seed: int = 1):
    """Logits, the pooled output and every parameter's gradient of one training forward/backward of MiniLM's bottom
    three layers run as SPS (dropout on, two padded rows), with BF16_PATHS = `setting`, in bf16 autocast or fp32."""
    monkeypatch.setattr(paths, "BF16_PATHS", setting)
    torch.manual_seed(0)
    model = load_pretrained("minilm-l6", num_labels=2).train()
    model.bert.encoder.plan = SPS_PLAN
    ids = torch.randint(1000, 5000, (8, 40), generator=torch.Generator().manual_seed(batch_seed))
    mask = torch.ones_like(ids)
    mask[0, 20:], mask[3, 33:] = 0, 0
    torch.manual_seed(5)  # the same dropout masks for every setting: the masks' shapes and order do not change
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(ids, mask)
    F.cross_entropy(out.logits.float(), torch.tensor([0, 1] * 4)).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.float().detach(), out.pooler_output.float().detach(), grads


def flat(grads: dict) -> torch.Tensor:
    """All gradients but the Q/K biases' in one vector: softmax is blind to a per-row shift of the scores, which is
    all a key bias adds (q . b_k), so dL/db_k is 0 up to rounding and its relative error says nothing."""
    return torch.cat([g.flatten() for n, g in grads.items() if "key.bias" not in n and "query.bias" not in n])


@pytest.mark.parametrize("batch_seed", [1, 2])
def test_bf16_fast_paths_stay_as_close_to_the_plain_path_as_bf16_stays_to_fp32(monkeypatch, batch_seed):
    """The fast paths round differently (P rounded to bf16 before the dropout instead of after it, the dropout scale
    in bf16, dL/dx summed over Q, K, V in bf16): measured on these batches the logits moved by at most 2.4e-4 (bf16
    against fp32: 3.0e-4) and all gradients together by 0.5-0.6% relative (bf16 against fp32: 1.1-1.2%). The bounds
    are about 4x those: 1e-3 on the logits and 2.5% on the gradients, still far below a real error (a gradient of the
    wrong layer, a lost mask: O(1))."""
    fast = training_step(monkeypatch, "fast", amp=True, batch_seed=batch_seed)
    plain = training_step(monkeypatch, "plain", amp=True, batch_seed=batch_seed)
    fp32 = training_step(monkeypatch, "plain", amp=False, batch_seed=batch_seed)
    torch.testing.assert_close(fast[0], plain[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(fast[1], plain[1], atol=1e-2, rtol=0)
    assert set(fast[2]) == set(plain[2])
    relative = float((flat(fast[2]) - flat(plain[2])).norm() / flat(plain[2]).norm())
    bf16_itself = float((flat(plain[2]) - flat(fp32[2])).norm() / flat(fp32[2]).norm())
    assert relative < 0.025 and bf16_itself > 0.002
    assert not torch.equal(flat(fast[2]), flat(plain[2]))  # the fast path really ran
    again = training_step(monkeypatch, "fast", amp=True, batch_seed=batch_seed)
    assert torch.equal(again[0], fast[0]) and torch.equal(flat(again[2]), flat(fast[2]))  # deterministic


def test_bf16_sdpa_inference_is_the_plain_path_bit_for_bit(monkeypatch):
    """Inference takes SDPA where its bf16 kernel runs: autocast hands it the mask in bf16 on both paths, and the
    [CLS]-only queries are cast on their own as before, so evaluation's logits do not move (x16 feeds K and V)."""
    def logits(setting):
        monkeypatch.setattr(paths, "BF16_PATHS", setting)
        torch.manual_seed(0)
        model = load_pretrained("minilm-l6", num_labels=2).eval()
        ids = torch.randint(1000, 5000, (8, 70), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)
        mask[0, 20:], mask[3, 33:] = 0, 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(ids, mask, cls_only=True).logits
    if not kernels.cpu_bf16_sdpa_runs():
        pytest.skip("torch's CPU bf16 SDPA kernel does not run with these CPU kernels")
    assert torch.equal(logits("fast"), logits("plain"))


def test_fp32_is_the_plain_path_bit_for_bit(monkeypatch):
    fast = training_step(monkeypatch, "fast", amp=False)
    plain = training_step(monkeypatch, "plain", amp=False)
    assert torch.equal(fast[0], plain[0]) and torch.equal(fast[1], plain[1])
    assert all(torch.equal(fast[2][n], plain[2][n]) for n in plain[2])


def test_the_fast_paths_cast_x_once_per_attention_and_keep_the_probabilities_in_bf16(monkeypatch):
    """Counted with the profiler: the plain path casts each attention's (B, T, H) input three times (Q, K, V) and the
    fp32 probabilities (B, A, T, T) to bf16 for P V; the fast path casts the input once and the probabilities never."""
    def casts(setting):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            training_step(monkeypatch, setting, amp=True)
        counts = {"inputs": 0, "probabilities": 0}
        for e in prof.key_averages(group_by_input_shape=True):
            if e.key == "aten::_to_copy" and e.input_shapes:
                counts["inputs"] += e.count if e.input_shapes[0] == [8, 40, 384] else 0
                counts["probabilities"] += e.count if e.input_shapes[0] == [8, 12, 40, 40] else 0
        return counts
    plain, fast = casts("plain"), casts("fast")
    steps = len(SPS_PLAN)
    assert plain["inputs"] - fast["inputs"] == 4 * steps  # per step 3 -> 1 casts forward, 3 -> 1 gradients back
    assert plain["probabilities"] >= steps and fast["probabilities"] == 0


def former_dropout(x, p, training=True):
    """bert_mini.dropout.dropout as it was before its noise was written in x's dtype: the bool mask times the scale."""
    if not training or p == 0.0 or x.numel() == 0:
        return x
    scale = torch.ones((), dtype=x.dtype).div_(1.0 - p)
    return x * (dropout_module.keep_mask(x.shape, p) * scale)


def test_fp32_training_is_bit_identical_to_the_plain_paths(tiny_env, tmp_path, monkeypatch):
    """A few fp32 Trainer steps (two epochs of the tiny task, with a dev evaluation each) with today's fast paths give
    the losses and weights of the plain paths bit for bit: the former dropout noise, BF16_PATHS = "plain"."""
    fast, model = tiny_run(tiny_env, tmp_path / "fast", amp="off")
    assert model.config.hidden_dropout_prob > 0 and model.config.attention_probs_dropout_prob > 0  # masks drawn
    monkeypatch.setattr(dropout_module, "dropout", former_dropout)
    monkeypatch.setattr(paths, "BF16_PATHS", "plain")
    plain, _ = tiny_run(tiny_env, tmp_path / "plain", amp="off")
    assert [(h["train_loss"], h["dev_loss"]) for h in fast.history] == \
        [(h["train_loss"], h["dev_loss"]) for h in plain.history]
    assert_same_weights(weights(tmp_path / "fast" / "final"), weights(tmp_path / "plain" / "final"))
    assert fast.history[-1]["train_loss"] != fast.history[0]["train_loss"]  # it trained
