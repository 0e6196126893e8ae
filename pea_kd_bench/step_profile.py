"""Where a training step's time goes: torch.profiler over the project Trainer, grouped into a few shares.

    python -m pea_kd_bench.step_profile [--task mrpc] [--variant sps] [--layers 3] [--loss ce] [--steps 12]
                                        [--warmup 2] [--amp off|bf16] [--batch-size 32] [--threads N] [--json PATH]

Builds the student as `distill` does (minilm-l6's bottom L layers, the variant's SPS plan), reads real training
batches of the task (GLUE_DIR or data/glue), runs `--warmup` untimed Trainer steps, then profiles `--steps` more
(the trainer's own `Trainer.step`: forward, loss, backward, clipping, AdamW). Every operator's *self* CPU time is
put in one group (GROUPS, first match wins) and printed as a share of the total, next to the wall time per step,
and the absolute self CPU time per step outside the matrix products ("non-matmul ms/step") and inside them.

The shares are what to optimise first: a step that is mostly matrix products runs near the machine's matmul rate;
everything else (dropout masks, zero-fills, GELU, copies, the optimiser) is overhead on top. The profiler times
operators by the clock, so on a machine that other jobs share each operator's time includes the waits for a core;
`--threads 1` keeps one thread from spin-waiting on the other, and the shares are then what the step itself costs.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Optional

import torch
from torch.profiler import ProfilerActivity, profile

from bert_mini import load_tokenizer
from pea_kd.feature_cache import load_features
from pea_kd.features import make_batches
from pea_kd.glue import get_task
from pea_kd.runtime import set_seed
from pea_kd.students import build_student
from pea_kd.trainer import TrainConfig, Trainer

# (group, operator-name fragments): an operator belongs to the first group one of whose fragments its name contains
GROUPS = [
    ("matrix products (mm, addmm, bmm, linear)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul",
                                                  "aten::linear", "mkldnn", "aten::_scaled_dot_product",
                                                  "flash_attention")),
    ("dropout masks (bernoulli, random words, their compare)", ("bernoulli", "dropout", "aten::rand", "uniform",
                                                               "philox", "aten::lt")),
    ("zero-fills (aten::fill_, zero_, zeros, empty)", ("aten::fill_", "aten::zero_", "aten::zeros", "aten::empty",
                                                       "aten::new_zeros")),
    ("embedding gradient", ("embedding_dense_backward", "embedding_backward", "index_add", "index_put",
                            "embedding_renorm")),
    ("GELU + backward", ("gelu",)),
    ("optimiser (AdamW, gradient clipping)", ("adam", "_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul")),
    ("copies (dtype casts, head split/merge layouts)", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone")),
    ("LayerNorm", ("layer_norm",)),
    ("softmax", ("softmax",)),
]
MATMUL = GROUPS[0][0]
OTHER = "the rest (elementwise, reductions, indexing, autograd bookkeeping)"


def group_of(name: str) -> str:
    """The GROUPS entry an operator called `name` belongs to (OTHER when none)."""
    for group, fragments in GROUPS:
        if any(fragment in name for fragment in fragments):
            return group
    return OTHER


def profile_trainer(task: str = "mrpc", variant: str = "sps", num_layers: int = 3, loss: str = "ce", steps: int = 12,
                    warmup: int = 2, amp: str = "off", batch_size: int = 32, seed: int = 0,
                    threads: Optional[int] = None, data_dir=None, model: str = "minilm-l6") -> dict:
    """Profile `steps` Trainer steps of a `variant` student of `model` on `task`'s first training batches (in the
    trainer's shuffled order for `seed`); returns the shares."""
    if threads:
        torch.set_num_threads(threads)
    spec = get_task(task)
    tokenizer = load_tokenizer(model)
    train_data = load_features(spec, "train", tokenizer, data_dir=data_dir)
    dev_data = load_features(spec, spec.dev_split, tokenizer, data_dir=data_dir).head(8)
    set_seed(seed)
    student = build_student(model, num_layers, spec.num_labels, variant)
    with tempfile.TemporaryDirectory(prefix="pea_kd_profile_") as out_dir:
        trainer = Trainer(student, train_data, dev_data, task=spec, out_dir=out_dir, loss=loss,
                          config=TrainConfig(batch_size=batch_size, seed=seed, device="cpu", amp=amp, progress=False))
        set_seed(seed)
        student.train()
        batches = make_batches(train_data, batch_size, shuffle=True, seed=seed, epoch=0)[:warmup + steps]
        for indices in batches[:warmup]:
            trainer.step(indices)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start, cpu_start = time.perf_counter(), time.process_time()
            for indices in batches[warmup:]:
                trainer.step(indices)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    shares: dict[str, float] = {}
    operators: dict[str, float] = {}
    for event in prof.key_averages():
        shares[group_of(event.key)] = shares.get(group_of(event.key), 0.0) + event.self_cpu_time_total
        operators[event.key] = event.self_cpu_time_total
    total = sum(shares.values())
    steps_done = len(batches) - warmup
    top = sorted(operators.items(), key=lambda kv: -kv[1])[:15]
    return {"task": spec.name, "variant": variant, "num_layers": num_layers, "loss": loss, "amp": amp,
            "batch_size": batch_size, "steps": steps_done, "threads": torch.get_num_threads(),
            "tokens": int(sum(train_data.lengths[b].sum() for b in batches[warmup:])),
            "wall_s_per_step": wall / steps_done, "cpu_s_per_step": cpu / steps_done,
            "self_cpu_s": total / 1e6,
            # the operators' self time per step, outside and inside the matrix products (MATMUL = GROUPS[0])
            "non_matmul_ms_per_step": (total - shares.get(MATMUL, 0.0)) / 1e3 / steps_done,
            "matmul_ms_per_step": shares.get(MATMUL, 0.0) / 1e3 / steps_done,
            "shares": {g: shares.get(g, 0.0) / total for g, _ in GROUPS + [(OTHER, ())]},
            "top_operators": {k: v / total for k, v in top}}


