"""The defaults every entry point shares: hyper-parameters per stage, the learning rate, and the log format.

Default hyper-parameters (STAGE_DEFAULTS) follow the authors' code (docs/method.md#authors-settings): batch 32, max
length 128, warm-up 0.1, weight decay 0.01; epochs 3 (teacher), 6 (distillation: C2 runs its full 6-epoch schedule).
Learning rate: the authors use 2e-5 everywhere, for BERT-base (hidden size 768). Our default models are
MiniLM-L6-H384; compact BERTs are conventionally fine-tuned with larger rates (Turc et al. 2019 search
{3e-5, 5e-5, 1e-4} for small BERTs), so the learning rate defaults to 2e-5 for hidden size >= 768 and 5e-5 below.
Gradient clipping is global (clip_grad_norm_ 1.0), not per tensor as BertAdam's; the training data is shuffled.
"""
from __future__ import annotations

import logging
import sys

STAGE_DEFAULTS = {"teacher": {"epochs": 3, "batch_size": 32, "keep_best": True},  # best/ for --teacher-checkpoint best
                  "distill": {"epochs": 6, "batch_size": 32, "keep_best": False},
                  "ptp": {"epochs": 2, "batch_size": 32, "keep_best": True}}
SMALL_MODEL_LR, BERT_BASE_LR = 5e-5, 2e-5


def default_lr(model_name) -> float:
    """2e-5 (authors, BERT-base width) for hidden size >= 768, else 5e-5 (compact models, e.g. MiniLM-H384)."""
    from bert_mini import BertConfig, resolve_model_dir
    hidden = BertConfig.from_json(resolve_model_dir(model_name) / "config.json").hidden_size
    return BERT_BASE_LR if hidden >= 768 else SMALL_MODEL_LR


def configure_logging(level: int) -> None:
    """Log lines "HH:MM:SS logger: message" on stderr (stdout carries the JSON result); also used by workers."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
