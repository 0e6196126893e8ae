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

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open

from bert_mini import BertConfig, resolve_model_dir

from . import __version__, distributed
from .budget import device_words, matmul_rates, reproduce_budget
from .defaults import default_lr
from .distill import distill_student, teacher_layers_needed
from .glue import PROJECT_ROOT, get_task, load_examples, split_path
from .glue_download import ensure_task_data
from .identity import RunMismatch
from .losses import LossConfig
from .methods import METHODS, Method
from .parallel import executor, is_sps, next_unit, peak_rss_mb, resolve_jobs, start_order, worker_devices
from .progress import ASSUMED_FRACTION, Eta, ReproduceProgress, Stage, stage_status
from .ptp_stage import ptp_encoder_dir, run_ptp
from .report import majority_baseline, write_report
from .runtime import precision_name, resolve_amp, resolve_device
from .sps import make_plan
from .teacher import CACHE_FILE, ensure_teacher_outputs, finetune_teacher
from .storage import write_atomic
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

    With cfg.jobs > 1 the stages run in that many worker processes, each with torch threads / jobs threads: the
    teacher first, then the (method, seed) students, seed-major, at most `jobs` at a time. Students only read the
    teacher's cache, so they are independent of one another. results.json lists runs in table order whatever the
    order they finished in.
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
    commit = code_commit()
    jobs, threads = resolve_jobs(cfg.jobs)
    if jobs > 1 and distributed.is_distributed():
        raise ValueError("reproduce: --jobs > 1 under torchrun; the torchrun processes already share every stage: "
                         "use --jobs 1 (the default)")
    units = [(seed, m) for seed in cfg.seeds for m in METHODS if m.slug in cfg.methods]  # seed-major table order
    order = {(seed, m.name): i for i, (seed, m) in enumerate(units)}
    queue = start_order(units)
    # the overall view (pea_kd.progress): rank 0 alone under torchrun
    progress = plan_progress(cfg, queue, jobs, teacher_dir, data_dir) if distributed.is_main() else None
    quiet_workers = False
    if jobs > 1:  # one bar per process would be unreadable: the workers train without bars, and under the overall
        cfg = dataclasses.replace(cfg, progress=False)  # bar they log warnings only (its log line says each stage)
        quiet_workers = progress is not None and progress.show_bar
        log.info("running %d training processes at a time, %d torch thread(s) each", jobs, threads)
    devices = worker_devices(jobs, cfg.device) if jobs > 1 else [cfg.device]  # CUDA: one GPU per worker slot
    if devices != [cfg.device] * jobs:
        log.info("worker devices (round-robin over %d visible GPUs): %s", torch.cuda.device_count(),
                 ", ".join(f"slot {i} -> {d}" for i, d in enumerate(devices)))
    free_slots = list(range(jobs))
    runs, running, slots = [], {}, {}  # running: future -> (seed, Method); slots: future -> worker slot

    def report(teacher, cache_seconds, peak_mb):
        runs.sort(key=lambda r: order[(r["seed"], r["method"])])
        results = {
            "task": get_task(cfg.task).name, "config": dataclasses.asdict(cfg), "version": __version__,
            "teacher": _teacher_record(teacher, cache_seconds), "majority": majority, "runs": runs,
            "summary": summarize(runs, get_task(cfg.task).metrics),
            "environment": {"code_commit": commit, "torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "cpu_count": os.cpu_count(), "jobs": jobs,
                            "torch_threads": threads, "device": teacher.meta.get("device"), "worker_devices": devices,
                            "data_parallel_processes": distributed.world_size(),
                            "precision": _precision([teacher.meta] + [r["result"]["meta"] for r in runs]),
                            "peak_rss_mb": peak_mb},
            "complete": len(runs) == len(units),
            "wall_seconds_this_invocation": time.perf_counter() - started,
            "progress": progress.summary() if progress else None,  # the plan's and the ETA's errors, when complete
        }
        if distributed.is_main():  # under torchrun: rank 0 writes it
            write_report(results, root)  # after every run, so a partial table is always on disk
        return results

    with executor(jobs, threads, logging.WARNING if quiet_workers else None) as pool, _fresh_start_hint(root), \
            progress or contextlib.nullcontext():
        if progress:
            progress.begin("teacher")
        teacher, cache_seconds = pool.submit(_teacher_stage, cfg, teacher_dir, data_dir, jobs * threads).result()
        if progress:
            progress.end("teacher")
        while queue or running:
            while len(running) < jobs:
                unit = next_unit(queue, sps_running=sum(is_sps(m) for _, m in running.values()), jobs=jobs)
                if unit is None:
                    break
                queue.remove(unit)
                slot = free_slots.pop(0)
                if devices[slot] != cfg.device:
                    log.info("%s seed %d: worker slot %d on %s", unit[1].name, unit[0], slot, devices[slot])
                if progress:
                    progress.begin(stage_name(*unit))
                future = pool.submit(_student_stage, dataclasses.replace(cfg, device=devices[slot]), unit[1], unit[0],
                                     teacher_dir, data_dir)
                running[future], slots[future] = unit, slot
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                unit = running.pop(future)
                free_slots.append(slots.pop(future))
                runs.append(future.result())  # a failed stage raises here and stops the rest
                if progress:
                    progress.end(stage_name(*unit))
            results = report(teacher, cache_seconds, peak_rss_mb())
    if jobs > 1:  # the workers have exited: their peak memory is known now
        results = report(teacher, cache_seconds, peak_rss_mb())
    if progress:
        progress.finish(results["progress"])
    return results


