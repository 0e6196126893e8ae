"""Directories we write open in Hugging Face as the same model; SPS students are refused there, exported unrolled.

The HF side is recorded in tests/fixtures/hf_interop_golden.json by scripts/make_golden_fixtures.py (the only place
that imports transformers). `build_interop_dirs` from that script rebuilds the very same directories here.
"""
import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bert_mini import BertTokenizer, load_pretrained, load_tokenizer
from bert_mini.checkpoint_files import bundled_model_dir
from bert_mini.tokenization import tokenizer_from_dir
from pea_kd.export import export_hf, unroll
from pea_kd.sps import apply_plan, make_plan
from pea_kd.student_files import SPS_MODEL_TYPE
from pea_kd.students import load_student, save_student

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = json.loads((FIXTURES / "hf_interop_golden.json").read_text(encoding="utf-8"))
_spec = importlib.util.spec_from_file_location("make_golden_fixtures", ROOT / "scripts" / "make_golden_fixtures.py")
fixtures_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures_script)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def interop_dirs(tmp_path_factory):
    return fixtures_script.build_interop_dirs(tmp_path_factory.mktemp("interop"), bundled_model_dir())


def our_batch(tok: BertTokenizer) -> dict[str, torch.Tensor]:
    return tok.pad([tok.encode(a, b) for a, b in GOLDEN["meta"]["texts"]])


def hf_batch(case: dict) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(case[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}


@pytest.mark.parametrize("name", ["plain_mrpc", "teacher_mnli", "sps_mnli_exported"])
def test_hf_opens_our_directory_as_the_same_model(interop_dirs, name):
    case, d = GOLDEN["cases"][name], interop_dirs[name]
    assert fixtures_script.sha256(d / "model.safetensors") == case["weights_sha256"], \
        "the weights differ from those HF saw: regenerate the fixture (tests/fixtures/README.md)"
    assert sorted(p.name for p in d.iterdir()) == case["files"]
    # Every file HF reads is there and well-formed.
    config = json.loads((d / "config.json").read_text())
    assert config["model_type"] == case["model_type"] == "bert"
    assert config["architectures"] == case["architectures"] == ["BertForSequenceClassification"]
    assert config["num_labels"] == case["num_labels"] == len(config["id2label"])
    assert config["id2label"] == case["id2label"] and config["label2id"] == {v: int(k) for k, v in
                                                                            case["id2label"].items()}
    assert config["num_hidden_layers"] == case["num_hidden_layers"]
    tok_config = json.loads((d / "tokenizer_config.json").read_text())
    assert tok_config["do_lower_case"] is True and tok_config["tokenizer_class"] == "BertTokenizer"
    assert json.loads((d / "special_tokens_map.json").read_text())["cls_token"] == "[CLS]"
    assert len((d / "vocab.txt").read_text(encoding="utf-8").splitlines()) == config["vocab_size"]
    with safe_open(d / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"} and "classifier.weight" in f.keys()
    assert case["model_class"] == "BertForSequenceClassification" and case["tokenizer_class"] == "BertTokenizer"
    # Same token ids, same logits.
    tok = load_tokenizer(d)
    batch = our_batch(tok)
    for key, value in hf_batch(case).items():
        assert batch[key].tolist() == value.tolist(), key
    model = load_student(d) if (d / "student.json").is_file() else load_pretrained(d, num_labels=config["num_labels"])
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    assert (logits - torch.tensor(case["logits"])).abs().max().item() <= TOLERANCE


def test_sps_student_is_refused_by_hf_and_equals_its_unrolled_export(interop_dirs):
    d, golden = interop_dirs["sps_mnli"], GOLDEN["sps_mnli"]
    assert sorted(p.name for p in d.iterdir()) == golden["files"]
    assert "model.safetensors" not in golden["files"]  # so that an explicit BertFor* class finds no weights
    assert json.loads((d / "config.json").read_text())["model_type"] == SPS_MODEL_TYPE
    assert golden["refused"]["AutoModelForSequenceClassification"].startswith("ValueError: ")
    assert SPS_MODEL_TYPE in golden["refused"]["AutoModelForSequenceClassification"]
    assert golden["refused"]["BertForSequenceClassification"].startswith("OSError: ")
    with pytest.raises(ValueError, match=f"model_type is '{SPS_MODEL_TYPE}', expected 'bert'"):
        load_pretrained(d, num_labels=3)  # bert_mini refuses it too
    student = load_student(d).eval()
    exported = GOLDEN["cases"]["sps_mnli_exported"]
    assert exported["num_hidden_layers"] == 2 * student.config.num_hidden_layers
    with torch.no_grad():
        logits = student(**hf_batch(exported)).logits
    assert (logits - torch.tensor(exported["logits"])).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("variant", ["original", "sps_no_shuffle", "sps", "sps6"])
def test_unroll_copies_layers_and_exchanges_query_and_key(variant):
    model = fixtures_script._tiny_random_classifier(40, 2, 0, num_layers=6 if variant == "sps6" else 2)
    plan = apply_plan(model, variant)
    plain = unroll(model)
    assert plain.config.num_hidden_layers == len(plan) == len(make_plan(len(model.bert.encoder.layer), variant))
    for e, (i, swap) in enumerate(plan):
        src, dst = model.bert.encoder.layer[i].attention.self, plain.bert.encoder.layer[e].attention.self
        q, k = (src.key, src.query) if swap else (src.query, src.key)
        assert torch.equal(dst.query.weight, q.weight) and torch.equal(dst.query.bias, q.bias)
        assert torch.equal(dst.key.weight, k.weight) and torch.equal(dst.key.bias, k.bias)
        assert torch.equal(dst.value.weight, src.value.weight)
        assert dst.query.weight.data_ptr() != q.weight.data_ptr()  # copies: the export shares nothing
    ids = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids).logits - plain(ids).logits).abs().max().item() <= TOLERANCE


