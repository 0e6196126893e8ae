"""`BertConfig`: the hyper-parameters of a BERT encoder, with the field names of Hugging Face's `config.json`.

A checkpoint directory carries a `config.json`; `BertConfig.from_json` reads it, keeps the fields we use, ignores
bookkeeping keys (`architectures`, `transformers_version`, ...) and refuses settings this implementation does not
support, so a model never silently computes something other than what its checkpoint expects.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .checks import SUPPORTED_ACTIVATIONS, check_config

# Keys that appear in real BERT config.json files and do not change the forward pass we implement.
_HARMLESS_KEYS = {
    "architectures", "model_type", "transformers_version", "gradient_checkpointing", "use_cache", "_name_or_path",
    "torch_dtype", "dtype", "classifier_dropout", "directionality", "pooler_fc_size", "pooler_num_attention_heads",
    "pooler_num_fc_layers", "pooler_size_per_head", "pooler_type", "output_past", "id2label", "label2id",
    "problem_type", "bos_token_id", "eos_token_id", "is_decoder", "add_cross_attention", "tie_word_embeddings",
    "num_labels",
}
# Keys whose values we must check because other values mean a different model.
_SUPPORTED_VALUES = {
    "position_embedding_type": {"absolute"},
    "hidden_act": SUPPORTED_ACTIVATIONS,
}


@dataclass
class BertConfig:
    """Shape and regularisation of a BERT encoder. Defaults are bert-base-uncased."""

    vocab_size: int = 30522
    hidden_size: int = 768  # H
    num_hidden_layers: int = 12  # L
    num_attention_heads: int = 12  # A
    intermediate_size: int = 3072  # feed-forward width, 4H in bert-base
    hidden_act: str = "gelu"  # exact erf GELU
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        check_config(self)  # H divisible by A, positive sizes, exact GELU (bert_mini.checks)

    @property
    def head_size(self) -> int:
        """Width of one attention head, d_k = H / A."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, values: dict, source: str = "config", model_type: str = "bert") -> "BertConfig":
        """Build a config from an HF-style dict; unknown keys that would change the model are refused.

        model_type: the kind of model the caller can run. A dict that names another `model_type` is refused (one
        without the key, as in old checkpoints, is accepted): e.g. a Pea-KD SPS student is not a plain BERT.
        """
        if values.get("model_type", model_type) != model_type:
            raise ValueError(f"{source}: model_type is {values['model_type']!r}, expected {model_type!r}: "
                             "this checkpoint is not a plain BERT, load it with the tool that wrote it")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key in known:
                kwargs[key] = value
            elif key in _SUPPORTED_VALUES:
                if value not in _SUPPORTED_VALUES[key]:
                    raise ValueError(
                        f"{source}: {key}={value!r} is not implemented by bert_mini "
                        f"(supported: {sorted(_SUPPORTED_VALUES[key])})"
                    )
            elif key not in _HARMLESS_KEYS:
                raise ValueError(f"{source}: unknown config key {key!r}; bert_mini cannot promise to honour it")
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike, model_type: str = "bert") -> "BertConfig":
        """Read a Hugging Face `config.json` (of `model_type`, see `from_dict`)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: config file not found") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of config fields")
        return cls.from_dict(values, source=str(path), model_type=model_type)

    def to_dict(self) -> dict:
        """The config as a plain dict (HF field names)."""
        return dataclasses.asdict(self)

    def to_json(self, path: str | os.PathLike, **extra) -> None:
        """Write the config as JSON, atomically, with `extra` HF fields (model_type, architectures, id2label, ...)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**self.to_dict(), **extra}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
