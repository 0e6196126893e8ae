"""`make reproduce TASK=<task>`: the paper's comparison on one GLUE task, end to end, with an honest results table.

    teacher   fine-tune the teacher, cache its train/dev outputs (logits, per-layer [CLS])      runs/<task>/teacher/
    students  for each method and seed (pea_kd.methods):                                runs/<task>/<method>/seed<k>/
                FT         original student, CE only
                KD         original student, alpha T^2 KL + (1 - alpha) CE
                PKD        original student, KD + beta * patient [CLS] loss
                SPS + PKD  SPS student (2L effective layers), KD + PKD
                PTP + PKD  PTP stage first (runs/<task>/ptp-original/seed<k>/), then PKD from its encoder
                Pea-KD     PTP stage on the SPS student, then SPS + KD + PKD from its encoder
    report    results.md, results.json, results.png (bar chart), curves.png (dev metric during training); next to
              the teacher, the majority class of train scored on dev (report.majority_baseline), and each seed's values

Every stage runs through the trainer with resume=True: a finished stage returns its stored result instantly and an
interrupted one continues from its checkpoint, so an interrupted `make reproduce` picks up where it stopped. Reuse
needs the same settings (pea_kd.identity): rerun with other ones (--lr, --alpha, ...) and it stops with a one-line error
naming them instead of reporting old runs under new labels; give it another --out-root.

Headline numbers are *final* dev scores (end of training, no selection), as mean ± std over seeds. The best dev
score seen during training is a separate, labelled column: selecting and scoring on the same dev set is optimistic,
and it is what the authors report.
"""
from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from bert_mini import BertConfig, resolve_model_dir

from . import __version__, distributed
from .defaults import default_lr
from .distill import distill_student, teacher_layers_needed
from .glue import PROJECT_ROOT, get_task, load_examples, split_path
from .glue_download import ensure_task_data
from .losses import LossConfig
from .methods import METHODS, Method
from .ptp_stage import ptp_encoder_dir, run_ptp
from .report import majority_baseline, write_report
from .reproduce_runs import StageRunner, run_record, stage_dirs, teacher_record
from .runtime import resolve_device
from .sps import make_plan
from .storage import write_atomic
from .teacher import ensure_teacher_outputs, finetune_teacher
from .trainer import TrainConfig, TrainResult

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

    def __post_init__(self):
        unknown = sorted(set(self.methods) - {m.slug for m in METHODS})
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; expected some of {[m.slug for m in METHODS]}")
        ptp = [m.slug for m in METHODS if m.ptp and m.slug in self.methods]
        if ptp and get_task(self.task).is_regression:  # PTP's labels need a teacher that is right or wrong
            if self.methods != tuple(m.slug for m in METHODS):
                raise ValueError(f"{', '.join(ptp)}: PTP is defined for classification tasks; "
                                 f"{get_task(self.task).name} is a regression task")
            self.methods = tuple(m for m in self.methods if m not in ptp)  # the default: every method that applies
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
            self.teacher_epochs = self.student_epochs = self.ptp_epochs = 1
        self.check()

    def check(self) -> None:
        """Refuse (one-line ValueError) every setting a stage would refuse, before the teacher trains for hours."""
        for epochs, lr in ((self.teacher_epochs, self.teacher_lr), (self.student_epochs, self.lr),
                           (self.ptp_epochs, self.lr)):
            _train_config(self, epochs, lr, 0)  # TrainConfig's checks: epochs, lr, batch size, device
        LossConfig(alpha=self.alpha, temperature=self.temperature, beta=self.beta)
        teacher_layers = BertConfig.from_json(resolve_model_dir(self.teacher) / "config.json").num_hidden_layers
        if not 1 <= self.student_layers <= teacher_layers:
            raise ValueError(f"--student-layers {self.student_layers}: the student takes the bottom layers of the "
                             f"{teacher_layers}-layer teacher {self.teacher}, so 1..{teacher_layers}")
        for variant in {m.variant for m in METHODS if m.slug in self.methods}:
            make_plan(self.student_layers, variant)
        if self.jobs > 1 and resolve_device(self.device).type == "mps":
            raise ValueError(f"--jobs {self.jobs} on mps: the worker processes would share the Mac's one GPU and its "
                             "memory (not measured here); use --jobs 1, or --device cpu for CPU worker processes")
        if self.max_length < 2 or self.smoke_examples < 1:
            raise ValueError(f"--max-length must be >= 2 and smoke_examples >= 1, got {self.max_length}, "
                             f"{self.smoke_examples}")

    @property
    def run_root(self) -> Path:
        """<out_root>/<task>/ (<task>-smoke/ for smoke runs, so they never mix with real results)."""
        return Path(self.out_root) / (get_task(self.task).name.lower() + ("-smoke" if self.smoke else ""))


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


def _train_config(cfg: ReproduceConfig, epochs: int, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, batch_size=cfg.batch_size, seed=seed, eval_every=cfg.eval_every,
                       device=cfg.device, amp=cfg.amp, progress=cfg.progress)


