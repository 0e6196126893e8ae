"""pea_kd.budget: FLOP counts against closed forms written out here, and the budget of a reproduction."""
import dataclasses

import numpy as np
import pytest
import torch

from bert_mini import BertConfig
from bert_mini.modeling import BertLayer
from pea_kd.budget import (StageBudget, attach_measurements, count_evaluations, format_budget, forward_flops,
                           reproduce_budget, run_flops)
from pea_kd.reproduce import ReproduceConfig
from pea_kd.trainer import TrainConfig

H, INNER = 64, 256
CONFIG = BertConfig(vocab_size=100, hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=INNER)


def forward_per_example(length: int, steps: int, labels: int, hidden: int = H, inner: int = INNER) -> int:
    """FLOPs of one example's classifier forward as the trainer runs it (the last step computes the [CLS] row only),
    from the architecture (a multiply-add = 2 FLOPs), not from forward_flops."""
    projections = 4 * hidden * hidden + 2 * hidden * inner  # Q, K, V, attention output; FFN in and out (weights)
    attention = 2 * length * hidden  # per token: a row of S = Q K^T (T dot products of d_k, all heads) ...
    attention += 2 * length * hidden  # ... and its row of P V
    head = 2 * (hidden * hidden + hidden * labels)  # pooler and classifier on [CLS]
    # the last step as training and evaluation run it: K and V of every token, the rest for the [CLS] row alone
    last = length * 2 * 2 * hidden * hidden + 2 * (2 * hidden * hidden + 2 * hidden * inner) + 4 * length * hidden
    return (steps - 1) * length * (2 * projections + attention) + last + head


def test_forward_flops_by_hand_and_against_the_real_layer():
    cfg = BertConfig(**{**vars(CONFIG), "hidden_size": 4, "num_attention_heads": 1, "intermediate_size": 8})
    # per step: 2 * (4*16 + 2*4*8) * (1*2) + 4 * 1 * 2^2 * 4 = 512 + 64; two steps; head 2 * (16 + 8) * 1 = 48
    assert forward_flops(cfg, batch=1, seq_len=2) == 2 * 576 + 48
    assert forward_flops(cfg, batch=1, seq_len=2, steps=4) == 4 * 576 + 48  # an SPS plan runs more steps
    # The formula's "4 H^2 + 2 H I" must be exactly the linear weights of a real BertLayer.
    big = BertConfig(**{**vars(CONFIG), "hidden_size": 24, "num_attention_heads": 3, "intermediate_size": 40})
    linear = sum(m.weight.numel() for m in BertLayer(big).modules() if isinstance(m, torch.nn.Linear))
    t = 5
    per_layer = (forward_flops(big, 1, t, steps=1) - forward_flops(big, 1, t, steps=0))
    assert per_layer == 2 * linear * t + 4 * t * t * 24
    # cls_only: the last step keeps K and V of every token and computes the rest for the [CLS] row only
    q_o_ffn = linear - 2 * 24 * 24  # the linear weights applied to the [CLS] row alone
    assert (forward_flops(big, 1, t, steps=2, cls_only=True) - forward_flops(big, 1, t, steps=1)
            == 2 * 2 * 24 * 24 * t + 2 * q_o_ffn + 4 * t * 24)
    assert forward_flops(big, 1, 1, steps=2, cls_only=True) == forward_flops(big, 1, 1, steps=2)  # T = 1: all [CLS]


def test_evaluations_follow_the_trainers_schedule():
    assert count_evaluations([3, 3], 0) == 2  # once per epoch
    assert count_evaluations([3, 3], 2) == 4  # steps 2, 3 (epoch end), 4, 6 (both)
    assert count_evaluations([4], 4) == 1  # an eval_every step that ends the epoch counts once


def test_run_flops_of_equal_lengths_is_the_closed_form():
    train, dev = np.full(100, 20), np.full(30, 12)
    config = TrainConfig(epochs=2, batch_size=32, seed=3)
    expected = 3 * 2 * 100 * forward_per_example(20, 2, 2) + 2 * 30 * forward_per_example(12, 2, 2)
    assert run_flops(CONFIG, train, dev, config, steps=2, num_labels=2) == pytest.approx(expected, rel=1e-12)
    frequent = dataclasses.replace(config, epochs=1, eval_every=2)  # 4 batches: evaluations after steps 2 and 4
    expected = 3 * 100 * forward_per_example(20, 6, 4) + 2 * 30 * forward_per_example(12, 6, 4)
    assert run_flops(CONFIG, train, dev, frequent, steps=6, num_labels=4) == pytest.approx(expected, rel=1e-12)


