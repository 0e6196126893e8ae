"""The compute budget of a reproduction: how much arithmetic `make reproduce` is, and the least time it can take here.

    F(B, n, s)    = forward_flops: one forward of a batch of B examples padded to n tokens
                    through an encoder plan of s layer steps (2 x linear weights x tokens + attention, plus the head)
    train(stage)  = sum over epochs, over the stage's length-bucketed batches b:  3 F(B_b, n_b, s)   (backward ~ 2F)
    eval(stage)   = (number of evaluations) x sum over the sorted dev batches:  F(B, n, s)
    bound         = FLOPs / R,  R = this machine's matmul rate in the run's precision (a large square product,
                    all threads): bf16 where the run autocasts to bf16 (--amp, runtime.resolve_amp), else fp32

No implementation can run the stage's matrix products faster than R, and dropout, GELU, LayerNorm, softmax and the
optimiser come on top, so `bound` is a floor under the wall time. The batches are the trainer's own
(`features.make_batches` with each stage's seed and epoch), so the count is exact for the model, not an average.

    DA rows (--beyond-paper): the final stage trains on (1 + V) x the data (a replaced word keeps the lengths), the
    teacher labels the V variants once (its own row), and "hidden" adds a live teacher forward per training batch.

    python -m pea_kd reproduce --task mrpc --estimate     (make reproduce TASK=mrpc ESTIMATE=1)
prints the table below without training anything; where runs/<task>/results.json holds finished runs of the same
setting, their measured seconds and the fraction of R they reached are shown next to the bound. A reproduction's own
progress view (pea_kd.progress) predicts its time from the same counts, stage by stage and seed by seed.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from bert_mini import BertConfig, load_tokenizer, resolve_model_dir

from .feature_cache import load_features
from .features import make_batches, split_holdout
from .glue import get_task
from .ptp import PTP_CLASSES
from .ptp_stage import PTP_HOLDOUT
from .sps import make_plan
from .runtime import mps_bf16, native_bf16, precision_name, resolve_amp, resolve_device
from .trainer import TrainConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the precisions a rate is measured in


def forward_flops(config, batch: int, seq_len: int, steps: Optional[int] = None, num_labels: int = 2,
                  cls_only: bool = False) -> float:
    """Estimated FLOPs of one classifier forward (a multiply-add counts 2); `steps` = encoder plan length.

    per layer step: 2 * (4 H^2 + 2 H I) * B n     Q, K, V and output projections; the two feed-forward maps
                  + 4 * B * n^2 * H               S = Q K^T and P V over all heads
    head:           2 * (H^2 + H C) * B           pooler and classifier on [CLS]
    cls_only (the last step computes its [CLS] row only, as training and evaluation run it; bert_mini.modeling):
    last step:      2 * 2 H^2 * B n               K and V of every token
                  + 2 * (2 H^2 + 2 H I) * B       Q, output projection and feed-forward of the B [CLS] rows
                  + 4 * B * n * H                 one row of S and of P V per example
    """
    H, inner = config.hidden_size, config.intermediate_size
    steps = config.num_hidden_layers if steps is None else steps
    per_step = 2 * (4 * H * H + 2 * H * inner) * batch * seq_len + 4 * batch * seq_len**2 * H
    if not (cls_only and steps):
        return float(steps * per_step + 2 * (H * H + H * num_labels) * batch)
    last = 2 * 2 * H * H * batch * seq_len + 2 * (2 * H * H + 2 * H * inner) * batch + 4 * batch * seq_len * H
    return float((steps - 1) * per_step + last + 2 * (H * H + H * num_labels) * batch)


def sync(device: str) -> None:
    """Wait for `device`'s queued work (CUDA and MPS run asynchronously), so that a clock reading covers it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device.startswith("mps"):
        torch.mps.synchronize()


