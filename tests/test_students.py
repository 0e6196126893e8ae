"""Students: bottom-L layers from the pre-trained checkpoint, a fresh head, save/load, and the encoder_from hand-off."""
import json

import pytest
import torch

from bert_mini import BertConfig, BertForSequenceClassification, BertModel, load_pretrained, save_pretrained
from pea_kd.sps import make_plan
from pea_kd.student_files import read_student_meta
from pea_kd.students import build_student, count_parameters, effective_layers, load_student, save_student

TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=4, intermediate_size=24,
            max_position_embeddings=16)


def tiny_checkpoint(directory, with_head=False, **overrides):
    """An HF-layout checkpoint of a random tiny BERT (optionally with a task head, like a fine-tuned one)."""
    torch.manual_seed(0)
    config = BertConfig(**{**TINY, **overrides})
    model = BertForSequenceClassification(config, num_labels=2) if with_head else BertModel(config)
    if with_head:
        with torch.no_grad():
            model.classifier.weight.fill_(5.0)
    save_pretrained(model, directory)
    return model


def assert_bitwise_equal(a, b, name):
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{name} differs"


def test_bottom_layers_come_from_the_pretrained_checkpoint():
    full = load_pretrained("minilm-l6")
    torch.manual_seed(0)
    student = build_student("minilm-l6", num_layers=3, num_labels=2, variant="sps")
    assert len(student.bert.encoder.layer) == 3 and student.config.num_hidden_layers == 3
    assert student.bert.encoder.plan == make_plan(3, "sps") and effective_layers(student) == 6
    reference = full.state_dict()
    compared = 0
    for name, tensor in student.bert.state_dict().items():
        assert_bitwise_equal(tensor, reference[name], name)  # embeddings, layers 0..2, pooler
        compared += 1
    assert compared == len(reference) - 3 * 16  # everything but the 16 tensors of each of layers 3, 4, 5


def test_head_is_fresh_normal_002_and_zero_bias():
    torch.manual_seed(1)
    student = build_student("minilm-l6", num_layers=2, num_labels=3)
    w, b = student.classifier.weight, student.classifier.bias
    assert w.shape == (3, 384) and torch.count_nonzero(b) == 0
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002  # 1152 draws of N(0, 0.02)
    torch.manual_seed(2)
    other = build_student("minilm-l6", num_layers=2, num_labels=3)
    assert not torch.equal(other.classifier.weight, w)  # a new draw, not a stored head


def test_a_checkpoint_head_is_discarded(tmp_path, caplog):
    tiny_checkpoint(tmp_path / "finetuned", with_head=True)
    with caplog.at_level("WARNING"):
        student = build_student(tmp_path / "finetuned", num_layers=2, num_labels=2)
    assert "re-initialised" in caplog.text
    assert student.classifier.weight.abs().max() < 0.2  # not the stored 5.0


