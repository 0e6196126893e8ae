"""`make reproduce TASK=<task>`: the paper's comparison on one GLUE task, end to end, with an honest results table.

    teacher   fine-tune the teacher, cache its train/dev outputs (logits, per-layer [CLS])      runs/<task>/teacher/
    students  for each method and seed (pea_kd.methods):                                runs/<task>/<method>/seed<k>/
                FT         original student, CE only
                KD         original student, alpha T^2 KL + (1 - alpha) CE
                PKD        original student, KD + beta * patient [CLS] loss
                SPS + PKD  SPS student (2L effective layers), KD + PKD
                PTP + PKD  PTP stage first (runs/<task>/ptp-original/seed<k>/), then PKD from its encoder
                Pea-KD     PTP stage on the SPS student, then SPS + KD + PKD from its encoder
              --beyond-paper adds three rows that are not the paper's (pea_kd.methods.BEYOND_PAPER, marked †): KD + DA,
              Pea-KD + DA, Pea-KD + DA + hidden; the teacher labels the augmented set once, after its cache
    report    results.md, results.json, results.png (bar chart), curves.png (dev metric during training); next to
              the teacher, the majority class of train scored on dev (report.majority_baseline), and each seed's values

Every stage runs through the trainer with resume=True, so an interrupted `make reproduce` picks up where it stopped
(with the same settings only: pea_kd.identity; docs/runs_and_storage.md).

Headline numbers are *final* dev scores (end of training, no selection), as mean ± std over seeds. The best dev
score seen during training is a separate, labelled column: selecting and scoring on the same dev set is optimistic,
and it is what the authors report.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from bert_mini import load_tokenizer

from . import __version__, distributed
from .augment import AugmentConfig, augmented_teacher_rows, load_augmented
from .defaults import default_lr
from .distill import distill_student, teacher_layers_needed
from .feature_cache import load_features
from .glue import get_task, load_examples
from .glue_files import PROJECT_ROOT
from .methods import ALL_METHODS, METHODS, Method
from .parallel import in_fresh_process
from .ptp_stage import ptp_encoder_dir, run_ptp
from .report import majority_baseline, summarize, write_report
from .reproduce_setup import smoke_data_dir  # noqa: F401  (notebooks 06-08 import it from here)
from .reproduce_setup import applicable_methods, check_settings, prepare_data, stage_train_config
from .reproduce_runs import StageRunner, run_record, run_shared, stage_dirs, stage_finished, teacher_record
from .teacher import ensure_teacher_outputs, finetune_teacher, teacher_model_dir
from .trainer import TrainResult

log = logging.getLogger(__name__)


# Teacher recipes chosen by `python -m pea_kd teacher-search` (held-out part of train, dev never read), keyed by
# (teacher, task). A task without an entry uses the plain recipe: `lr`, 3 epochs. Numbers:
# docs/results.md, "RTE: a teacher recipe chosen on held-out training data".
TEACHER_RECIPES: dict[tuple[str, str], dict] = {
    ("minilm-l6", "RTE"): {"lr": 1e-4, "epochs": 3},  # held-out acc 60.2 vs 58.2 (5e-5, 3), 59.2, 58.2 (6 epochs)
}


@dataclass
class ReproduceConfig:
    """Settings of one reproduction. Defaults are the documented CPU recipe (README, "Results")."""

    task: str = "mrpc"
    teacher: str = "minilm-l6"
    student_layers: int = 3
    seeds: tuple = (0, 1, 2)
    methods: tuple = tuple(m.slug for m in METHODS)
    teacher_epochs: Optional[int] = None  # None: TEACHER_RECIPES, else 3
    student_epochs: int = 3
    ptp_epochs: int = 2
    lr: Optional[float] = None  # students and PTP; None = default_lr(teacher): 5e-5 for MiniLM, 2e-5 for bert-base
    teacher_lr: Optional[float] = None  # None: TEACHER_RECIPES, else lr
    batch_size: int = 32
    max_length: int = 128
    alpha: float = 0.7
    temperature: float = 10.0
    beta: float = 100.0
    eval_every: int = 0
    jobs: int = 1  # training processes at a time (resolve_jobs)
    smoke: bool = False
    smoke_examples: int = 64
    out_root: str = str(PROJECT_ROOT / "runs")
    data_dir: Optional[str] = None
    device: str = "auto"
    amp: str = "auto"  # runtime.resolve_amp: bf16 autocast where the device has native bf16, else fp32 (fp16 on CUDA)
    progress: Optional[bool] = None
    beyond_paper: bool = False  # add the rows beyond the paper (methods.BEYOND_PAPER)
    augment_variants: int = 8  # V, variants per training example (augment.AugmentConfig)
    augment_rate: float = 0.4  # r, probability of replacing a word
    augment_neighbours: int = 15  # K, candidates per word
    augment_epochs: int = 1  # epochs of the final stage on originals + variants: (1 + V) x the data each

    def __post_init__(self):
        self.methods = applicable_methods(self.methods, self.task, self.beyond_paper)  # PTP: classification only
        if not self.seeds or not self.methods:
            raise ValueError("reproduce needs at least one seed and one method")
        if self.lr is None:
            self.lr = default_lr(self.teacher)
        recipe = TEACHER_RECIPES.get((str(self.teacher), get_task(self.task).name), {})
        if self.teacher_lr is None:  # None only: a value given, even 0, is checked below, never replaced
            self.teacher_lr = recipe.get("lr", self.lr)
        if self.teacher_epochs is None:
            self.teacher_epochs = recipe.get("epochs", 3)
        if self.smoke:  # every stage, tiny: a few dozen examples, one short epoch, one seed
            self.seeds = self.seeds[:1]
            self.teacher_epochs = self.student_epochs = self.ptp_epochs = self.augment_epochs = 1
            self.augment_variants = min(self.augment_variants, 2)
        check_settings(self)  # every setting a stage would refuse, refused now (reproduce_setup)

    def augment_config(self) -> AugmentConfig:
        """The augmentation of the DA rows (one set for every seed and student)."""
        return AugmentConfig(rate=self.augment_rate, variants=self.augment_variants,
                             neighbours=self.augment_neighbours)

    def selected(self) -> list[Method]:
        """The methods of this reproduction, in table order."""
        return [m for m in ALL_METHODS if m.slug in self.methods]

    @property
    def run_root(self) -> Path:
        """<out_root>/<task>/ (<task>-smoke/ for smoke runs, so they never mix with real results)."""
        return Path(self.out_root) / (get_task(self.task).name.lower() + ("-smoke" if self.smoke else ""))


def run_all(cfg: ReproduceConfig) -> dict:
    """Run (or resume) every stage and return the results dict written to results.json.

    The teacher first, then the (method, seed) students, seed-major, each in a fresh worker process, at most cfg.jobs
    at a time (reproduce_runs.StageRunner). Students only read the teacher's cache, so they are independent of
    one another. results.json lists runs in table order whatever the order they finished in.
    """
    started = time.perf_counter()
    root = cfg.run_root
    root.mkdir(parents=True, exist_ok=True)
    data_dir = prepare_data(cfg, root)  # the task downloaded when missing; smoke runs: its first rows
    teacher_dir = root / "teacher"
    spec = get_task(cfg.task)
    majority = majority_baseline(spec, [e.label for e in load_examples(spec, "train", data_dir)],
                                 [e.label for e in load_examples(spec, spec.dev_split, data_dir)])
    units = [(seed, m) for seed in cfg.seeds for m in cfg.selected()]  # seed-major table order
    order = {(seed, m.name): i for i, (seed, m) in enumerate(units)}
    stages = StageRunner(cfg, units, teacher_dir, data_dir)  # worker processes (--jobs), devices, the progress view
    cfg = stages.cfg
    runs = []

    def report(teacher, cache_seconds):
        runs.sort(key=lambda r: order[(r["seed"], r["method"])])
        results = {
            "task": spec.name, "config": dataclasses.asdict(cfg), "version": __version__,
            "teacher": teacher_record(teacher, cache_seconds), "majority": majority, "runs": runs,
            **({"augment": augment} if augment else {}),
            "summary": summarize(runs, spec.metrics),
            "environment": stages.environment(teacher, runs),
            "complete": len(runs) == len(units),
            "wall_seconds_this_invocation": time.perf_counter() - started,
            "progress": stages.progress_summary(),  # the plan's and the ETA's errors, when complete
        }
        if distributed.is_main():  # under torchrun: rank 0 writes it
            write_report(results, root)  # after every run, so a partial table is always on disk
        return results

    with stages:
        teacher, cache_seconds = stages.run_teacher(_teacher_stage, teacher_dir, data_dir)
        augment = augmented_set(cfg, teacher_dir, data_dir)  # made by the teacher stage: read back, with its time
        for finished in stages.run_students(_student_stage, teacher_dir, data_dir):
            runs.extend(finished)
            results = report(teacher, cache_seconds)
    if stages.in_workers:  # the workers have exited: their peak memory is known now
        results = report(teacher, cache_seconds)
    stages.finish(results["progress"])
    return results


def _teacher_stage(cfg: ReproduceConfig, teacher_dir: Path, data_dir,
                   threads: int) -> tuple[TrainResult, Optional[float]]:
    """Fine-tune (or reuse) the teacher, then compute (or validate) its cached outputs; returns (result, cache secs).

    Nothing else runs meanwhile, so the stage uses all `threads`, even inside a 1-thread worker.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        log.info("teacher: fine-tuning %s on %s -> %s", cfg.teacher, cfg.task, teacher_dir)
        teacher = finetune_teacher(cfg.task, out_dir=teacher_dir, model_name=cfg.teacher, max_length=cfg.max_length,
                                   config=stage_train_config(cfg, cfg.teacher_epochs, cfg.teacher_lr, 0),
                                   data_dir=data_dir, resume=True)
        # one cache for every student: the union of their layer maps (every layer only if a loss may read any)
        students = [(m.loss, cfg.student_layers, m.variant) for m in cfg.selected()]
        cache = ensure_teacher_outputs(teacher_dir, cfg.task, ("train", "dev"), cfg.max_length, data_dir,
                                       device=cfg.device, layers=teacher_layers_needed(teacher_dir, students))
        augmented_set(cfg, teacher_dir, data_dir, cache["layers"])  # the DA rows' data, labelled once for all
        return teacher, cache.get("seconds")  # the time computing it took, also when reused (None: not recorded)
    finally:
        torch.set_num_threads(before)