def test_bucketed_batches_cost_between_no_padding_and_padding_to_the_longest():
    rng = np.random.default_rng(0)
    train, dev = rng.integers(5, 60, 500), rng.integers(5, 60, 50)
    config = TrainConfig(epochs=1, batch_size=16, seed=1, eval_every=0)
    flops = run_flops(CONFIG, train, dev, config, steps=3, num_labels=2)
    unpadded = (3 * sum(forward_per_example(t, 3, 2) for t in train)
                + sum(forward_per_example(t, 3, 2) for t in dev))
    padded = 3 * 500 * forward_per_example(59, 3, 2) + 50 * forward_per_example(59, 3, 2)
    assert unpadded < flops < 1.1 * unpadded < padded  # length buckets leave little padding
    assert run_flops(CONFIG, train, dev, config, steps=3, num_labels=2) == flops  # the seed fixes the batches


def test_reproduce_budget_rows_relate_as_the_methods_do(tiny_env):
    checkpoint, glue = tiny_env
    cfg = ReproduceConfig(task="mrpc", teacher=str(checkpoint), student_layers=1, seeds=(0, 1), data_dir=str(glue))
    rows = {r.name: r for r in reproduce_budget(cfg)}
    assert list(rows) == ["teacher (2L)", "teacher cache", "FT", "KD", "PKD", "SPS + PKD", "PTP + PKD", "Pea-KD"]
    assert rows["FT"].flops == rows["KD"].flops == rows["PKD"].flops  # the teacher is cached: same student work
    assert [rows[m].effective_layers for m in ("PKD", "SPS + PKD", "Pea-KD")] == [1, 2, 2]
    # SPS runs the encoder twice, the same pooler + classifier: one full step before PKD's single step, which (the
    # last) computes its [CLS] rows only. A full step costs more than that one and, per token, at most
    # (8 H^2 + 4 H I + 4 T H) / 4 H^2 = 2 + I/H + T/H <= 6 times it (H = 32, I = 64, T <= 64 positions)
    examples = 2 * (3 * 3 * 64 + 3 * 24)  # seeds x (3 epochs x 3 FLOP-forwards x 64 train + 3 evaluations x 24 dev)
    head = examples * 2 * (32 * 32 + 32 * 2)
    encoder = rows["PKD"].flops - head
    assert 2 * encoder < rows["SPS + PKD"].flops - head <= 7 * encoder
    assert rows["PTP + PKD"].flops > rows["PKD"].flops and rows["Pea-KD"].flops > rows["SPS + PKD"].flops
    for row in list(rows.values())[2:]:  # each seed's share, what reproduce's progress view times stage by stage
        assert set(row.seed_flops) == {0, 1} and sum(row.seed_flops.values()) == pytest.approx(row.flops, rel=1e-12)
    one_seed = {r.name: r for r in reproduce_budget(dataclasses.replace(cfg, seeds=(0,), methods=("ft",)))}
    assert list(one_seed) == ["teacher (2L)", "teacher cache", "FT"]
    assert one_seed["FT"].runs == 1 and one_seed["FT"].flops == pytest.approx(rows["FT"].flops / 2, rel=0.05)


def test_measurements_are_attached_only_from_the_same_setting(tiny_env):
    checkpoint, glue = tiny_env
    cfg = ReproduceConfig(task="mrpc", teacher=str(checkpoint), student_layers=1, seeds=(0,), methods=("ft", "kd"),
                          data_dir=str(glue))  # the 2-layer teacher has room for at most 2 student layers
    rows = [StageBudget("teacher (2L)", 1, 2, 1e12), StageBudget("teacher cache", 1, 2, 1e11),
            StageBudget("FT", 1, 2, 4e12), StageBudget("KD", 1, 2, 4e12)]
    results = {"config": {**dataclasses.asdict(cfg), "task": "MRPC"},
               "teacher": {"seconds": 10.0, "cache_seconds": 1.0},
               "runs": [{"method": "FT", "seed": 0, "seconds": 80.0}]}  # KD has not finished
    assert attach_measurements(rows, results, cfg, "fp32")
    assert [r.measured_seconds for r in rows] == [10.0, 1.0, 80.0, None]
    table = format_budget(rows, {"fp32": (2048, 1000.0), "bf16": (512, 10.0)}, "fp32", where="cpu", title="test")
    assert "| teacher (2L) | 1 | 2 | 1 | 11.0% | 1 | 10 | 10% |" in table  # bound 1 s, measured 10 s
    assert "| FT | 1 | 2 | 4 | 44.0% | 4 | 80 | 5% |" in table
    assert "| **total** | | | 9.1 | 100% | 9 (0 min) | 91 (2 min, 3 of 4 stages) | 6% |" in table  # of R: 5.1 s / 91 s
    other = {**results, "config": {**results["config"], "student_epochs": 5}}
    assert not attach_measurements(rows, other, cfg, "fp32")
    assert not attach_measurements(rows, results, cfg, "bf16")  # made in fp32 (no precision recorded: before bf16)
    bf16 = {**results, "environment": {"precision": "bf16"}}
    assert attach_measurements(rows, bf16, cfg, "bf16") and not attach_measurements(rows, bf16, cfg, "fp32")
    assert "In bf16 (matmul rate 10.0 GFLOP/s on 512^3) the same FLOPs would take at least 910 s (15 min)" in table
    assert "The stages run in fp32" in table