def code_commit() -> Optional[str]:
    """The git commit of the code that runs, with "+changes" when tracked files differ from it; None outside a git
    checkout (an installed package) or without git."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if changed else "")


def stage_name(seed: int, method: Method) -> str:
    """A student stage's name in the progress view: "<method> seed <k>"."""
    return f"{method.name} seed {seed}"


def stage_dirs(root: Path, method: Method, seed: int) -> list[Path]:
    """The run directories of one student: its PTP stage (when the method has one), then its distillation."""
    ptp = [root / f"ptp-{method.variant}" / f"seed{seed}"] if method.ptp else []
    return ptp + [root / method.slug / f"seed{seed}"]


def plan_progress(cfg: ReproduceConfig, queue: list[tuple], jobs: int, teacher_dir: Path,
                  data_dir) -> ReproduceProgress:
    """The overall progress view of run_all: the teacher, then the students in the order they start, each with its
    FLOPs (pea_kd.budget, on the data the stages read) and whether an earlier run already did it; R measured now in
    the run's precision."""
    rows = reproduce_budget(dataclasses.replace(cfg, data_dir=data_dir))
    by_method = {row.name: row for row in rows[2:]}
    stages = [_stage("teacher", rows[0].flops + rows[1].flops, stage_status([teacher_dir], [teacher_dir / CACHE_FILE]),
                     alone=True)]
    stages += [_stage(stage_name(seed, m), by_method[m.name].seed_flops[seed],
                      stage_status(stage_dirs(cfg.run_root, m, seed))) for seed, m in queue]
    device = resolve_device(cfg.device)
    precision = precision_name(resolve_amp(cfg.amp, device))
    ((size, gflops),) = matmul_rates(device, repeats=1, precisions=(precision,)).values()
    rate = {"precision": precision, "size": size, "gflops": gflops}
    eta = Eta(stages, 1 / (ASSUMED_FRACTION * rate["gflops"] * 1e9), jobs)
    return ReproduceProgress(eta, rate, device_words(device), bar=cfg.progress)


def _stage(name: str, flops: float, status: str, alone: bool = False) -> Stage:
    return Stage(name, flops, alone=alone, status="reused" if status == "reused" else "todo",
                 resumed=status == "resumed")


def _precision(metas: list[dict]) -> str:
    """The precision the stages trained in ("fp32", "bf16", ...); several joined by "+" if they differ."""
    return "+".join(sorted({m["precision"] for m in metas}))


@contextlib.contextmanager
def _fresh_start_hint(root: Path):
    """A stage directory holding a run with other settings stops the reproduction (nothing is reused or mixed):
    the one-line error says how to start fresh here, where there is no --overwrite."""
    try:
        yield
    except RunMismatch as err:
        raise RunMismatch(err.args[0], err.args[1], f"{root} holds runs made with other settings: delete it or "
                                                    "pass another --out-root") from None


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
    return _run_record(method, seed, result, ptp_result)


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


def _count_parameters(final_dir: Path) -> int:
    meta = json.loads((final_dir / "student.json").read_text(encoding="utf-8"))
    return int(meta["num_parameters"])


def _run_record(method: Method, seed: int, result: TrainResult, ptp: Optional[TrainResult]) -> dict:
    final_dir = Path(result.out_dir) / "final"
    seconds = result.seconds + (ptp.seconds if ptp is not None else 0.0)
    return {"method": method.name, "slug": method.slug, "seed": seed, "variant": method.variant, "loss": method.loss,
            "ptp": method.ptp, "final": result.final_metrics, "best_dev": result.best_dev_metrics,
            "best_dev_step": result.best_dev_step, "final_step": result.final_step,
            "parameters": _count_parameters(final_dir), "effective_layers": result.meta["effective_layers"],
            "seconds": seconds, "ptp_result": ptp.to_dict() if ptp else None, "result": result.to_dict()}


def _checkpoint_parameters(model_dir: Path) -> int:
    """Number of parameters stored in a checkpoint directory's model.safetensors (buffers excluded)."""
    with safe_open(model_dir / "model.safetensors", framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith("position_ids"))


def _teacher_record(teacher: TrainResult, cache_seconds: Optional[float]) -> dict:
    return {"final": teacher.final_metrics, "best_dev": teacher.best_dev_metrics,
            "best_dev_step": teacher.best_dev_step, "layers": teacher.meta["num_layers"],
            "parameters": _checkpoint_parameters(Path(teacher.out_dir) / "final"), "seconds": teacher.seconds,
            "cache_seconds": cache_seconds, "result": teacher.to_dict()}


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