def augmented_set(cfg: ReproduceConfig, teacher_dir: Path, data_dir, layers=()) -> Optional[dict]:
    """Build (or read back) the augmented training set and the teacher's outputs on it (the [CLS] `layers` the
    teacher cache holds, so the students' joined rows find theirs), when a DA row is selected; what results.json
    records of it: the settings, its size and the seconds the teacher took to label it."""
    if not any(m.augment for m in cfg.selected()):
        return None
    tokenizer = load_tokenizer(teacher_model_dir(teacher_dir))
    train = load_features(cfg.task, "train", tokenizer, cfg.max_length, data_dir)
    augmented = load_augmented(get_task(cfg.task).name, train, teacher_model_dir(teacher_dir), tokenizer.vocab,
                               cfg.augment_config())
    _, seconds = augmented_teacher_rows(teacher_dir, cfg.task, augmented, layers, cfg.max_length, cfg.device)
    return {**dataclasses.asdict(cfg.augment_config()), "epochs": cfg.augment_epochs, "examples": len(augmented),
            "teacher_seconds": seconds}


def _student_stage(cfg: ReproduceConfig, method: Method, seed: int, teacher_dir: Path, data_dir) -> dict:
    reused = stage_finished(cfg.run_root, method, seed)  # before this worker: its cost is read back, not measured
    result, ptp_result = train_method(cfg, method, seed, teacher_dir, data_dir)
    return run_record(method, seed, result, ptp_result, reused)


