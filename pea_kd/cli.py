"""`python -m pea_kd <command>`: the command line of pea-kd.

    python -m pea_kd finetune-teacher --task mrpc                       -> runs/mrpc/teacher/
    python -m pea_kd cache-teacher --task mrpc --teacher-dir runs/mrpc/teacher
    python -m pea_kd distill --task mrpc --teacher-dir runs/mrpc/teacher --student-layers 3 --variant sps \\
        --loss kd+pkd --init-from runs/mrpc/ptp/best                     -> runs/mrpc/distill-sps-L3-kd+pkd-s0/

Every command prints its result as JSON on stdout; logs and the progress bar go to stderr.

Adding a command (ptp, pea-kd, reproduce, ...): write `configure(parser)` and `run(args, parser)` and call
`register_command(name, help, configure, run)` in your module, then list the module in PLUGIN_MODULES. Reuse
`add_training_args(parser, stage)` / `train_config_from_args(args)` for the shared training flags, and call
`parser.error("...")` for a bad flag combination (a one-line usage error, never a traceback).

Default hyper-parameters and the learning rate by model width: pea_kd.defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bert_mini.download import DownloadError

from . import distributed
from .defaults import STAGE_DEFAULTS, configure_logging, default_lr
from .storage import DirectoryInUse, StorageError
from .train_checks import NonFiniteLossError
from .trainer import TrainConfig

PLUGIN_MODULES = ("pea_kd.commands", "pea_kd.export")  # may register more commands
# argparse (< 3.13) reads "-1e-5" as an option, so `--lr -1e-5` said "expected one argument"; with every number
# recognised as one, the value reaches its check and the error names what is wrong with it.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], object]


COMMANDS: dict[str, Command] = {}


def register_command(name: str, help: str, configure, run) -> None:
    """Add a subcommand: configure(parser) adds its flags, run(args, parser) does the work (returns a result)."""
    COMMANDS[name] = Command(name, help, configure, run)


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli")
    p.add_argument("--data-dir", default=None, help="GLUE root (default: $GLUE_DIR, else data/glue)")
    p.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens (default 128)")


def add_training_args(p: argparse.ArgumentParser, stage: str) -> None:
    """The flags of TrainConfig plus run-directory flags, with the defaults of `stage` (see STAGE_DEFAULTS)."""
    d = {**dataclasses.asdict(TrainConfig()), **STAGE_DEFAULTS[stage]}
    g = p.add_argument_group("training")
    g.add_argument("--out-dir", default=None, help="run directory (default: runs/<TASK>/<run name>)")
    g.add_argument("--epochs", type=int, default=d["epochs"], help=f"training epochs (default {d['epochs']})")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"batch size (default {d['batch_size']})")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 2e-5 for hidden size >= 768 as the authors, else 5e-5)")
    g.add_argument("--warmup", type=float, default=d["warmup"], help="warm-up fraction of all steps (default 0.1)")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="AdamW weight decay, not on biases/LayerNorm (default 0.01)")
    g.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"],
                   help="global gradient-norm clip, 0 = off (default 1.0)")
    g.add_argument("--seed", type=int, default=0, help="seed of data order, dropout and new heads (default 0)")
    g.add_argument("--eval-every", type=int, default=0, help="evaluate on dev every N steps (default 0: each epoch)")
    g.add_argument("--checkpoint-every", type=int, default=None,
                   help="write checkpoint.pt every N steps (default: when the last one is 10 minutes old; 0 = never)")
    g.add_argument("--select", default="auto",
                   help="dev score for best_dev_*/best/: auto (task's primary metric), a metric name, or loss")
    g.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=d["keep_best"],
                   help="also save the best-on-dev model in <out-dir>/best/ "
                        f"(default {'on' if d['keep_best'] else 'off'})")
    add_device_arg(g)
    add_amp_arg(g)
    g.add_argument("--max-train-examples", type=positive_int, default=None,
                   help="train on the first N examples (smoke runs; N >= 1)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint.pt")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out-dir")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_device_arg(parser) -> None:
    """--device, shared by every command that computes (runtime.resolve_device)."""
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available, else mps on Apple silicon, else cpu), cpu, cuda, cuda:N, mps "
                             "(default auto)")


def add_amp_arg(parser) -> None:
    """--amp, shared by every training command and reproduce."""
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="mixed precision: auto = bf16 autocast where the device has native bf16 (CUDA Ampere+, "
                             "CPUs with AVX512-BF16/AMX), else fp16 on CUDA and fp32 on CPU and mps; bf16; fp16 "
                             "(CUDA, mps); off = fp32 (default auto)")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def train_config_from_args(args: argparse.Namespace, lr: float) -> TrainConfig:
    """TrainConfig from the flags of add_training_args (`lr` is used when --lr was not given)."""
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr if args.lr is None else args.lr,
                       warmup=args.warmup, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                       seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                       keep_best=args.keep_best, select=args.select, device=args.device, amp=args.amp,
                       progress=False if args.no_progress else None)


def run_root(task: str) -> Path:
    """runs/<task>/, the task's GLUE name in lower case (runs/mrpc, runs/sst-2): where every command writes."""
    from .glue import get_task
    from .glue_files import PROJECT_ROOT
    return PROJECT_ROOT / "runs" / get_task(task).name.lower()


