"""The training loop's checks: its settings and inputs refused before any work, a non-finite loss stopped at once.

Machinery to skip on a first reading of pea_kd.trainer, which calls each of these by one line.
"""
from __future__ import annotations

import math
from . import distributed
from .glue import get_task
from .runtime import resolve_device


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite. The run stops; checkpoint.pt still holds the last good state."""


def check_train_config(config) -> None:
    """Refuse a TrainConfig with an impossible setting, with a one-line error naming it."""
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if int(getattr(config, name)) < 1:
            raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(config, name)!r}")
    if not (config.lr > 0 and 0 <= config.warmup < 1 and config.weight_decay >= 0 and config.max_grad_norm >= 0):
        raise ValueError(f"TrainConfig: need lr > 0, 0 <= warmup < 1, weight_decay >= 0, max_grad_norm >= 0; "
                         f"got lr={config.lr}, warmup={config.warmup}, weight_decay={config.weight_decay}, "
                         f"max_grad_norm={config.max_grad_norm}")
    if config.eval_every < 0 or (config.checkpoint_every or 0) < 0 or config.seed < 0:
        raise ValueError("TrainConfig: eval_every, checkpoint_every and seed must be >= 0")
    if config.amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"TrainConfig: amp must be auto, bf16, fp16 or off, got {config.amp!r}")
    # an unknown or absent device is refused here, before any work, and so is MPS under torchrun
    distributed.check_device(resolve_device(config.device))


def check_train_inputs(config, task, metrics_fn, train_data, dev_data) -> None:
    """Refuse a `select` that is not a metric of the task, and features without labels."""
    if config.select not in ("auto", "loss") and metrics_fn is None and config.select not in get_task(task).metrics:
        raise ValueError(f"train: select={config.select!r} is not a metric of {get_task(task).name}; "
                         f"choose loss or one of {', '.join(get_task(task).metrics)}")
    if train_data.labels is None or dev_data.labels is None:
        raise ValueError("train: train and dev features need labels")


def selection_key(select: str, metrics: dict, task, by_metrics_fn: bool) -> str:
    """The record field that picks best_dev_*: "dev_loss" (lower is better) or a metric (higher is better).

    select "loss" -> "dev_loss"; "auto" -> the task's primary metric (the first key of a metrics_fn's dict);
    a metric name -> itself, refused when the dev metrics lack it."""
    if select == "loss":
        return "dev_loss"
    if select == "auto":
        return next(iter(metrics)) if by_metrics_fn else get_task(task).primary_metric
    if select not in metrics:
        raise ValueError(f"train: select={select!r} is not a dev metric; available: loss, {', '.join(metrics)}")
    return select


def stop_if_not_finite(value: float, step: int, where: str, checkpoint) -> None:
    """Raise NonFiniteLossError when the loss `value` of global step `step` is NaN or infinite (before the weights
    change), naming the batch and whether `checkpoint` (a Path) holds the last good state."""
    if math.isfinite(value):
        return
    kept = checkpoint if checkpoint.is_file() else "no checkpoint"
    raise NonFiniteLossError(f"loss is {value} at global step {step} ({where}); stopped. "
                             f"{kept} holds the last good state; try a lower --lr or check the data")
