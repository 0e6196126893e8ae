"""The PTP training stage: teach the student the teacher's 4-way PTP labels before distillation (docs/method.md#ptp).

    z_t      = cached teacher logits on the train split (the teacher is not run here)
    y_ptp    = build_ptp_labels(z_t, y, t1, t2)               # 4 classes: correct/wrong x confident/unconfident
    student  = L pre-trained layers, SPS plan, new 4-way head
    L        = CE(student(x), y_ptp)                          # plain cross-entropy, alpha = 0
    select   = lowest held-out PTP loss                        # -> out_dir/best/, the encoder handed to KD

Held-out data: a seeded `holdout` fraction of the *train* split is kept out of PTP training and labelled with the
thresholds fitted on the rest. Selection therefore uses a loss really computed on examples the student did not train
on (the authors' C1/C2 code compared a stale training-batch loss), and never touches the dev set that KD is scored on.
The teacher did see those examples when it was fine-tuned, so they look like the PTP training data: mostly correct.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from bert_mini import load_tokenizer

from .feature_cache import load_features
from .features import split_holdout
from .glue import get_task
from .input_checks import check_threshold
from .ptp import PTP_CLASSES, build_ptp_labels, build_ptp_student
from .ptp_report import format_histogram
from .students import save_student
from .teacher import ensure_teacher_outputs
from .runtime import set_seed
from .trainer import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

PTP_HOLDOUT = 0.1  # default fraction of train held out to select the PTP encoder


def ptp_encoder_dir(out_dir) -> Path:
    """Where a PTP run keeps the encoder selected on held-out PTP loss (the `--init-from` of the KD stage)."""
    return Path(out_dir) / "best"


def ptp_accuracy(predictions, labels) -> dict:
    """Metric of the 4-way PTP task (the trainer adds the held-out loss, which selects the encoder)."""
    return {"acc": float((np.asarray(predictions) == np.asarray(labels)).mean())}


def run_ptp(task, *, out_dir, teacher_dir, student_model: str = "minilm-l6", num_layers: int = 3,
            variant: str = "sps", t1: Optional[float] = None, t2: Optional[float] = None, holdout: float = PTP_HOLDOUT,
            config: Optional[TrainConfig] = None, max_length: int = 128, data_dir=None,
            max_train_examples: Optional[int] = None, teacher_checkpoint: str = "final", resume: bool = False,
            overwrite: bool = False) -> TrainResult:
    """Train a `variant` student on PTP labels; out_dir/best/ holds the encoder with the lowest held-out PTP loss.

    t1, t2: thresholds for correct / wrong predictions; None = medians of the teacher's confidence (authors' rule).
    max_train_examples: keep the first N training examples (and their teacher rows) before the held-out split.
    """
    spec = get_task(task)
    if spec.is_regression:
        raise ValueError(f"PTP is defined for classification tasks; {spec.name} is a regression task")
    check_threshold("t1", t1)  # refused before the teacher cache, which may take long
    check_threshold("t2", t2)
    config = dataclasses.replace(config or TrainConfig(), select="loss", keep_best=True)
    tokenizer = load_tokenizer(student_model)
    data = load_features(spec, "train", tokenizer, max_length, data_dir).head(max_train_examples)
    cache = ensure_teacher_outputs(teacher_dir, spec, ("train",), max_length, data_dir, teacher_checkpoint,
                                   config.device, layers=())  # logits and labels: any cache serves
    cache = {k: v[:len(data)] for k, v in cache["splits"]["train"].items() if k in ("logits", "labels")}  # kept rows
    fit_idx, held_idx = split_holdout(len(data), holdout, config.seed)
    fit = build_ptp_labels(cache["logits"][fit_idx], cache["labels"][fit_idx], t1, t2)
    held = build_ptp_labels(cache["logits"][held_idx], cache["labels"][held_idx], fit.t1, fit.t2)
    log.info("PTP labels (fit part of train):\n%s", format_histogram(fit))
    ptp_train = data.subset(fit_idx).with_labels(fit.labels.numpy().astype(np.int64))
    ptp_held = data.subset(held_idx).with_labels(held.labels.numpy().astype(np.int64))

    set_seed(config.seed)  # the 4-way head's initial weights depend on the seed only
    model = build_ptp_student(student_model, num_layers, variant)
    ptp_meta = {"stage": "ptp", "task": spec.name, "t1": fit.t1, "t2": fit.t2,
                "histogram_fit": fit.histogram, "histogram_heldout": held.histogram}

    def save_fn(m, path):
        save_student(m, path, variant, tokenizer=tokenizer, label_names=PTP_CLASSES, extra_meta=ptp_meta)

    meta = {**ptp_meta, "teacher_dir": str(teacher_dir), "student_model": str(student_model),
            "num_layers": num_layers, "variant": variant, "holdout": holdout, "max_length": max_length,
            "max_train_examples": max_train_examples,
            "train_examples": len(ptp_train), "heldout_examples": len(ptp_held), "classes": list(PTP_CLASSES)}
    return train(model, ptp_train, ptp_held, task=spec, out_dir=out_dir, config=config, loss="ce",
                 metrics_fn=ptp_accuracy, save_fn=save_fn, resume=resume, overwrite=overwrite, meta=meta)


__all__ = ["PTP_HOLDOUT", "ptp_encoder_dir", "ptp_accuracy", "run_ptp"]
