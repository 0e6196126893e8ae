"""Build, save and reload Pea-KD students.

A student is a `BertForSequenceClassification` with L real layers and an SPS plan (`pea_kd.sps`):

    build_student("minilm-l6", num_layers=3, variant="sps")
        embeddings, encoder.layer.0..L-1, pooler  <- the *pre-trained* checkpoint (bottom L layers, as in PKD)
        classifier                                <- new: W_c ~ N(0, 0.02), b_c = 0
        encoder.plan                              <- make_plan(L, variant)

    build_student(..., encoder_from=<dir written by save_student>)     (the PTP -> KD hand-off)
        embeddings, layers, pooler                <- that directory, bit for bit
        classifier                                <- new again (the 4-way PTP head is discarded)

`save_student` writes an HF-layout directory (config.json, model.safetensors, tokenizer files) plus `student.json`
({variant, plan, num_layers, effective_layers, num_labels, num_parameters, extra}; pea_kd.student_files);
`load_student` reads it back with plan and head.

A student with shared layers is not a plain BERT: its config.json names another model_type, which Hugging Face
refuses (pea_kd.student_files); `python -m pea_kd export-hf DIR OUT` writes its unrolled plain-BERT twin.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from torch import nn

from bert_mini import BertForSequenceClassification, BertTokenizer, load_pretrained

from .sps import Plan, apply_plan, get_encoder, make_plan
from .student_files import check_same_student, check_stored_layers, model_type_of, read_student_meta, write_student_dir

logger = logging.getLogger(__name__)

HEAD_INIT_STD = 0.02  # BERT's initializer_range: W_c ~ N(0, 0.02^2), b_c = 0


def reset_head(model: BertForSequenceClassification, std: float = HEAD_INIT_STD) -> None:
    """Re-initialise the task head in place: W_c ~ N(0, std^2), b_c = 0."""
    nn.init.normal_(model.classifier.weight, mean=0.0, std=std)
    nn.init.zeros_(model.classifier.bias)


def build_student(
    pretrained: str | os.PathLike = "minilm-l6",
    num_layers: int = 3,
    num_labels: int = 2,
    variant: str = "original",
    encoder_from: Optional[str | os.PathLike] = None,
) -> BertForSequenceClassification:
    """An L-layer student with a new task head and the `variant`'s SPS plan.

    pretrained:   checkpoint name or directory (see `bert_mini.load_pretrained`) whose embeddings, bottom
                  `num_layers` layers and pooler are copied. Use the pre-trained, not a fine-tuned, checkpoint: a
                  task head found in it is discarded with a warning. Ignored when `encoder_from` is given.
    encoder_from: a directory written by `save_student` (e.g. the PTP stage's best checkpoint). Its embeddings,
                  layers and pooler are loaded bit for bit; its stored variant and num_layers must equal the ones
                  asked for here. Its head (e.g. the 4-way PTP head) is replaced by a new one.
    The head is always new: W_c ~ N(0, 0.02), b_c = 0, drawn from torch's global RNG (seed it for reproducibility).
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"build_student: num_labels must be a positive integer, got {num_labels!r}")
    make_plan(num_layers, variant)  # validates num_layers and variant before any loading
    if encoder_from is None:
        model = load_pretrained(pretrained, num_labels=num_labels, num_hidden_layers=num_layers)
        if not model.load_report.newly_initialized:
            logger.warning("build_student: %s has a task head of shape (%d, H); Pea-KD students start from the "
                           "pre-trained checkpoint, the head is re-initialised", pretrained, num_labels)
    else:
        meta = read_student_meta(encoder_from)
        check_same_student(meta, variant, num_layers, encoder_from)  # the variant and depth asked for
        model = load_pretrained(encoder_from, num_labels=num_labels, model_type=model_type_of(meta["variant"]))
        check_stored_layers("build_student", encoder_from, model, num_layers)  # config.json agrees with student.json
    reset_head(model)
    apply_plan(model, variant)
    return model


def effective_layers(model: nn.Module) -> int:
    """Number of transformer layers a forward pass runs, len(plan): 2L for SPS, 9 for sps6, L for original."""
    return len(get_encoder(model).plan)


def count_parameters(model: nn.Module, include_head: bool = True) -> int:
    """Number of distinct trainable-or-not parameter scalars; shared tensors count once (SPS adds none).

    include_head=False leaves out `classifier.*` (the task head), leaving embeddings + layers + pooler.
    """
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters():  # named_parameters() already yields a shared tensor only once
        if (not include_head and name.startswith("classifier.")) or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def save_student(
    model: BertForSequenceClassification,
    out_dir: str | os.PathLike,
    variant: str,
    tokenizer: Optional[BertTokenizer] = None,
    label_names: Optional[Sequence[str]] = None,
    extra_meta: Optional[dict] = None,
) -> Path:
    """Write `out_dir` = HF-layout checkpoint + `student.json`, atomically (a reader sees the old or the new dir).

    `variant` must describe the plan the model runs (checked); config.json's model_type is `model_type_of(variant)`.
    `tokenizer` (its files are written) and `label_names` (id2label, e.g. the GLUE task's labels) are as in
    `bert_mini.save_pretrained`. `extra_meta` (JSON-serialisable) is stored under "extra", e.g.
    {"stage": "ptp", "task": "MRPC", "t1": 0.95, "t2": 0.75}.
    """
    if not isinstance(model, BertForSequenceClassification):
        raise TypeError(f"save_student: expected a BertForSequenceClassification, got {type(model).__name__}")
    plan: Plan = get_encoder(model).plan
    expected = make_plan(len(model.bert.encoder.layer), variant)
    if plan != expected:
        raise ValueError(f"save_student: the model runs plan {plan}, which is not variant {variant!r} ({expected})")
    meta = {
        "variant": str(variant).lower(),
        "plan": [[i, s] for i, s in plan],
        "num_layers": len(model.bert.encoder.layer),
        "effective_layers": len(plan),
        "num_labels": model.num_labels,
        "num_parameters": count_parameters(model),
        "extra": dict(extra_meta or {}),
    }
    return write_student_dir(model, out_dir, variant, meta, tokenizer, label_names)  # atomically (student_files)


def load_student(out_dir: str | os.PathLike) -> BertForSequenceClassification:
    """Reload a directory written by `save_student`: weights, head and plan; `model.student_meta` = student.json."""
    meta = read_student_meta(out_dir)
    model = load_pretrained(out_dir, num_labels=int(meta["num_labels"]), model_type=model_type_of(meta["variant"]))
    if model.load_report.newly_initialized:
        raise ValueError(f"load_student: {out_dir} has no task head of shape "
                         f"({meta['num_labels']}, {model.config.hidden_size})")
    check_stored_layers("load_student", out_dir, model, int(meta["num_layers"]))
    apply_plan(model, meta["variant"])
    model.student_meta = meta
    return model


__all__ = ["build_student", "save_student", "load_student", "effective_layers", "count_parameters", "reset_head",
           "HEAD_INIT_STD"]