def run_all(cfg: ReproduceConfig) -> dict:
    """Run (or resume) every stage and return the results dict written to results.json.

    The teacher first, then the (method, seed) students, seed-major, each in a fresh worker process, at most cfg.jobs
    at a time (reproduce_runs.StageRunner). Students only read the teacher's cache, so they are independent of
    one another. results.json lists runs in table order whatever the order they finished in.
    """
    started = time.perf_counter()
    root = cfg.run_root
    root.mkdir(parents=True, exist_ok=True)
    data_dir = cfg.data_dir
    with distributed.main_process_first():  # under torchrun: rank 0 fetches/writes the data, the others then read it
        if distributed.is_main():
            ensure_task_data(cfg.task, cfg.data_dir, progress=cfg.progress is not False)  # downloads a missing task
        if cfg.smoke:
            data_dir = smoke_data_dir(cfg.task, cfg.data_dir, root / "glue", cfg.smoke_examples) \
                if distributed.is_main() else root / "glue"
    teacher_dir = root / "teacher"
    spec = get_task(cfg.task)
    majority = majority_baseline(spec, [e.label for e in load_examples(spec, "train", data_dir)],
                                 [e.label for e in load_examples(spec, spec.dev_split, data_dir)])
    units = [(seed, m) for seed in cfg.seeds for m in METHODS if m.slug in cfg.methods]  # seed-major table order
    order = {(seed, m.name): i for i, (seed, m) in enumerate(units)}
    stages = StageRunner(cfg, units, teacher_dir, data_dir)  # worker processes (--jobs), devices, the progress view
    cfg = stages.cfg
    runs = []

    def report(teacher, cache_seconds):
        runs.sort(key=lambda r: order[(r["seed"], r["method"])])
        results = {
            "task": spec.name, "config": dataclasses.asdict(cfg), "version": __version__,
            "teacher": teacher_record(teacher, cache_seconds), "majority": majority, "runs": runs,
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
                                   config=_train_config(cfg, cfg.teacher_epochs, cfg.teacher_lr, 0),
                                   data_dir=data_dir, resume=True)
        # one cache for every student: the union of their layer maps (every layer only if a loss may read any)
        students = [(m.loss, cfg.student_layers, m.variant) for m in METHODS if m.slug in cfg.methods]
        cache = ensure_teacher_outputs(teacher_dir, cfg.task, ("train", "dev"), cfg.max_length, data_dir,
                                       device=cfg.device, layers=teacher_layers_needed(teacher_dir, students))
        return teacher, cache.get("seconds")  # the time computing it took, also when reused (None: not recorded)
    finally:
        torch.set_num_threads(before)


def _student_stage(cfg: ReproduceConfig, method: Method, seed: int, teacher_dir: Path, data_dir) -> dict:
    result, ptp_result = train_method(cfg, method, seed, teacher_dir, data_dir)
    return run_record(method, seed, result, ptp_result)


def train_method(cfg: ReproduceConfig, method: Method, seed: int, teacher_dir: Path, data_dir,
                 root: Optional[Path] = None) -> tuple[TrainResult, Optional[TrainResult]]:
    """One student of the table: the PTP stage first when the method uses it, then distillation from the cache."""
    *ptp_dirs, run_dir = stage_dirs(root or cfg.run_root, method, seed)
    ptp_result, init_from = None, None
    if method.ptp:
        ptp_dir = ptp_dirs[0]
        log.info("%s seed %d: PTP stage -> %s", method.name, seed, ptp_dir)
        ptp_result = run_ptp(cfg.task, out_dir=ptp_dir, teacher_dir=teacher_dir, student_model=cfg.teacher,
                             num_layers=cfg.student_layers, variant=method.variant,
                             config=_train_config(cfg, cfg.ptp_epochs, cfg.lr, seed),
                             max_length=cfg.max_length, data_dir=data_dir, resume=True)
        init_from = ptp_encoder_dir(ptp_dir)
    log.info("%s seed %d: distillation -> %s", method.name, seed, run_dir)
    result = distill_student(cfg.task, out_dir=run_dir, teacher_dir=teacher_dir if method.loss != "ce" else None,
                             student_model=cfg.teacher, num_layers=cfg.student_layers, variant=method.variant,
                             loss=method.loss, alpha=cfg.alpha, temperature=cfg.temperature, beta=cfg.beta,
                             init_from=init_from, max_length=cfg.max_length, data_dir=data_dir,
                             config=_train_config(cfg, cfg.student_epochs, cfg.lr, seed), resume=True)
    return result, ptp_result


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict], metrics: tuple) -> list[dict]:
    """One row per method: mean ± std of every final and best-dev metric over seeds (and, under "per_seed", the
    values of each seed, in %), parameters, depth, time."""
    rows = []
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        row = {"method": name, "slug": mine[0]["slug"], "seeds": [r["seed"] for r in mine],
               "parameters": mine[0]["parameters"], "effective_layers": mine[0]["effective_layers"],
               "seconds": mean_std([r["seconds"] for r in mine])}
        per_seed = {kind: {m: [100 * r[kind][m] for r in mine] for m in metrics} for kind in ("final", "best_dev")}
        for kind, values in per_seed.items():
            row[kind] = {m: mean_std(v) for m, v in values.items()}
        row["per_seed"] = per_seed  # in %, in the order of row["seeds"]: what the mean ± std summarises
        rows.append(row)
    return rows
