"""The Pea-KD commands of `python -m pea_kd`: `ptp`, `pea-kd` (PTP then SPS + KD + PKD) and `reproduce`.

    python -m pea_kd ptp --task mrpc --teacher-dir runs/mrpc/teacher --variant sps    -> runs/mrpc/ptp-sps/seed0/
    python -m pea_kd pea-kd --task mrpc --teacher-dir runs/mrpc/teacher               -> runs/mrpc/pea-kd/seed0/
    python -m pea_kd reproduce --task mrpc [--seeds 0,1,2] [--smoke]                  -> runs/mrpc/results.md
    python -m pea_kd reproduce --task mrpc --estimate          -> FLOPs per stage, least time here (trains nothing)
    python -m pea_kd teacher-search --task rte --lrs 5e-5,1e-4 --epochs 3,6   -> runs/rte/teacher-search/search.md
    python -m pea_kd publish-results --task mrpc     runs/mrpc/results.json -> notebooks/results/mrpc_results.json
    python -m pea_kd download-glue --tasks mrpc,rte                -> $GLUE_DIR, else data/glue (make data TASK=...)
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from . import distributed, glue_download
from .cli import (add_amp_arg, add_data_args, add_device_arg, add_training_args, register_command, run_root,
                  train_config_from_args)
from .defaults import default_lr
from .ptp_stage import PTP_HOLDOUT
from .sps import VARIANTS


def _number_list(kind):
    """argparse type: a comma-separated list of positive `kind` values (seeds: non-negative integers)."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(s) for s in text.split(",") if s.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        if not values or min(values) < 0 or (kind is float and min(values) == 0):
            raise argparse.ArgumentTypeError(f"expected {'positive' if kind is float else 'non-negative'} "
                                             f"{kind.__name__}s, got {text!r}")
        return values
    return parse


_integers = _number_list(int)


def _add_student_args(p: argparse.ArgumentParser, default_variant: str) -> None:
    p.add_argument("--teacher-dir", required=True,
                   help="a finetune-teacher run directory (its cached outputs are used)")
    p.add_argument("--student-model", default="minilm-l6",
                   help="pre-trained checkpoint whose bottom layers start the student (default minilm-l6)")
    p.add_argument("--student-layers", type=int, default=3, help="real transformer layers L (default 3)")
    p.add_argument("--variant", default=default_variant, choices=VARIANTS,
                   help=f"student layer plan (default {default_variant}; sps6 needs 6 layers)")
    p.add_argument("--t1", type=float, default=None, help="PTP confidence threshold for correct predictions "
                                                          "(default: median over the teacher's correct ones)")
    p.add_argument("--t2", type=float, default=None, help="PTP threshold for wrong predictions (default: median)")
    p.add_argument("--holdout", type=float, default=PTP_HOLDOUT,
                   help=f"fraction of train held out to select the PTP encoder by its loss (default {PTP_HOLDOUT})")


def _check_plan(args, parser) -> None:
    from .sps import make_plan
    try:
        make_plan(args.student_layers, args.variant)
    except ValueError as err:
        parser.error(str(err))


# ---------------------------------------------------------------- ptp

def _configure_ptp(p):
    add_data_args(p)
    _add_student_args(p, "sps")
    add_training_args(p, "ptp")


def _run_ptp(args, parser):
    from .ptp_stage import run_ptp
    _check_plan(args, parser)
    out_dir = args.out_dir or run_root(args.task) / f"ptp-{args.variant}" / f"seed{args.seed}"
    return run_ptp(args.task, out_dir=out_dir, teacher_dir=args.teacher_dir, student_model=args.student_model,
                   num_layers=args.student_layers, variant=args.variant, t1=args.t1, t2=args.t2, holdout=args.holdout,
                   config=train_config_from_args(args, default_lr(args.student_model)), max_length=args.max_length,
                   data_dir=args.data_dir, max_train_examples=args.max_train_examples, resume=args.resume,
                   overwrite=args.overwrite)


# ---------------------------------------------------------------- pea-kd

def _configure_pea_kd(p):
    add_data_args(p)
    _add_student_args(p, "sps")
    p.add_argument("--ptp-epochs", type=int, default=2, help="epochs of the PTP stage (default 2)")
    add_training_args(p, "distill")


def _run_pea_kd(args, parser):
    from .distill import distill_student
    from .ptp_stage import ptp_encoder_dir, run_ptp
    _check_plan(args, parser)
    root = run_root(args.task) if args.out_dir is None else Path(args.out_dir)
    config = train_config_from_args(args, default_lr(args.student_model))
    ptp_config = dataclasses.replace(config, epochs=args.ptp_epochs)  # checked (>= 1) before any work
    ptp_dir = root / f"ptp-{args.variant}" / f"seed{args.seed}"
    run_ptp(args.task, out_dir=ptp_dir, teacher_dir=args.teacher_dir, student_model=args.student_model,
            num_layers=args.student_layers, variant=args.variant, t1=args.t1, t2=args.t2, holdout=args.holdout,
            config=ptp_config, max_length=args.max_length, data_dir=args.data_dir,
            max_train_examples=args.max_train_examples, resume=args.resume, overwrite=args.overwrite)
    return distill_student(args.task, out_dir=root / "pea-kd" / f"seed{args.seed}", teacher_dir=args.teacher_dir,
                           student_model=args.student_model, num_layers=args.student_layers, variant=args.variant,
                           loss="kd+pkd", init_from=ptp_encoder_dir(ptp_dir), config=config,
                           max_length=args.max_length, data_dir=args.data_dir,
                           max_train_examples=args.max_train_examples, resume=args.resume, overwrite=args.overwrite)