def test_export_hf_command_writes_a_plain_bert_and_refuses_to_overwrite(interop_dirs, tmp_path):
    out = tmp_path / "exported"
    cmd = [sys.executable, "-m", "pea_kd", "export-hf", str(interop_dirs["sps_mnli"]), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["variant"] == "sps" and result["exported_layers"] == 4 and result["max_abs_logit_diff"] <= TOLERANCE
    assert (out / "model.safetensors").read_bytes() == (interop_dirs["sps_mnli_exported"] / "model.safetensors"
                                                         ).read_bytes()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.strip().endswith(f"{out} exists; pass --overwrite to replace it")
    # A teacher (no student.json) is exported as it is, labels and tokenizer included.
    result = export_hf(interop_dirs["teacher_mnli"], tmp_path / "teacher")
    assert result["exported_layers"] == 2 and result["tokenizer"]
    assert json.loads((tmp_path / "teacher" / "config.json").read_text())["id2label"]["2"] == "neutral"


def test_load_tokenizer_reads_the_tokenizer_json_transformers_saves(tmp_path):
    (tmp_path / "tokenizer.json").write_bytes(gzip.decompress((FIXTURES / "hf_saved_tokenizer.json.gz").read_bytes()))
    (tmp_path / "config.json").write_text((bundled_model_dir() / "config.json").read_text())
    tok = load_tokenizer(tmp_path)  # no vocab.txt here
    reference = tokenizer_from_dir(bundled_model_dir())  # the same tokenizer from vocab.txt
    assert tok.vocab == reference.vocab and tok.lowercase is True
    entries = json.loads((FIXTURES / "tokenizer_golden.json").read_text())["entries"]
    for e in entries[::5]:
        enc = tok.encode(e["text_a"], e["text_b"], max_length=e["max_length"])
        assert (enc.input_ids, enc.token_type_ids) == (e["input_ids"], e["token_type_ids"]), e["id"]
    # What we write from it is a vocab.txt that HF and we read back as the same tokenizer.
    (tmp_path / "saved").mkdir()
    tok.save(tmp_path / "saved")
    assert BertTokenizer(tmp_path / "saved" / "vocab.txt").vocab == reference.vocab


@pytest.mark.parametrize("change, message", [
    ({"model": {"type": "BPE", "vocab": {}, "merges": []}}, "a BPE tokenizer; bert_mini only reads BERT's WordPiece"),
    ({"normalizer": {"type": "NFKC"}}, "normalizer 'NFKC' is not BERT's"),
])
def test_load_tokenizer_refuses_other_tokenizer_types_in_one_line(tmp_path, change, message):
    spec = json.loads(gzip.decompress((FIXTURES / "hf_saved_tokenizer.json.gz").read_bytes()))
    (tmp_path / "tokenizer.json").write_text(json.dumps({**spec, **change}))
    (tmp_path / "config.json").write_text((bundled_model_dir() / "config.json").read_text())
    with pytest.raises(ValueError, match=message) as err:
        load_tokenizer(tmp_path)
    assert "\n" not in str(err.value)


def test_save_student_labels_must_match_the_head(tmp_path):
    model = fixtures_script._tiny_random_classifier(40, 3, 0)
    with pytest.raises(ValueError, match=r"label_names \['a', 'b'\] must be 3 distinct names"):
        save_student(model, tmp_path / "s", "original", label_names=["a", "b"])
    assert not (tmp_path / "s").exists()
    save_student(model, tmp_path / "s", "original")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"} and config["num_labels"] == 3
