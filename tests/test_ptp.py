"""PTP labels (classes, inequalities, medians, ties, refusals) and the PTP -> KD hand-off."""
import math

import numpy as np
import pytest
import torch

from bert_mini import BertConfig, BertModel, save_pretrained
from pea_kd.ptp import (AUTHORS_THRESHOLDS, PTP_CLASSES, authors_thresholds, build_ptp_labels, build_ptp_student,
                        kd_student_from_ptp, true_median)
from pea_kd.ptp_report import format_histogram, tensor_differences
from pea_kd.sps import make_plan
from pea_kd.students import load_student, save_student


def logits_from_probs(rows):
    """Logits whose softmax is the given probability rows: z = log p."""
    return torch.tensor([[math.log(p) for p in row] for row in rows], dtype=torch.float64)


# teacher probabilities and gold labels; c = max p; correct = argmax == label
PROBS = [[0.9, 0.1],  # label 0: correct, c 0.9
         [0.6, 0.4],  # label 0: correct, c 0.6
         [0.2, 0.8],  # label 1: correct, c 0.8
         [0.7, 0.3],  # label 1: wrong,   c 0.7
         [0.45, 0.55]]  # label 0: wrong, c 0.55
GOLD = torch.tensor([0, 0, 1, 1, 0])


def test_every_category_with_given_thresholds():
    res = build_ptp_labels(logits_from_probs(PROBS), GOLD, t1=0.75, t2=0.6)
    assert res.labels.tolist() == [0, 1, 0, 2, 3] and res.labels.dtype == torch.int64
    assert (res.t1, res.t2, res.num_correct, res.num_wrong) == (0.75, 0.6, 3, 2)
    assert res.histogram == {"confidently correct": 2, "unconfidently correct": 1, "confidently wrong": 1,
                             "unconfidently wrong": 1}
    assert list(res.histogram) == list(PTP_CLASSES)
    torch.testing.assert_close(res.confidence, torch.tensor([0.9, 0.6, 0.8, 0.7, 0.55], dtype=torch.float64))


def test_default_thresholds_are_true_medians():
    res = build_ptp_labels(logits_from_probs(PROBS), GOLD)
    # correct c = {0.9, 0.6, 0.8}: median 0.8 (odd count); wrong c = {0.7, 0.55}: median (0.55 + 0.7) / 2 = 0.625
    assert res.t1 == pytest.approx(0.8) and res.t2 == pytest.approx(0.625)
    assert torch.median(torch.tensor([0.7, 0.55])).item() == pytest.approx(0.55)  # torch's lower median differs
    # the median example itself has c == t1 exactly, and c <= t1 makes it "unconfidently correct"
    assert res.labels.tolist() == [0, 1, 1, 2, 3]
    assert true_median(torch.tensor([4.0, 1.0, 3.0, 2.0])) == 2.5 and true_median(torch.tensor([3.0, 1.0, 2.0])) == 2


def test_threshold_boundaries_are_unconfident():
    z = torch.zeros(2, 2)  # softmax = (0.5, 0.5) exactly; argmax tie -> class 0
    res = build_ptp_labels(z, torch.tensor([0, 1]), t1=0.5, t2=0.5)
    assert res.labels.tolist() == [1, 3]  # c == t1 -> class 1, c == t2 -> class 3
    res = build_ptp_labels(z, torch.tensor([0, 1]), t1=0.4999, t2=0.4999)
    assert res.labels.tolist() == [0, 2]
    four = build_ptp_labels(torch.zeros(2, 4), torch.tensor([0, 3]), t1=0.25, t2=0.25)  # c = 0.25 exactly
    assert four.labels.tolist() == [1, 3]
    assert build_ptp_labels(torch.tensor([[9.0, 0.0]]), torch.tensor([0]), t1=1.0).labels.tolist() == [1]


def test_argmax_ties_go_to_the_first_index():
    z = torch.tensor([[2.0, 2.0, 1.0], [2.0, 2.0, 1.0], [0.0, 3.0, 3.0]])
    res = build_ptp_labels(z, torch.tensor([0, 1, 1]), t1=0.3, t2=0.3)
    assert res.num_correct == 2 and res.labels.tolist() == [0, 2, 0]  # row 1: prediction 0 != label 1