# ---------------------------------------------------------------- finetune-teacher

def _configure_teacher(p):
    add_data_args(p)
    p.add_argument("--model", default="minilm-l6", help="pre-trained checkpoint: minilm-l6, a local dir, "
                                                        "or a hub name like bert-base-uncased (default minilm-l6)")
    p.add_argument("--holdout", type=float, default=0.0,
                   help="evaluate on this seeded fraction of train instead of dev, which is then never read "
                        "(default 0: evaluate on dev)")
    add_training_args(p, "teacher")


def _run_teacher(args, parser):
    from .teacher import finetune_teacher
    config = train_config_from_args(args, default_lr(args.model))
    out_dir = args.out_dir or run_root(args.task) / "teacher"
    return finetune_teacher(args.task, out_dir=out_dir, model_name=args.model, config=config,
                            max_length=args.max_length, data_dir=args.data_dir,
                            max_train_examples=args.max_train_examples, holdout=args.holdout, resume=args.resume,
                            overwrite=args.overwrite)


# ---------------------------------------------------------------- cache-teacher

def _configure_cache(p):
    add_data_args(p)
    p.add_argument("--teacher-dir", required=True, help="a finetune-teacher run directory (or a model directory)")
    p.add_argument("--checkpoint", default="final", choices=("final", "best"),
                   help="which teacher model (default final)")
    p.add_argument("--splits", default="train,dev", help="comma-separated splits to cache (default train,dev)")
    p.add_argument("--batch-size", type=int, default=64, help="inference batch size (default 64)")
    add_device_arg(p)
    p.add_argument("--layers", type=_layer_list, default=None,
                   help="teacher layers whose [CLS] vectors to keep, e.g. 4,8 (0 = embeddings; default: all). "
                        "PKD reads only its layer map; distill and reproduce ask for what they read by themselves")
    p.add_argument("--cls-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="storage dtype of the [CLS] vectors: float32 (exact, default) or float16/bfloat16 (half the "
                        "bytes; losses are computed in float32 from them). Kept when a run adds layers later")
    p.add_argument("--verify", action="store_true",
                   help="compute nothing: re-read the existing cache and check every row against the digests "
                        "recorded when it was written (runs trust those digests without re-reading)")


def _layer_list(text: str) -> tuple:
    """argparse type: comma-separated layer indices >= 0 (an empty string: none, logits only)."""
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        layers = (-1,)
    if any(x < 0 for x in layers):
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices >= 0, got {text!r}")
    return layers


def _run_cache(args, parser):
    from .teacher import cache_teacher_outputs
    from .teacher_cache import CACHE_FILE, verify_teacher_outputs
    path = Path(args.teacher_dir) / CACHE_FILE
    if args.verify:
        changed = {split: keys for split, keys in verify_teacher_outputs(path).items() if keys}
        if changed:
            raise ValueError(f"{path}: rows differ from the digests recorded when it was written ("
                             + "; ".join(f"{split}: {', '.join(keys)}" for split, keys in changed.items())
                             + "); recompute it")
        return {"teacher_outputs": str(path), "verified": True}
    if not distributed.is_main():  # under torchrun: rank 0 alone computes it; the others wait for it
        distributed.barrier()
        return {"teacher_outputs": str(path)}
    path = cache_teacher_outputs(args.teacher_dir, args.task, tuple(s for s in args.splits.split(",") if s),
                                 args.max_length, args.data_dir, args.batch_size, args.checkpoint, args.device,
                                 layers=args.layers, cls_dtype=args.cls_dtype)
    distributed.barrier()
    return {"teacher_outputs": str(path)}


# ---------------------------------------------------------------- distill

def _configure_distill(p):
    from .losses import available_losses
    from .sps import VARIANTS
    add_data_args(p)
    p.add_argument("--teacher-dir", default=None, help="finetune-teacher run whose cached outputs are distilled "
                                                       "(needed by every loss except ce)")
    p.add_argument("--teacher-checkpoint", default="final", choices=("final", "best"),
                   help="which teacher model the cache must come from (default final)")
    p.add_argument("--student-model", default="minilm-l6", help="pre-trained checkpoint the student's bottom layers "
                                                                "come from (default minilm-l6)")
    p.add_argument("--student-layers", type=int, default=3, help="real transformer layers L (default 3)")
    p.add_argument("--variant", default="original", choices=VARIANTS,
                   help="original: plain L layers; sps_no_shuffle: layers run twice; sps: twice with Q/K swapped "
                        "in the upper copy (2L effective); sps6: the authors' 6-layer SPS (9 effective)")
    p.add_argument("--loss", default="kd+pkd", help="loss spec, components joined by '+' (default kd+pkd). "
                   + "; ".join(f"{k}: {v.rstrip('.')}" for k, v in available_losses().items()))
    p.add_argument("--alpha", type=float, default=None, help="KD weight alpha (default 0.7)")
    p.add_argument("--temperature", type=float, default=None, help="KD temperature T (default 10)")
    p.add_argument("--beta", type=float, default=None, help="PKD weight beta (default 100)")
    p.add_argument("--kl-reduction", default="batchmean", choices=("batchmean", "mean"),
                   help="KL per example (batchmean, default) or divided by B*C as the authors' C1/C2 code (mean)")
    p.add_argument("--init-from", default=None, help="a PTP run's saved student: start from its encoder (Pea-KD)")
    add_training_args(p, "distill")


def _run_distill(args, parser):
    from .distill import check_distill_args, distill_student, loss_requires
    try:
        check_distill_args(args.loss, args.student_layers, args.variant, args.teacher_dir)
        requires = loss_requires(args.loss)
    except ValueError as err:
        parser.error(str(err))
    if args.alpha is not None or args.temperature is not None:
        if "teacher_logits" not in requires:
            parser.error(f"--alpha/--temperature set the KD term, which loss {args.loss!r} does not have")
    if args.beta is not None and not {"student_hidden_states", "teacher_cls_hidden"} <= requires:
        parser.error(f"--beta weights the layer-matching (pkd) term, which loss {args.loss!r} does not have")
    config = train_config_from_args(args, default_lr(args.student_model))
    name = f"distill-{args.variant}-L{args.student_layers}-{args.loss}-s{args.seed}"
    return distill_student(
        args.task, out_dir=args.out_dir or run_root(args.task) / name, teacher_dir=args.teacher_dir,
        student_model=args.student_model, num_layers=args.student_layers, variant=args.variant, loss=args.loss,
        alpha=0.7 if args.alpha is None else args.alpha,
        temperature=10.0 if args.temperature is None else args.temperature,
        beta=100.0 if args.beta is None else args.beta, kl_reduction=args.kl_reduction, init_from=args.init_from,
        config=config, max_length=args.max_length, data_dir=args.data_dir, max_train_examples=args.max_train_examples,
        teacher_checkpoint=args.teacher_checkpoint, resume=args.resume, overwrite=args.overwrite)


register_command("finetune-teacher", "fine-tune the teacher on a GLUE task (CE; MSE for STS-B)",
                 _configure_teacher, _run_teacher)
register_command("cache-teacher", "cache the teacher's logits and per-layer [CLS] states (teacher_outputs.pt)",
                 _configure_cache, _run_cache)
register_command("distill", "train a student (FT, KD, KD+PKD, ...) from the cached teacher outputs",
                 _configure_distill, _run_distill)


def import_plugin(name: str) -> None:
    """Import a user module by name (found from the current directory) or by .py path, for its registrations."""
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--plugin {name}: no such file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return
    if "" not in sys.path:
        sys.path.insert(0, "")  # `python -m pea_kd` already has the current directory; the console script may not
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise ValueError(f"--plugin {name}: no module named {name!r} (run from its directory, or pass a .py path)")


def build_parser() -> argparse.ArgumentParser:
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # the plugin exists but one of its imports is missing: a real error
                raise
    parser = argparse.ArgumentParser(prog="python -m pea_kd", description="Pea-KD: SPS + PTP distillation of BERT.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks instead of one-line errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (a module name or a .py file) first, e.g. one that registers your own "
                             "loss with @register_loss; repeatable")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for cmd in COMMANDS.values():
        cmd_parser = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd_parser._negative_number_matcher = NEGATIVE_NUMBER  # so that `--lr -1e-5` reaches the value check
        cmd.configure(cmd_parser)
        cmd_parser.set_defaults(_command=cmd, _parser=cmd_parser)
    return parser


def main(argv=None) -> int:
    # Plugins are imported before the full parser is built, so that `--plugin m distill --help` lists their losses.
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    early.add_argument("--traceback", action="store_true")
    known, _ = early.parse_known_args(argv)
    try:
        for plugin in known.plugin:
            import_plugin(plugin)
    except (ValueError, FileNotFoundError) as err:
        if known.traceback:
            raise
        early.exit(1, f"python -m pea_kd: error: {err}\n")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    distributed.init_from_env()  # under torchrun: join the other processes (a plain run has no process group)
    try:
        result = args._command.run(args, args._parser)
    except (ValueError, FileNotFoundError, FileExistsError, NonFiniteLossError, StorageError, DirectoryInUse,
            DownloadError) as err:  # DownloadError: a hub checkpoint that could not be fetched (bert_mini.download)
        if args.traceback:
            raise
        args._parser.exit(1, f"{args._parser.prog}: error: {err}\n")
    if result is not None and distributed.is_main():  # under torchrun: printed once
        payload = result.to_dict() if hasattr(result, "to_dict") else result
        if isinstance(payload, dict) and "history" in payload:  # keep stdout short: the history is in result.json
            payload = {k: v for k, v in payload.items() if k != "history"}
        print(json.dumps(payload, indent=2, default=str))
    return 0
