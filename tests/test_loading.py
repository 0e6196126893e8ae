"""Pretrained-weight loading: the bundled MiniLM, local directories, key mapping and every refusal."""
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from bert_mini import BertConfig, BertForSequenceClassification, BertModel, load_pretrained, load_tokenizer, save_pretrained
from bert_mini.checkpoint_files import bundled_model_dir

TINY = dict(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=20)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(25)]


def write_tiny_checkpoint(directory, state_transform=None, as_bin=False):
    """A tiny HF-layout checkpoint; `state_transform` edits the state dict before it is written."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(**TINY))
    directory.mkdir(parents=True, exist_ok=True)
    model.config.to_json(directory / "config.json")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if state_transform:
        state = state_transform(state)
    if as_bin:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_file(state, directory / "model.safetensors")
    return model


def test_bundled_minilm_loads_cleanly():
    model = load_pretrained("minilm-l6")
    assert isinstance(model, BertModel) and len(model.encoder.layer) == 6 and model.config.hidden_size == 384
    assert model.load_report.missing == [] and model.load_report.unexpected == []
    clf = load_pretrained("minilm-l6", num_labels=2)
    assert clf.load_report.newly_initialized == ["classifier.weight", "classifier.bias"]
    torch.testing.assert_close(clf.bert.pooler.dense.weight, model.pooler.dense.weight)


def test_bottom_layers_student():
    full = load_pretrained("minilm-l6")
    student = load_pretrained("minilm-l6", num_labels=2, num_hidden_layers=3)
    assert len(student.bert.encoder.layer) == 3
    torch.testing.assert_close(student.bert.encoder.layer[2].output.dense.weight, full.encoder.layer[2].output.dense.weight)
    assert student.load_report.dropped_layers == [3, 4, 5] and student.load_report.unexpected == []
    with pytest.raises(ValueError, match="num_hidden_layers=7"):
        load_pretrained("minilm-l6", num_hidden_layers=7)


def test_tokenizer_of_bundled_model_is_uncased():
    tok = load_tokenizer("minilm-l6")
    assert tok.encode("Hello World").input_ids == tok.encode("hello world").input_ids
    assert tok.encode("hello", "world").token_type_ids == [0, 0, 0, 1, 1]


def test_save_and_reload_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY), num_labels=3)
    save_pretrained(model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "vocab.txt").write_text("\n".join(VOCAB))
    again = load_pretrained(tmp_path / "ckpt", num_labels=3)
    assert again.load_report.newly_initialized == []
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    save_pretrained(again, tmp_path / "ckpt")  # overwriting an existing directory leaves no debris
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_leftover_old_dir_of_a_killed_save_does_not_block_later_saves(tmp_path):
    model = BertModel(BertConfig(**TINY))
    save_pretrained(model, tmp_path / "final")
    (tmp_path / ".final.old").mkdir()  # what a save killed between its two renames used to leave
    (tmp_path / ".final.old" / "model.safetensors").write_bytes(b"stale")
    save_pretrained(model, tmp_path / "final")
    save_pretrained(model, tmp_path / "final")
    assert load_pretrained(tmp_path / "final").load_report.newly_initialized == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".final.old", "final"]  # the leftover is not ours to delete


def test_bert_prefix_and_tf_layernorm_names_in_bin(tmp_path):
    def to_tf_names(state):
        out = {}
        for k, v in state.items():
            k = "bert." + k
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
            out[k] = v
        out["cls.predictions.bias"] = torch.zeros(30)  # pre-training head: ignored silently
        return out

    reference = write_tiny_checkpoint(tmp_path / "tf", to_tf_names, as_bin=True)
    model = load_pretrained(tmp_path / "tf")
    assert model.load_report.unexpected == []
    torch.testing.assert_close(model.embeddings.LayerNorm.weight, reference.embeddings.LayerNorm.weight)


def test_missing_encoder_weight_is_an_error(tmp_path):
    write_tiny_checkpoint(tmp_path / "m", lambda s: {k: v for k, v in s.items() if "layer.1.output.dense" not in k})
    with pytest.raises(ValueError, match=r"model\.safetensors: missing encoder weights: encoder\.layer\.1\.output\.dense\.bias"):
        load_pretrained(tmp_path / "m")


def test_shape_mismatch_names_file_and_key(tmp_path):
    def widen(state):
        state["pooler.dense.bias"] = torch.zeros(17)
        return state

    write_tiny_checkpoint(tmp_path / "s", widen)
    with pytest.raises(ValueError, match=r"model\.safetensors: pooler\.dense\.bias has shape \(17,\), config\.json implies \(16,\)"):
        load_pretrained(tmp_path / "s")


def test_truncated_safetensors(tmp_path):
    write_tiny_checkpoint(tmp_path / "t")
    path = tmp_path / "t" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read safetensors file, it is truncated or corrupt"):
        load_pretrained(tmp_path / "t")


class _Exploit:
    """A pickle payload that would create a file if it were ever executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    write_tiny_checkpoint(tmp_path / "p", as_bin=True)
    marker = tmp_path / "pwned"
    with open(tmp_path / "p" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embeddings.word_embeddings.weight": _Exploit(marker)}, f)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: refused to unpickle"):
        load_pretrained(tmp_path / "p")
    assert not marker.exists()


def test_directory_without_config_or_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_pretrained(tmp_path / "empty")
    write_tiny_checkpoint(tmp_path / "now")
    (tmp_path / "now" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_pretrained(tmp_path / "now")
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_pretrained(str(tmp_path / "does-not-exist"))


def test_bundled_dir_has_expected_files():
    names = {p.name for p in bundled_model_dir().iterdir()}
    assert {"config.json", "vocab.txt", "model.safetensors"} <= names


def test_hub_name_downloads_through_load_pretrained(tmp_path):
    """`bert-base-uncased`-style names go through the real download code (served here from 127.0.0.1)."""
    from test_download import LocalHTTPServer, closed_port_url

    from bert_mini.download import DownloadError

    reference = write_tiny_checkpoint(tmp_path / "src")
    files = {f"/org/tiny-bert/resolve/main/{p.name}": p.read_bytes() for p in (tmp_path / "src").iterdir()}
    with LocalHTTPServer(files) as server:
        model = load_pretrained("org/tiny-bert", num_labels=2, cache_dir=tmp_path / "cache", base_url=server.url)
        tok = load_tokenizer("org/tiny-bert", cache_dir=tmp_path / "cache", base_url=server.url)
    torch.testing.assert_close(model.bert.pooler.dense.weight, reference.pooler.dense.weight)
    assert tok.encode("w3 w4").input_ids == [2, 8, 9, 3]
    with pytest.raises(DownloadError, match="no network"):
        load_pretrained("org/other-bert", cache_dir=tmp_path / "cache", base_url=closed_port_url())
    assert not (tmp_path / "cache" / "org--other-bert").exists()


def test_tokenize_is_not_truncated_by_an_earlier_encode():
    tok = load_tokenizer("minilm-l6")
    tok.encode("a", max_length=16)
    assert len(tok.tokenize("word " * 50)) == 50