def test_bert_base_width_from_a_local_checkpoint(tmp_path):
    # bert-base shape (H 768, 12 heads, FFN 3072) with a small vocabulary and 2 layers: no network needed.
    shape = dict(vocab_size=50, hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=2,
                 max_position_embeddings=32)
    tiny_checkpoint(tmp_path / "base", **shape)
    student = build_student(tmp_path / "base", num_layers=1, num_labels=2, variant="sps")
    assert student.config.hidden_size == 768 and effective_layers(student) == 2
    embeddings = 50 * 768 + 32 * 768 + 2 * 768 + 2 * 768
    assert count_parameters(student) == embeddings + 7_087_872 + 590_592 + 1_538
    out = student.eval()(torch.tensor([[2, 7, 9, 3]]))
    assert out.logits.shape == (1, 2)


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="num_labels"):
        build_student("minilm-l6", num_labels=0)
    with pytest.raises(ValueError, match="unknown variant"):
        build_student("minilm-l6", variant="SPSS")
    with pytest.raises(ValueError, match="num_hidden_layers=7"):
        build_student("minilm-l6", num_layers=7)
    with pytest.raises(FileNotFoundError, match="student.json"):
        read_student_meta(tmp_path)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    tiny_checkpoint(tmp_path / "pre")
    model = build_student(tmp_path / "pre", num_layers=3, num_labels=4, variant="sps")
    out_dir = save_student(model, tmp_path / "run" / "ptp", "sps", extra_meta={"stage": "ptp", "t1": 0.95})
    meta = json.loads((out_dir / "student.json").read_text())
    assert meta["variant"] == "sps" and meta["num_layers"] == 3 and meta["num_labels"] == 4
    assert meta["plan"] == [[0, False], [1, False], [2, False], [0, True], [1, True], [2, True]]
    assert meta["extra"] == {"stage": "ptp", "t1": 0.95} and meta["num_parameters"] == count_parameters(model)

    loaded = load_student(out_dir)
    assert loaded.bert.encoder.plan == model.bert.encoder.plan and loaded.num_labels == 4
    assert loaded.student_meta["extra"]["stage"] == "ptp"
    reference = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert_bitwise_equal(tensor, reference[name], name)  # head included
    ids = torch.tensor([[2, 11, 12, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    torch.testing.assert_close(loaded.eval()(ids, mask).logits, model.eval()(ids, mask).logits, rtol=0, atol=0)

    save_student(loaded, out_dir, "sps")  # overwriting an existing directory leaves no staging or old copies
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["ptp"]
    with pytest.raises(ValueError, match="not variant 'original'"):
        save_student(model, tmp_path / "x", "original")


def test_encoder_from_keeps_encoder_and_renews_only_the_head(tmp_path):
    tiny_checkpoint(tmp_path / "pre")
    torch.manual_seed(0)
    ptp = build_student(tmp_path / "pre", num_layers=2, num_labels=4, variant="sps")
    with torch.no_grad():  # stand-in for PTP training: every tensor moves away from the pre-trained values
        for p in ptp.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_student(ptp, tmp_path / "ptp", "sps")
    saved = ptp.state_dict()

    for num_labels in (2, 4):  # 4: same head shape as PTP's, and still a fresh head
        torch.manual_seed(5)
        kd = build_student(tmp_path / "elsewhere-ignored", num_layers=2, num_labels=num_labels, variant="sps",
                           encoder_from=tmp_path / "ptp")
        assert kd.bert.encoder.plan == make_plan(2, "sps")
        for name, tensor in kd.state_dict().items():
            if not name.startswith("classifier."):
                assert_bitwise_equal(tensor, saved[name], name)
        assert kd.classifier.weight.shape == (num_labels, 16) and torch.count_nonzero(kd.classifier.bias) == 0
        assert not torch.equal(kd.classifier.weight, saved["classifier.weight"][:num_labels])
        assert kd.classifier.weight.abs().max() < 0.1  # N(0, 0.02), not a trained head


def test_encoder_from_refuses_a_different_variant_or_depth(tmp_path):
    tiny_checkpoint(tmp_path / "pre")
    save_student(build_student(tmp_path / "pre", num_layers=2, num_labels=4, variant="sps"), tmp_path / "ptp", "sps")
    with pytest.raises(ValueError, match=r"holds a 2-layer 'sps' student, but variant='original', num_layers=2"):
        build_student(num_layers=2, variant="original", encoder_from=tmp_path / "ptp")
    with pytest.raises(ValueError, match=r"holds a 2-layer 'sps' student, but variant='sps', num_layers=3"):
        build_student(num_layers=3, variant="sps", encoder_from=tmp_path / "ptp")
    meta_path = tmp_path / "ptp" / "student.json"
    meta = json.loads(meta_path.read_text())
    meta["plan"] = meta["plan"][:2]  # a tampered plan no longer matches its variant
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="is not the plan of variant 'sps'"):
        load_student(tmp_path / "ptp")
