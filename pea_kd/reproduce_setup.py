"""The comparison's set-up, before any stage trains: its settings checked, each stage's TrainConfig, the task's data.

pea_kd.reproduce calls these by one line each: `applicable_methods` (known methods; PTP only on classification tasks),
`check_settings` (every setting a stage would refuse, refused before the teacher trains for hours),
`stage_train_config`, and `prepare_data` (a missing task downloaded; for smoke runs, `smoke_data_dir`).
Machinery: skip on a first reading.
"""
from __future__ import annotations

from pathlib import Path

from bert_mini import BertConfig, resolve_model_dir

from . import distributed
from .glue import get_task, split_path
from .glue_download import ensure_task_data
from .losses import LossConfig
from .methods import ALL_METHODS, BEYOND_PAPER, METHODS
from .runtime import resolve_device
from .sps import make_plan
from .storage import write_atomic
from .trainer import TrainConfig


def applicable_methods(methods: tuple, task, beyond_paper: bool = False) -> tuple:
    """`methods` (slugs), refused when one is unknown or none is left; `beyond_paper` adds the rows beyond the paper
    (methods.BEYOND_PAPER). On a regression task the PTP methods are dropped from the default (all methods) and
    refused when asked for: PTP's labels need a teacher that is right or wrong."""
    default = tuple(m.slug for m in (ALL_METHODS if beyond_paper else METHODS))
    if beyond_paper:
        methods = tuple(dict.fromkeys(tuple(methods) + tuple(m.slug for m in BEYOND_PAPER)))
    unknown = sorted(set(methods) - {m.slug for m in ALL_METHODS})
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {[m.slug for m in ALL_METHODS]}")
    ptp = [m.slug for m in ALL_METHODS if m.ptp and m.slug in methods]
    if ptp and get_task(task).is_regression:
        if methods != default:
            raise ValueError(f"{', '.join(ptp)}: PTP is defined for classification tasks; "
                             f"{get_task(task).name} is a regression task")
        methods = tuple(m for m in methods if m not in ptp)  # the default: every method that applies
    return methods


def stage_train_config(cfg, epochs: int, lr: float, seed: int) -> TrainConfig:
    """The TrainConfig of one stage of the comparison `cfg` (a ReproduceConfig)."""
    return TrainConfig(epochs=epochs, lr=lr, batch_size=cfg.batch_size, seed=seed, eval_every=cfg.eval_every,
                       device=cfg.device, amp=cfg.amp, progress=cfg.progress)


def check_settings(cfg) -> None:
    """Refuse (one-line ValueError) every setting of `cfg` a stage would refuse, before the teacher trains for hours."""
    for epochs, lr in ((cfg.teacher_epochs, cfg.teacher_lr), (cfg.student_epochs, cfg.lr), (cfg.ptp_epochs, cfg.lr)):
        stage_train_config(cfg, epochs, lr, 0)  # TrainConfig's checks: epochs, lr, batch size, device
    LossConfig(alpha=cfg.alpha, temperature=cfg.temperature, beta=cfg.beta)
    teacher_layers = BertConfig.from_json(resolve_model_dir(cfg.teacher) / "config.json").num_hidden_layers
    if not 1 <= cfg.student_layers <= teacher_layers:
        raise ValueError(f"--student-layers {cfg.student_layers}: the student takes the bottom layers of the "
                         f"{teacher_layers}-layer teacher {cfg.teacher}, so 1..{teacher_layers}")
    cfg.augment_config()  # AugmentConfig's checks
    if cfg.augment_epochs < 1:
        raise ValueError(f"--augment-epochs must be >= 1, got {cfg.augment_epochs}")
    for variant in {m.variant for m in ALL_METHODS if m.slug in cfg.methods}:
        make_plan(cfg.student_layers, variant)
    if cfg.jobs > 1 and resolve_device(cfg.device).type == "mps":
        raise ValueError(f"--jobs {cfg.jobs} on mps: the worker processes would share the Mac's one GPU and its "
                         "memory (not measured here); use --jobs 1, or --device cpu for CPU worker processes")
    if cfg.max_length < 2 or cfg.smoke_examples < 1:
        raise ValueError(f"--max-length must be >= 2 and smoke_examples >= 1, got {cfg.max_length}, "
                         f"{cfg.smoke_examples}")


def smoke_data_dir(task, data_dir, dest: Path, n: int) -> Path:
    """A GLUE directory holding the first n rows of the task's train and dev files (header kept), for smoke runs."""
    spec = get_task(task)
    out = dest / spec.directory
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", spec.dev_split):
        source = split_path(spec, split, data_dir)
        has_header = spec.files[spec.resolve_split(split)][1].header
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = lines[: n + int(has_header)]
        keep[-1] = keep[-1].rstrip("\r\n") + "\n"
        write_atomic(out / source.name, "".join(keep))
    return dest


def prepare_data(cfg, root: Path):
    """The GLUE directory the stages read: cfg.data_dir, with the task downloaded when missing; for a smoke run, a
    copy of its first rows under root/glue. Under torchrun rank 0 fetches and writes, the others then read."""
    data_dir = cfg.data_dir
    with distributed.main_process_first():
        if distributed.is_main():
            ensure_task_data(cfg.task, cfg.data_dir, progress=cfg.progress is not False)  # downloads a missing task
        if cfg.smoke:
            data_dir = smoke_data_dir(cfg.task, cfg.data_dir, root / "glue", cfg.smoke_examples) \
                if distributed.is_main() else root / "glue"
    return data_dir
