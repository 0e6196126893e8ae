"""`BertConfig`: the hyper-parameters of a BERT encoder, with the field names of Hugging Face's `config.json`.

A checkpoint directory carries a `config.json`; `BertConfig.from_json` reads it, keeps the fields we use, ignores
bookkeeping keys (`architectures`, `transformers_version`, ...) and refuses settings this implementation does not
support, so a model never silently computes something other than what its checkpoint expects.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoint_files import config_fields, read_config_json, write_json_atomic
from .checks import check_config


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
        kwargs = config_fields(values, {f.name for f in dataclasses.fields(cls)}, source, model_type)  # or refused
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike, model_type: str = "bert") -> "BertConfig":
        """Read a Hugging Face `config.json` (of `model_type`, see `from_dict`)."""
        return cls.from_dict(read_config_json(Path(path)), source=str(path), model_type=model_type)

    def to_dict(self) -> dict:
        """The config as a plain dict (HF field names)."""
        return dataclasses.asdict(self)

    def to_json(self, path: str | os.PathLike, **extra) -> None:
        """Write the config as JSON, atomically, with `extra` HF fields (model_type, architectures, id2label, ...)."""
        write_json_atomic(Path(path), {**self.to_dict(), **extra})
