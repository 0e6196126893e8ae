"""Distil a student from the cached teacher: the final stage of Pea-KD (docs/method.md#final-stage-loss).

    student  = build_student(pre-trained checkpoint | PTP encoder, L layers, SPS variant), new task head
    teacher  = teacher_outputs.pt rows (logits z_t, [CLS] states h_t): the teacher model is never run here
    L        = loss spec, e.g. "kd+pkd":  alpha T^2 KL(p_t || p_s) + (1 - alpha) CE(z_s, y)
                                         + beta MSE(norm(h_s[CLS]), norm(h_t[CLS])) over pkd_layer_map(L_t, L_s)
    -> out_dir/final/ (save_student layout, student.json), result.json, log.jsonl

"ce" needs no teacher at all (plain fine-tuning of the student: the FT baseline).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

from bert_mini import BertConfig, load_pretrained, load_tokenizer

from .augment import with_augmented
from .feature_cache import load_features
from .glue import get_task
from .losses import LossConfig, build_loss, pkd_layer_map
from .sps import make_plan
from .students import build_student, effective_layers, save_student
from .teacher import ensure_teacher_outputs, teacher_model_dir
from .teacher_rows import TeacherRows
from .runtime import set_seed
from .trainer import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)
TEACHER_FIELDS = ("teacher_logits", "teacher_cls_hidden", "teacher_attentions", "teacher_hidden_states")
LAYER_FIELDS = frozenset({"student_hidden_states", "teacher_cls_hidden"})  # losses that match [CLS] states by layer


def loss_requires(spec: str) -> frozenset:
    """The LossInputs fields a loss spec reads (built with placeholder sizes; only `requires` is used)."""
    return build_loss(spec, student_hidden=8, teacher_hidden=8).requires


def teacher_layers_needed(teacher_dir, runs, which: str = "final") -> tuple[int, ...]:
    """The teacher layers whose [CLS] vectors the distillation `runs`, [(loss, num_layers, variant), ...], read
    together: the union of their PKD layer maps (pkd_layer_map(L_t, effective layers)), every layer 0..L_t when a loss
    may read any (LossModule.teacher_layers_read). What the teacher cache has to hold for all of them."""
    num_teacher_layers = BertConfig.from_json(teacher_model_dir(teacher_dir, which) / "config.json").num_hidden_layers
    needed = set()
    for loss, num_layers, variant in runs:
        layer_map = pkd_layer_map(num_teacher_layers, len(make_plan(num_layers, variant)))
        needed.update(build_loss(loss, student_hidden=8, teacher_hidden=8).teacher_layers_read(layer_map,
                                                                                              num_teacher_layers))
    return tuple(sorted(needed))


def check_distill_args(loss: str, num_layers: int, variant: str, teacher_dir) -> None:
    """Refuse impossible combinations with a one-line ValueError (the CLI turns it into a usage error)."""
    requires = loss_requires(loss)
    plan = make_plan(num_layers, variant)  # e.g. sps6 with 3 layers
    if teacher_dir is None and any(f in requires for f in TEACHER_FIELDS):
        raise ValueError(f"loss {loss!r} distils from a teacher: pass a teacher directory (--teacher-dir)")
    if LAYER_FIELDS <= requires and len(plan) < 2:
        raise ValueError(f"loss {loss!r} matches intermediate layers, but a {num_layers}-layer {variant!r} student "
                         "has 1 effective layer and nothing to match (use --loss kd)")


def distill_student(task, *, out_dir, teacher_dir=None, student_model: str = "minilm-l6", num_layers: int = 3,
                    variant: str = "original", loss: str = "kd+pkd", alpha: float = 0.7, temperature: float = 10.0,
                    beta: float = 100.0, kl_reduction: str = "batchmean", loss_weights: Optional[dict] = None,
                    init_from=None, config: Optional[TrainConfig] = None, max_length: int = 128, data_dir=None,
                    max_train_examples: Optional[int] = None, teacher_checkpoint: str = "final",
                    resume: bool = False, overwrite: bool = False, augment=None) -> TrainResult:
    """Train an L-layer `variant` student on `task` with `loss`, reading the teacher's cached outputs only.

    init_from: a PTP run's saved student (save_student dir) whose encoder replaces the pre-trained one (Pea-KD).
    max_train_examples keeps the first N training examples (and their teacher rows), for smoke runs.
    augment: an augment.AugmentConfig: train on the originals and their teacher-labelled variants (beyond the paper).
    """
    spec = get_task(task)
    config = config or TrainConfig()
    check_distill_args(loss, num_layers, variant, teacher_dir)
    loss_config = LossConfig(alpha=alpha, temperature=temperature, beta=beta, kl_reduction=kl_reduction,
                             is_regression=spec.is_regression, weights=loss_weights or {})  # refused before any work
    requires = loss_requires(loss)
    tokenizer = load_tokenizer(student_model)
    train_data = load_features(spec, "train", tokenizer, max_length, data_dir).head(max_train_examples)
    dev_data = load_features(spec, spec.dev_split, tokenizer, max_length, data_dir)
    teacher, live_teacher, teacher_layers = None, None, None
    if teacher_dir is not None and any(f in requires for f in TEACHER_FIELDS):
        layers = teacher_layers_needed(teacher_dir, [(loss, num_layers, variant)], teacher_checkpoint)
        cache = ensure_teacher_outputs(teacher_dir, spec, ("train", "dev"), max_length, data_dir, teacher_checkpoint,
                                       config.device, layers=layers)  # only the layers this loss reads
        if cache["tokenizer"] != tokenizer.fingerprint:
            log.warning("student tokenizer %s differs from the teacher's %s: the teacher saw other token ids",
                        tokenizer.fingerprint, cache["tokenizer"])
        # the first n examples were kept: teacher rows 0..n-1 stay aligned
        teacher = TeacherRows.from_cache(cache, "train").head(len(train_data))
        teacher_layers = cache["num_layers"]
        if augment is not None:  # originals, then their variants: the teacher's rows on them computed once
            train_data, teacher = with_augmented(spec, teacher_dir, train_data, teacher, tokenizer, augment,
                                                 max_length, config.device, teacher_checkpoint)
        if requires & {"teacher_attentions", "teacher_hidden_states"}:  # not in the cache: a live teacher
            live_teacher = load_pretrained(teacher_model_dir(teacher_dir, teacher_checkpoint),
                                           num_labels=spec.num_labels)
    elif augment is not None:
        raise ValueError(f"augment: loss {loss!r} reads no teacher, which labels the augmented examples")
    set_seed(config.seed)  # the new task head's initial weights depend on the seed only
    student = build_student(student_model, num_layers, spec.num_labels, variant, encoder_from=init_from)
    layer_map = pkd_layer_map(teacher_layers, effective_layers(student)) if teacher_layers else []
    loss_config = dataclasses.replace(loss_config, layer_map=layer_map)
    meta = {"stage": "distill", "task": spec.name, "teacher_dir": None if teacher_dir is None else str(teacher_dir),
            "student_model": str(student_model), "num_layers": num_layers, "variant": variant,
            "effective_layers": effective_layers(student), "loss": loss, "alpha": alpha, "temperature": temperature,
            "beta": beta, "kl_reduction": kl_reduction, "layer_map": layer_map,
            "init_from": init_from and str(init_from),
            "max_length": max_length, "train_examples": len(train_data), "dev_examples": len(dev_data),
            **({"augment": dataclasses.asdict(augment)} if augment is not None else {})}

    def save_fn(model, path):
        save_student(model, path, variant, tokenizer=tokenizer, label_names=spec.labels,
                     extra_meta={"stage": "distill", "task": spec.name, "loss": loss})
    return train(student, train_data, dev_data, task=spec, out_dir=out_dir, config=config, loss=loss,
                 loss_config=loss_config, teacher=teacher, live_teacher=live_teacher, save_fn=save_fn, resume=resume,
                 overwrite=overwrite, meta=meta)