# ---------------------------------------------------------------- reproduce

def _configure_reproduce(p):
    from .methods import ALL_METHODS, METHODS
    from .reproduce import ReproduceConfig
    d = ReproduceConfig.__dataclass_fields__
    p.add_argument("--task", required=True, help="GLUE task whose data is available (mrpc, rte, sst2, cola, stsb, ...)")
    p.add_argument("--data-dir", default=None, help="GLUE root (default: $GLUE_DIR, else data/glue)")
    p.add_argument("--teacher", default="minilm-l6", help="teacher checkpoint; students take its bottom layers "
                                                         "(default minilm-l6; e.g. bert-base-uncased)")
    p.add_argument("--student-layers", type=int, default=3, help="student layers L (default 3)")
    p.add_argument("--seeds", type=_integers, default=(0, 1, 2), help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--methods", default=",".join(m.slug for m in METHODS),
                   help="comma-separated subset of " + ", ".join(m.slug for m in ALL_METHODS))
    p.add_argument("--teacher-epochs", type=int, default=None,
                   help="teacher epochs (default: the task's searched recipe, reproduce.TEACHER_RECIPES, else 3)")
    for stage in ("student", "ptp"):
        default = d[f"{stage}_epochs"].default
        p.add_argument(f"--{stage}-epochs", type=int, default=default, help=f"{stage} epochs (default {default})")
    p.add_argument("--lr", type=float, default=None, help="learning rate of students and PTP (default 5e-5 for "
                                                          "hidden < 768, 2e-5 for bert-base width)")
    p.add_argument("--teacher-lr", type=float, default=None,
                   help="teacher learning rate (default: the task's searched recipe, else --lr)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--max-length", type=int, default=128, help="max tokens per example (default 128)")
    p.add_argument("--alpha", type=float, default=0.7, help="KD weight alpha (default 0.7)")
    p.add_argument("--temperature", type=float, default=10.0, help="KD temperature T (default 10)")
    p.add_argument("--beta", type=float, default=100.0, help="PKD weight beta (default 100)")
    p.add_argument("--eval-every", type=int, default=0, help="dev evaluation every N steps (default: each epoch)")
    p.add_argument("--jobs", type=int, default=1, help="students trained at a time, in worker processes with "
                                                         "threads/jobs torch threads each (default 1)")
    p.add_argument("--beyond-paper", action="store_true",
                   help="add the rows that are not the paper's: KD + DA, Pea-KD + DA, Pea-KD + DA + hidden (teacher-"
                        "labelled word-replacement data; every token's hidden state)")
    for name, help_text in (("variants", "V, augmented variants per training example"),
                            ("rate", "r, probability of replacing a word"), ("neighbours", "K, candidates per word"),
                            ("epochs", "epochs of the DA rows' final stage, on (1 + V) x the data")):
        default = d[f"augment_{name}"].default
        p.add_argument(f"--augment-{name}", type=type(default), default=default,
                       help=f"{help_text} (default {default})")
    p.add_argument("--smoke", action="store_true", help="a few dozen examples, 1 epoch, 1 seed: checks every stage")
    p.add_argument("--estimate", action="store_true",
                   help="train nothing: print the compute budget (FLOPs per stage, the least time on this machine)")
    p.add_argument("--out-root", default=None, help="where runs/<task>/ goes (default: <project>/runs)")
    add_device_arg(p)
    add_amp_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_reproduce(args, parser):
    from .reproduce import ReproduceConfig, run_all
    if args.student_layers < 1 or args.jobs < 1:
        parser.error("--student-layers and --jobs must be >= 1")
    extra = {"out_root": args.out_root} if args.out_root else {}
    cfg = ReproduceConfig(task=args.task, teacher=args.teacher, student_layers=args.student_layers, seeds=args.seeds,
                          methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                          teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs,
                          ptp_epochs=args.ptp_epochs, lr=args.lr, teacher_lr=args.teacher_lr,
                          batch_size=args.batch_size,
                          max_length=args.max_length, alpha=args.alpha, temperature=args.temperature, beta=args.beta,
                          eval_every=args.eval_every, jobs=args.jobs, smoke=args.smoke, data_dir=args.data_dir,
                          device=args.device, amp=args.amp, progress=False if args.no_progress else None,
                          beyond_paper=args.beyond_paper, augment_variants=args.augment_variants,
                          augment_rate=args.augment_rate, augment_neighbours=args.augment_neighbours,
                          augment_epochs=args.augment_epochs, **extra)
    if args.estimate:
        from .budget import estimate
        glue_download.ensure_task_data(cfg.task, cfg.data_dir, progress=not args.no_progress)
        print(estimate(cfg))
        return None
    results = run_all(cfg)
    if distributed.is_main():  # under torchrun: rank 0 wrote it and prints it
        print((cfg.run_root / "results.md").read_text(encoding="utf-8"))
    return {"results": str(cfg.run_root / "results.md"), "complete": results.get("complete")}