def matmul_gflops(device: str, size: int, repeats: int = 1, dtype: torch.dtype = torch.float32) -> float:
    """Median GFLOP/s of `repeats` timed (size x size) @ (size x size) products in `dtype`: the practical ceiling."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # the first product pays for allocation and kernel selection
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def default_matmul_size(device: str, precision: str) -> int:
    """The ceiling's product size: 8192 on CUDA, 2048 on CPU and MPS, 512 for emulated bf16 on CPU (a 2048^3 one takes
    minutes)."""
    if device.startswith("cuda"):
        return 8192
    return 2048 if precision == "fp32" or device.startswith("mps") or native_bf16(device) else 512


# Settings that change how much work a run is: a results.json made with other values is not compared.
WORK_SETTINGS = ("teacher", "student_layers", "teacher_epochs", "student_epochs", "ptp_epochs", "batch_size",
                 "max_length", "eval_every", "smoke", "smoke_examples")


@dataclass
class StageBudget:
    """One row of the budget: a table row of reproduce (the teacher, its cache, or a method over all seeds)."""

    name: str
    runs: int  # how many times the stage runs (seeds)
    effective_layers: int
    flops: float  # all runs together
    measured_seconds: Optional[float] = None  # from results.json, all runs together
    seed_flops: dict = field(default_factory=dict)  # a method's row: seed -> FLOPs of that seed's run(s)


def count_evaluations(steps_per_epoch: Sequence[int], eval_every: int) -> int:
    """Dev evaluations of a run, as the trainer schedules them: after every epoch and every `eval_every` steps."""
    count, step = 0, 0
    for steps in steps_per_epoch:
        for b in range(steps):
            step += 1
            count += b + 1 == steps or bool(eval_every and step % eval_every == 0)
    return count


def run_flops(config: BertConfig, train_lengths: np.ndarray, eval_lengths: np.ndarray, train: TrainConfig,
              steps: int, num_labels: int) -> float:
    """FLOPs of one trainer run: 3 F per training batch of every epoch, plus F per dev batch per evaluation (the
    last layer's [CLS] row only: every loss of the reproduction reads no more of it, LossModule.student_cls_only)."""
    epochs = [make_batches(train_lengths, train.batch_size, True, train.seed, e) for e in range(train.epochs)]
    training = sum(3 * forward_flops(config, len(b), int(train_lengths[b].max()), steps, num_labels, cls_only=True)
                   for batches in epochs for b in batches)
    one_eval = sum(forward_flops(config, len(b), int(eval_lengths[b].max()), steps, num_labels, cls_only=True)
                   for b in make_batches(eval_lengths, train.eval_batch_size, shuffle=False))
    return training + count_evaluations([len(b) for b in epochs], train.eval_every) * one_eval


def inference_flops(config: BertConfig, lengths: np.ndarray, num_labels: int, batch_size: int = 64) -> float:
    """FLOPs of one forward over a split in sorted batches (the teacher's cache: [CLS] rows only)."""
    return sum(forward_flops(config, len(b), int(lengths[b].max()), None, num_labels, cls_only=True)
               for b in make_batches(lengths, batch_size, False))


def reproduce_budget(cfg) -> list[StageBudget]:
    """The FLOPs of every stage of `reproduce.run_all(cfg)` (a ReproduceConfig), in table order."""
    spec = get_task(cfg.task)
    teacher_config = BertConfig.from_json(resolve_model_dir(cfg.teacher) / "config.json")
    student_config = BertConfig.from_dict({**teacher_config.to_dict(), "num_hidden_layers": cfg.student_layers})
    tokenizer = load_tokenizer(cfg.teacher)
    train, dev = (load_features(spec, split, tokenizer, cfg.max_length, cfg.data_dir).lengths
                  for split in ("train", spec.dev_split))
    if cfg.smoke:  # the smoke run's GLUE files hold the first rows of each split
        train, dev = train[:cfg.smoke_examples], dev[:cfg.smoke_examples]
    labels = spec.num_labels

    def config(epochs, lr, seed):
        return TrainConfig(epochs=epochs, lr=lr, batch_size=cfg.batch_size, seed=seed, eval_every=cfg.eval_every)

    layers = teacher_config.num_hidden_layers
    rows = [StageBudget(f"teacher ({layers}L)", 1, layers,
                        run_flops(teacher_config, train, dev, config(cfg.teacher_epochs, cfg.teacher_lr, 0),
                                  layers, labels)),
            StageBudget("teacher cache", 1, layers, inference_flops(teacher_config, train, labels)
                        + inference_flops(teacher_config, dev, labels))]
    variants = np.repeat(train, cfg.augment_variants)  # variant v of example i has example i's length
    if any(m.augment for m in cfg.selected()):
        rows.append(StageBudget("teacher labels DA †", 1, layers, inference_flops(teacher_config, variants, labels)))
    for method in cfg.selected():
        steps, seed_flops = len(make_plan(cfg.student_layers, method.variant)), {}
        data = np.concatenate([train, variants]) if method.augment else train
        epochs = cfg.augment_epochs if method.augment else cfg.student_epochs
        for seed in cfg.seeds:
            seed_flops[seed] = 0.0
            if method.ptp:  # PTP trains on train minus a held-out part and selects on that part
                fit, held = split_holdout(len(train), PTP_HOLDOUT, seed)
                seed_flops[seed] += run_flops(student_config, train[fit], train[held],
                                              config(cfg.ptp_epochs, cfg.lr, seed), steps, len(PTP_CLASSES))
            seed_flops[seed] += run_flops(student_config, data, dev, config(epochs, cfg.lr, seed), steps, labels)
            if "hidden" in method.loss:  # the live teacher's forward on every training batch, every token
                batches = [b for e in range(epochs) for b in make_batches(data, cfg.batch_size, True, seed, e)]
                seed_flops[seed] += sum(forward_flops(teacher_config, len(b), int(data[b].max()), layers, labels)
                                        for b in batches)
        rows.append(StageBudget(method.name, len(cfg.seeds), steps, sum(seed_flops.values()), seed_flops=seed_flops))
    return rows


def attach_measurements(rows: list[StageBudget], results: dict, cfg, precision: str) -> bool:
    """Fill `measured_seconds` from a reproduce results.json of the same setting and precision; False otherwise."""
    done = results.get("config", {})
    same_task = "task" in done and get_task(done["task"]).name == get_task(cfg.task).name
    if not same_task or any(done.get(k) != getattr(cfg, k) for k in WORK_SETTINGS):
        return False
    if results.get("environment", {}).get("precision", "fp32") != precision:
        return False
    teacher = results["teacher"]
    rows[0].measured_seconds, rows[1].measured_seconds = teacher["seconds"], teacher["cache_seconds"]
    for row in rows[2:]:
        if row.name == "teacher labels DA †":
            row.measured_seconds = results.get("augment", {}).get("teacher_seconds")
            continue
        mine = [r["seconds"] for r in results["runs"] if r["method"] == row.name and r["seed"] in cfg.seeds]
        row.measured_seconds = sum(mine) if len(mine) == row.runs else None
    return True


def _tflop(flops: float) -> str:
    tera = flops / 1e12
    return f"{tera:,.0f}" if tera >= 100 else f"{tera:.3g}"


def format_budget(rows: list[StageBudget], rates: dict, precision: str, where: str, title: str) -> str:
    """The budget as a markdown table: TFLOP, share, bound at the run's rate R = rates[precision], and measured
    seconds where known; then the total bound at the other precision's rate. rates: matmul_rates()."""
    size, gflops = rates[precision]
    total = sum(r.flops for r in rows)
    lines = [f"# Compute budget: {title}", "",
             f"The stages run in {precision}. Matmul rate R of this machine in {precision} ({where}; a large square "
             f"product {size}^3, measured now, so low when the machine is busy): {gflops:.0f} GFLOP/s", "",
             "| stage | runs | eff. layers | TFLOP | share | bound at R (s) | measured (s) | of R |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound, seen = r.flops / (gflops * 1e9), r.measured_seconds
        lines.append(f"| {r.name} | {r.runs} | {r.effective_layers} | {_tflop(r.flops)} | "
                     f"{r.flops / total:.1%} | {bound:.0f} | {'-' if seen is None else f'{seen:.0f}'} | "
                     f"{'-' if not seen else f'{bound / seen:.0%}'} |")
    bound = total / (gflops * 1e9)
    seen = [r for r in rows if r.measured_seconds]
    measured = sum(r.measured_seconds for r in seen)
    partial = "" if len(seen) == len(rows) else f", {len(seen)} of {len(rows)} stages"
    lines.append(f"| **total** | | | {_tflop(total)} | 100% | {bound:.0f} ({bound / 60:.0f} min) | "
                 + (f"{measured:.0f} ({measured / 60:.0f} min{partial}) | "
                    f"{sum(r.flops for r in seen) / (gflops * 1e9) / measured:.0%} |" if seen else "- | - |"))
    lines.append("")
    lines += [f"- In {other} (matmul rate {rate:.1f} GFLOP/s on {n}^3) the same FLOPs would take at least "
              f"{total / (rate * 1e9):.0f} s ({total / (rate * 1e9) / 60:.0f} min)."
              for other, (n, rate) in rates.items() if other != precision]
    lines += ["- **bound**: FLOPs / R, the time the matrix products alone would take at the rate of one large "
              "product; elementwise work (dropout, GELU, LayerNorm, softmax, optimiser) comes on top.",
              "- **measured**: training + evaluation seconds recorded in results.json (all seeds), where present; "
              "**of R** = bound / measured."]
    return "\n".join(lines)


def matmul_rates(device: torch.device, repeats: int = 5, precisions=("fp32", "bf16")) -> dict:
    """{"fp32": (n, R), "bf16": (n, R)}: GFLOP/s of an n^3 product on `device` in each precision, n as `make bench`
    measures its ceiling (default_matmul_size: 512^3 for bf16 where the device only emulates it)."""
    sizes = {p: default_matmul_size(str(device), p) for p in precisions}
    return {p: (n, matmul_gflops(str(device), n, repeats, DTYPES[p])) for p, n in sizes.items()}


def compared_precisions(device: torch.device, precision: str) -> tuple:
    """What --estimate measures: fp32, the run's precision, and bf16 where the device holds it (MPS: macOS 14+)."""
    bf16 = () if device.type == "mps" and not mps_bf16() else ("bf16",)
    return tuple(dict.fromkeys(("fp32", precision, *bf16)))


def estimate(cfg, repeats: int = 5) -> str:
    """The budget table of `cfg` (a ReproduceConfig) on this machine; measurements from results.json if they match."""
    rows = reproduce_budget(cfg)
    device = resolve_device(cfg.device)
    precision = precision_name(resolve_amp(cfg.amp, device))
    rates = matmul_rates(device, repeats, compared_precisions(device, precision))
    path = cfg.run_root / "results.json"
    note = ""
    if path.is_file() and not attach_measurements(rows, json.loads(path.read_text(encoding="utf-8")), cfg, precision):
        note = f"\n- {path} was made with other settings or in another precision; its times are not compared."
    title = f"reproduce --task {get_task(cfg.task).name}, seeds {','.join(map(str, cfg.seeds))}"
    return format_budget(rows, rates, precision, device_words(device), title) + note


def device_words(device: torch.device) -> str:
    """The device in words: "cpu, 2 threads", "cuda", "mps"."""
    threads = torch.get_num_threads()
    return f"{device}, {threads} thread{'s' * (threads > 1)}" if device.type == "cpu" else str(device)


__all__ = ["forward_flops", "matmul_gflops", "default_matmul_size", "StageBudget", "count_evaluations", "run_flops",
           "inference_flops", "reproduce_budget", "attach_measurements", "format_budget", "matmul_rates",
           "compared_precisions", "estimate", "device_words"]