def train_method(cfg: ReproduceConfig, method: Method, seed: int, teacher_dir: Path, data_dir,
                 root: Optional[Path] = None) -> tuple[TrainResult, Optional[TrainResult]]:
    """One student of the table: the PTP stage first when the method uses it, then distillation from the cache."""
    *ptp_dirs, run_dir = stage_dirs(root or cfg.run_root, method, seed)
    ptp_result, init_from = None, None
    if method.ptp:
        ptp_dir = ptp_dirs[0]
        log.info("%s seed %d: PTP stage -> %s", method.name, seed, ptp_dir)
        ptp_result = run_shared(ptp_dir, in_fresh_process, run_ptp, cfg.task, out_dir=ptp_dir,  # once per seed,
                                teacher_dir=teacher_dir,  # in a process of its own (parallel.in_fresh_process)
                                student_model=cfg.teacher, num_layers=cfg.student_layers, variant=method.variant,
                                config=stage_train_config(cfg, cfg.ptp_epochs, cfg.lr, seed),
                                max_length=cfg.max_length, data_dir=data_dir, resume=True)
        init_from = ptp_encoder_dir(ptp_dir)
    log.info("%s seed %d: distillation -> %s", method.name, seed, run_dir)
    epochs = cfg.augment_epochs if method.augment else cfg.student_epochs  # DA rows: --augment-epochs on originals + variants
    result = distill_student(cfg.task, out_dir=run_dir, teacher_dir=teacher_dir if method.loss != "ce" else None,
                             student_model=cfg.teacher, num_layers=cfg.student_layers, variant=method.variant,
                             loss=method.loss, alpha=cfg.alpha, temperature=cfg.temperature, beta=cfg.beta,
                             init_from=init_from, max_length=cfg.max_length, data_dir=data_dir,
                             config=stage_train_config(cfg, epochs, cfg.lr, seed), resume=True,
                             augment=cfg.augment_config() if method.augment else None)
    return result, ptp_result