# ---------------------------------------------------------------- teacher-search

def _configure_teacher_search(p):
    add_data_args(p)
    p.add_argument("--model", default="minilm-l6", help="pre-trained teacher checkpoint (default minilm-l6)")
    p.add_argument("--lrs", type=_number_list(float), default=(5e-5, 1e-4),
                   help="comma-separated learning rates (default 5e-5,1e-4)")
    p.add_argument("--epochs", type=_integers, default=(3, 6), help="comma-separated epoch counts (default 3,6)")
    p.add_argument("--seeds", type=_integers, default=(0,), help="comma-separated seeds, averaged (default 0)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of train held out for scoring (default 0.2)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of all steps (default 0.1)")
    p.add_argument("--out-dir", default=None, help="default: runs/<task>/teacher-search")
    p.add_argument("--keep-models", action="store_true", help="keep every run's final/ model (default: delete)")
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_teacher_search(args, parser):
    from .teacher_search import SEARCH_MD, search_teacher_recipe
    from .trainer import TrainConfig
    if min(args.epochs) < 1 or not 0 < args.holdout < 1:
        parser.error("--epochs must be >= 1 and --holdout in (0, 1)")
    out_dir = Path(args.out_dir) if args.out_dir else run_root(args.task) / "teacher-search"
    config = TrainConfig(batch_size=args.batch_size, warmup=args.warmup, device=args.device,
                         progress=False if args.no_progress else None)
    report = search_teacher_recipe(args.task, out_dir=out_dir, model_name=args.model, lrs=args.lrs,
                                   epochs=args.epochs, seeds=args.seeds, holdout=args.holdout, config=config,
                                   max_length=args.max_length, data_dir=args.data_dir, keep_models=args.keep_models)
    if distributed.is_main():  # under torchrun: rank 0 wrote it and prints it
        print((out_dir / SEARCH_MD).read_text(encoding="utf-8"))
    return {"search": str(out_dir / SEARCH_MD), "best": report["best"]}


# ---------------------------------------------------------------- publish-results

def _configure_publish(p):
    p.add_argument("--task", required=True, help="GLUE task of the reproduction (mrpc, sst2, ...)")
    p.add_argument("--from", dest="source", default=None,
                   help="the reproduction's results.json (default runs/<task>/results.json)")
    p.add_argument("--to", dest="dest", default=None,
                   help="where to write it (default notebooks/results/<task>_results.json)")
    p.add_argument("--note", default="", help="a sentence kept in the provenance (e.g. the machine, a quiet run)")
    p.add_argument("--keep-previous", action="store_true",
                   help="keep the table being replaced (and its other_runs) under other_runs")
    p.add_argument("--allow-incomplete", action="store_true", help="publish a table with stages still missing")
    p.add_argument("--allow-smoke", action="store_true", help="publish a smoke run (for tests; numbers meaningless)")


def _run_publish(args, parser):
    import json

    from .glue_files import PROJECT_ROOT
    from .report import with_provenance
    from .storage import write_atomic
    source = Path(args.source) if args.source else run_root(args.task) / "results.json"
    dest = Path(args.dest) if args.dest else \
        PROJECT_ROOT / "notebooks" / "results" / f"{run_root(args.task).name}_results.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no results.json; run `python -m pea_kd reproduce --task {args.task}`")
    results = json.loads(source.read_text(encoding="utf-8"))
    previous = json.loads(dest.read_text(encoding="utf-8")) if args.keep_previous and dest.is_file() else None
    shown = source.resolve().relative_to(PROJECT_ROOT) if source.resolve().is_relative_to(PROJECT_ROOT) else source
    published = with_provenance(results, str(shown), args.note, previous, args.allow_incomplete, args.allow_smoke)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, json.dumps(published, indent=1, default=str) + "\n")
    return {"published": str(dest), "from": str(source), "provenance": published["provenance"]}


register_command("ptp", "PTP stage: train a student on the teacher's 4-way PTP labels (keeps the best encoder)",
                 _configure_ptp, _run_ptp)
register_command("pea-kd", "the whole Pea-KD recipe for one seed: PTP, then SPS + KD + PKD from its encoder",
                 _configure_pea_kd, _run_pea_kd)
register_command("reproduce", "the paper's comparison on one task: teacher, FT, KD, PKD, SPS, PTP, Pea-KD",
                 _configure_reproduce, _run_reproduce)
register_command("teacher-search", "choose the teacher's lr and epochs on a held-out part of train (never dev)",
                 _configure_teacher_search, _run_teacher_search)
register_command("publish-results", "copy a finished reproduction's results.json, with its provenance, into "
                 "notebooks/results/", _configure_publish, _run_publish)
register_command("download-glue", "download GLUE tasks where the reader looks: $GLUE_DIR, else data/glue (make data)",
                 glue_download.configure, glue_download.run)