def format_profile(report: dict) -> str:
    """The shares as a small table."""
    lines = [f"{report['variant']} student ({report['num_layers']} layers), loss {report['loss']}, {report['task']}, "
             f"amp {report['amp']}, batch {report['batch_size']}, {report['threads']} threads: {report['steps']} "
             f"profiled steps, {report['wall_s_per_step'] * 1e3:.0f} ms/step wall, {report['cpu_s_per_step'] * 1e3:.0f} "
             f"ms/step process CPU (under the profiler), "
             f"{report['tokens'] / report['steps'] / report['wall_s_per_step']:.0f} real tokens/s", "",
             f"operators' self CPU time per step: {report['non_matmul_ms_per_step']:.1f} ms non-matmul ms/step, "
             f"{report['matmul_ms_per_step']:.1f} ms in the matrix products", "",
             f"{'share of self CPU time':55} {'share':>6}"]
    lines += [f"{group:55} {share:6.1%}" for group, share in report["shares"].items()]
    lines += ["", "top operators (self CPU time):"]
    lines += [f"  {name:53} {share:6.1%}" for name, share in report["top_operators"].items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pea_kd_bench.step_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--model", default="minilm-l6", help="checkpoint the student comes from (default minilm-l6)")
    parser.add_argument("--variant", default="sps", help="student variant (original, sps, ...; default sps)")
    parser.add_argument("--layers", type=int, default=3, help="student layers L (default 3)")
    parser.add_argument("--loss", default="ce", help="a loss without a teacher (default ce)")
    parser.add_argument("--steps", type=int, default=12, help="profiled Trainer steps (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    parser.add_argument("--amp", default="off", choices=("off", "bf16"), help="off = fp32 (default), bf16 autocast")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--data-dir", default=None, help="GLUE directory (default: GLUE_DIR or data/glue)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the shares to PATH as JSON")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"need --steps >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    try:
        report = profile_trainer(args.task, args.variant, args.layers, args.loss, args.steps, args.warmup, args.amp,
                                 args.batch_size, args.seed, args.threads, args.data_dir, args.model)
    except (ValueError, FileNotFoundError) as err:  # no GLUE data, unknown task/variant/loss: one line, exit 2
        parser.error(str(err))
    print(format_profile(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