def test_matches_a_plain_loop_on_random_data():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(201, 3, generator=g) * 3
    y = torch.randint(0, 3, (201,), generator=g)
    res = build_ptp_labels(z.float(), y)
    p = torch.softmax(z.double(), 1).numpy()
    c, pred = p.max(1), z.argmax(1).numpy()
    correct = pred == y.numpy()
    assert res.t1 == pytest.approx(float(np.median(c[correct])), abs=1e-7)
    assert res.t2 == pytest.approx(float(np.median(c[~correct])), abs=1e-7)
    expected = [(0 if ci > res.t1 else 1) if ok else (2 if ci > res.t2 else 3) for ci, ok in zip(c, correct)]
    assert res.labels.tolist() == expected
    assert sum(res.histogram.values()) == 201
    assert list(res.histogram.values()) == np.bincount(expected, minlength=4).tolist()


def test_no_wrong_predictions(caplog):
    z = torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    with caplog.at_level("WARNING"):
        res = build_ptp_labels(z, torch.tensor([0, 1, 0]))
    assert "no wrong prediction" in caplog.text
    assert res.t2 == 1.0 and res.num_wrong == 0
    assert res.histogram["confidently wrong"] == 0 and res.histogram["unconfidently wrong"] == 0
    assert res.labels.tolist() == [0, 1, 1]  # t1 = median = the c of row 2
    # dev labels reuse the train thresholds; with t2 = 1.0 every wrong dev example is "unconfidently wrong"
    assert build_ptp_labels(z, torch.tensor([1, 0, 1]), res.t1, res.t2).labels.tolist() == [3, 3, 3]
    none_right = build_ptp_labels(z, torch.tensor([1, 0, 1]))
    assert none_right.t1 == 1.0 and none_right.num_correct == 0


def test_regression_and_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="PTP is defined for classification tasks; STS-B"):
        build_ptp_labels(torch.randn(4, 1), torch.tensor([0.5, 1.0, 4.2, 3.0]))
    with pytest.raises(ValueError, match="PTP is defined for classification tasks"):
        build_ptp_labels(torch.randn(4, 2), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="PTP is defined for classification tasks"):
        build_ptp_labels(torch.randn(4), torch.tensor([0, 1, 1, 0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        build_ptp_labels(torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        build_ptp_labels(torch.randn(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="finite"):
        build_ptp_labels(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    for bad in (0.0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match=r"t1 must be a number in \(0, 1\]"):
            build_ptp_labels(torch.randn(2, 2), torch.tensor([0, 1]), t1=bad)
    with pytest.raises(ValueError, match="N >= 1"):
        build_ptp_labels(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_histogram_table_and_authors_values():
    res = build_ptp_labels(logits_from_probs(PROBS), GOLD, t1=0.75, t2=0.6)
    text = format_histogram(res)
    assert "teacher correct on 3 (60.0%), wrong on 2" in text and "t1 = 0.7500" in text and "t2 = 0.6000" in text
    row = [line for line in text.splitlines() if "confidently correct" in line and "un" not in line][0]
    assert row.split()[-2:] == ["2", "40.0%"]
    assert authors_thresholds("mrpc") == (0.95, 0.75) and authors_thresholds("sst2") == (0.98, 0.80)
    assert set(AUTHORS_THRESHOLDS) == {"MRPC", "RTE", "SST-2", "QNLI", "CoLA"}
    with pytest.raises(ValueError, match="no PTP thresholds for MNLI"):
        authors_thresholds("mnli")


def test_handoff_keeps_encoder_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    save_pretrained(BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=24, max_position_embeddings=16)), tmp_path / "pre")
    ptp = build_ptp_student(tmp_path / "pre", num_layers=2, variant="sps")
    assert ptp.num_labels == 4 and ptp.bert.encoder.plan == make_plan(2, "sps")
    with torch.no_grad():  # stand-in for PTP training
        for p in ptp.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_student(ptp, tmp_path / "ptp", "sps", extra_meta={"stage": "ptp"})

    kd = kd_student_from_ptp(tmp_path / "ptp", num_labels=2, variant="sps", num_layers=2)
    assert tensor_differences(load_student(tmp_path / "ptp"), kd) == ["classifier.bias", "classifier.weight"]
    assert tensor_differences(ptp, load_student(tmp_path / "ptp")) == []
    assert kd.bert.encoder.plan == make_plan(2, "sps")
    with torch.no_grad():  # the comparison is bitwise: one ulp in one element is caught
        w = kd.bert.encoder.layer[1].output.dense.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(math.inf))
    assert tensor_differences(ptp, kd)[-3:] == ["bert.encoder.layer.1.output.dense.weight", "classifier.bias",
                                                "classifier.weight"]
    with pytest.raises(ValueError, match="variant='original'"):
        kd_student_from_ptp(tmp_path / "ptp", num_labels=2, variant="original", num_layers=2)
