"""How pea-kd's costs grow with the training set: a synthetic MNLI-sized pair task, distilled on a CPU.

    python -m pea_kd_bench.scale --examples 400000                   one JSON object on stdout (one line)
    python -m pea_kd_bench.scale --examples 4000 --examples 400000   one line per size, the steps timed in alternation

Per size, in a fresh process (so that its peak memory is its own) and a temporary directory removed afterwards:
  data       N training pairs and min(N, 1000) dev pairs of pseudo-words, 3 labels, written as GLUE-style TSV files
             (`SYNTH-NLI/train.tsv`, MNLI-like lengths: ~35 tokens a pair) and read through pea_kd.glue and
             pea_kd.features like any task. The task is a TaskSpec handed to the pipeline, never added to glue.TASKS.
  models     a random-init 6-layer, 32-wide teacher with a 3-class head, and a 3-layer student of the same shape;
             loss kd+pkd with pkd_layer_map(6, 3) = [(1, 2), (2, 4)]: the teacher cache needs layers 2 and 4 of 0..6.
  phases     features_seconds       tokenise train + dev and write the feature cache (load_features, cache empty)
             features_load_seconds  read both back from that cache (what every later stage pays)
             teacher_cache_seconds  ensure_teacher_outputs: the teacher's pass over train + dev, file written
             teacher_cache_bytes    size of teacher_outputs.pt (teacher_cache_layers: the [CLS] layers it holds)
             teacher_cache_check_seconds  ensure_teacher_outputs again: validating the existing cache (per student)
             trainer_build_seconds  Trainer(...), run identity included: median of one build per round (range)
             epoch_batches_seconds  make_batches for one epoch (done once per epoch by the training loop)
             step_ms                mean wall time of the first `steps` (50) optimiser steps of epoch 0, timed in
                                    `rounds` blocks (step_ms_rounds); step_ms_median over the single steps;
                                    step_positions: their mean B x T_max (the batches of two sizes differ in length)
             peak_rss_mb            the process's peak resident memory (VmHWM), also after each phase
                                    (peak_rss_mb_after); file pages of the memory-mapped cache count once touched
With several sizes, each later line also has its ratios to the first size, trainer_build_ratio and step_ms_ratio:
the median over rounds of the two sizes' figures of that round, which ran back to back (*_range = min, max); and
step_cost_ratio, the same for the time per padded token position, which takes the batches' lengths out.

Not timed: the first fused AdamW of a process imports torch._dynamo (2-3 s here), a constant that would hide how
trainer_build grows; a throw-away optimiser pays it before the timed builds. Everything is fp32 on the CPU.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from bert_mini import BertConfig, BertForSequenceClassification, BertTokenizer, save_pretrained
from pea_kd.cli import positive_int
from pea_kd.defaults import configure_logging
from pea_kd.distill import teacher_layers_needed
from pea_kd.feature_cache import CACHE_ENV, load_features
from pea_kd.features import make_batches
from pea_kd.glue import Layout, TaskSpec
from pea_kd.losses import LossConfig, pkd_layer_map
from pea_kd.runtime import set_seed
from pea_kd.teacher import CACHE_FILE, ensure_teacher_outputs
from pea_kd.teacher_rows import TeacherRows
from pea_kd.trainer import TrainConfig, Trainer

from .throughput import _proc_status_mib

COLUMNS = ("index", "sentence1", "sentence2", "label")
TASK = TaskSpec("SYNTH-NLI", ("contradiction", "entailment", "neutral"), ("acc",), "acc",
                {s: (f"{s}.tsv", Layout(COLUMNS, "sentence1", "sentence2", "label")) for s in ("train", "dev")})
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCABULARY = 3000  # pseudo-words, one WordPiece token each
SHAPE = dict(hidden_size=32, num_attention_heads=2, intermediate_size=128, max_position_embeddings=128)
TEACHER_LAYERS, STUDENT_LAYERS, LOSS = 6, 3, "kd+pkd"
BATCH_SIZE, MAX_LENGTH, DEV_EXAMPLES = 32, 128, 1000


def pseudo_words(n: int, seed: int = 0) -> list[str]:
    """n distinct two- and three-syllable lower-case words ("bako", "tirema", ...)."""
    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = {"".join(rng.choice(syllables, size=int(rng.integers(2, 4)))) for _ in range(3 * n)}
    return sorted(words)[:n]


def write_task(glue_dir: Path, n_train: int, words: list[str], seed: int = 0) -> Path:
    """<glue_dir>/SYNTH-NLI/{train,dev}.tsv: pairs of 6-30 and 3-14 pseudo-words (MNLI's premise and hypothesis
    lengths, roughly), uniform labels. Returns glue_dir."""
    rng = np.random.default_rng(seed)
    (glue_dir / TASK.directory).mkdir(parents=True, exist_ok=True)
    vocab = np.array(words)
    for split, n in (("train", n_train), ("dev", min(n_train, DEV_EXAMPLES))):
        first, second = rng.integers(6, 31, n), rng.integers(3, 15, n)
        picks, labels = rng.integers(0, len(words), (n, 44)), rng.integers(0, len(TASK.labels), n)
        rows = (f"{i}\t{' '.join(vocab[picks[i, :first[i]]])}\t{' '.join(vocab[picks[i, 30:30 + second[i]]])}\t"
                f"{TASK.labels[labels[i]]}\n" for i in range(n))
        with open(glue_dir / TASK.directory / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("\t".join(COLUMNS) + "\n")
            f.writelines(rows)
    return glue_dir


class Pipeline:
    """One size, built phase by phase in this process: data, features, teacher cache, trainer; then steps."""

    def __init__(self, examples: int, work_dir: Path, threads: Optional[int] = None):
        if threads:
            torch.set_num_threads(threads)
        self.metrics = {"examples": examples, "dev_examples": min(examples, DEV_EXAMPLES),
                        "threads": torch.get_num_threads(), "device": "cpu", "precision": "fp32",
                        "teacher": {"layers": TEACHER_LAYERS, **SHAPE}, "student_layers": STUDENT_LAYERS,
                        "loss": LOSS, "batch_size": BATCH_SIZE, "peak_rss_mb_after": {}}
        os.environ[CACHE_ENV] = str(work_dir / "features")  # this worker process only
        words = pseudo_words(VOCABULARY)
        glue = self._phase("data", lambda: write_task(work_dir / "glue", examples, words))
        (work_dir / "vocab.txt").write_text("\n".join(SPECIAL + words) + "\n", encoding="utf-8")
        tokenizer = BertTokenizer(work_dir / "vocab.txt")

        def features():
            return [load_features(TASK, split, tokenizer, MAX_LENGTH, glue) for split in ("train", "dev")]
        self._phase("features", features)
        self.train_data, self.dev_data = self._phase("features_load", features)

        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(SPECIAL) + len(words), num_hidden_layers=TEACHER_LAYERS, **SHAPE)
        teacher_dir = work_dir / "teacher"
        save_pretrained(BertForSequenceClassification(config, num_labels=len(TASK.labels)), teacher_dir / "final",
                        tokenizer=tokenizer)
        layers = teacher_layers_needed(teacher_dir, [(LOSS, STUDENT_LAYERS, "original")])

        def cache():
            return ensure_teacher_outputs(teacher_dir, TASK, ("train", "dev"), MAX_LENGTH, glue, device="cpu",
                                          layers=layers)
        self._phase("teacher_cache", cache)
        self.metrics.update(teacher_cache_bytes=(teacher_dir / CACHE_FILE).stat().st_size,
                            teacher_cache_layers=list(layers))
        self.teacher = TeacherRows.from_cache(self._phase("teacher_cache_check", cache), "train")

        self.student = BertForSequenceClassification(BertConfig(**{**config.to_dict(),
                                                                   "num_hidden_layers": STUDENT_LAYERS}),
                                                     num_labels=len(TASK.labels))
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True)  # the one-time import, not timed
        self.work_dir = work_dir
        self.trainer = self._trainer()  # the one that trains; the timed builds come with the steps (rounds)
        self.metrics["peak_rss_mb_after"]["trainer_build"] = _peak_rss_mb()
        seconds, self.batches = self._timed(lambda: make_batches(self.train_data, BATCH_SIZE, True, 0, 0))
        self.metrics["epoch_batches_seconds"] = seconds
        self.next_batch, self.step_seconds, self.step_positions, self.build_seconds = 0, [], [], []
        set_seed(0)

    def _trainer(self) -> Trainer:
        layer_map = pkd_layer_map(TEACHER_LAYERS, STUDENT_LAYERS)
        return Trainer(self.student, self.train_data, self.dev_data, task=TASK, out_dir=self.work_dir / "run",
                       config=TrainConfig(batch_size=BATCH_SIZE, device="cpu", amp="off", progress=False),
                       loss=LOSS, loss_config=LossConfig(layer_map=layer_map), teacher=self.teacher)

    @staticmethod
    def _timed(fn):
        start = time.perf_counter()
        value = fn()
        return time.perf_counter() - start, value

    def _phase(self, name: str, fn):
        """Run fn, record <name>_seconds and the peak RSS so far; return fn's value."""
        seconds, value = self._timed(fn)
        self.metrics[f"{name}_seconds"] = seconds
        self.metrics["peak_rss_mb_after"][name] = _peak_rss_mb()
        return value

    def round(self, count: int) -> tuple[float, list[float], list[int]]:
        """One timed trainer build (identity included; that trainer is discarded, it never steps), then the next
        `count` optimiser steps of epoch 0: (build seconds, each step's seconds, each step's B x T_max positions)."""
        seconds, _ = self._timed(self._trainer)
        self.build_seconds.append(seconds)
        times, positions = [], []
        for _ in range(count):
            batch = self.batches[self.next_batch % len(self.batches)]
            positions.append(len(batch) * int(self.train_data.lengths[batch].max()))  # padded to its longest
            start = time.perf_counter()
            self.trainer.step(batch)
            times.append(time.perf_counter() - start)
            self.next_batch += 1
        self.step_seconds += times
        self.step_positions += positions
        return seconds, times, positions

    def result(self) -> dict:
        builds = self.build_seconds
        return {**self.metrics, "trainer_build_seconds": statistics.median(builds),
                "trainer_build_seconds_range": [min(builds), max(builds)],
                "step_ms": 1000 * statistics.fmean(self.step_seconds),
                "step_ms_median": 1000 * statistics.median(self.step_seconds),
                "step_positions": statistics.fmean(self.step_positions), "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process image's peak resident memory in MiB (VmHWM; getrusage where there is no /proc)."""
    peak = _proc_status_mib("VmHWM")
    if peak is None:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def _worker(conn, examples: int, work_dir: str, threads: Optional[int]) -> None:
    """Subprocess side: build a Pipeline, then answer ("round", k) with a build time and k step times, and "result"
    with the metrics."""
    try:
        pipeline = Pipeline(examples, Path(work_dir), threads)
        conn.send(("ok", None))
        for command, arg in iter(conn.recv, ("stop", None)):
            conn.send(("ok", pipeline.round(arg) if command == "round" else pipeline.result()))
    except Exception as err:  # the parent raises it, with this traceback
        conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        conn.close()


class _Worker:
    """Parent side of one size's process."""

    def __init__(self, examples: int, work_dir: Path, threads: Optional[int]):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.examples = examples
        self.process = ctx.Process(target=_worker, args=(child, examples, str(work_dir), threads), daemon=True)
        self.process.start()
        child.close()
        self.call(None)  # built

    def call(self, command: Optional[tuple]):
        if command is not None:
            self.conn.send(command)
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            raise RuntimeError(f"bench-scale: the {self.examples}-example worker died "
                               f"(exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"bench-scale: the {self.examples}-example worker failed: {value}")
        return value

    def close(self) -> None:
        try:
            self.conn.send(("stop", None))
        except OSError:
            pass
        self.process.join(timeout=60)


def bench_scale(sizes, steps: int = 50, rounds: int = 5, threads: Optional[int] = None, work_dir=None) -> list[dict]:
    """Build every size in its own process (one after another), then run `rounds` rounds in which each size, in
    alternating order (A B, B A, ...), times one trainer build and a block of its `steps` steps, so that the sizes
    compared see the same machine; one metrics dict per size."""
    root = Path(tempfile.mkdtemp(prefix="pea-kd-bench-scale-", dir=work_dir))
    workers = []
    try:
        for i, n in enumerate(sizes):
            workers.append(_Worker(n, root / f"{i}-{n}", threads))
        blocks = [steps // rounds + (r < steps % rounds) for r in range(rounds)]
        builds, means, costs = ({w: [] for w in workers} for _ in range(3))
        for r, block in enumerate(b for b in blocks if b):
            for w in (workers if r % 2 == 0 else workers[::-1]):
                build, times, positions = w.call(("round", block))
                builds[w].append(build)
                means[w].append(1000 * statistics.fmean(times))
                costs[w].append(sum(times) / sum(positions))  # seconds per padded token position
        results = [{**w.call(("result", None)), "step_ms_rounds": means[w]} for w in workers]
        for w, result in zip(workers[1:], results[1:]):
            result["vs_examples"] = results[0]["examples"]
            for key, mine, first in (("trainer_build_ratio", builds[w], builds[workers[0]]),
                                     ("step_ms_ratio", means[w], means[workers[0]]),
                                     ("step_cost_ratio", costs[w], costs[workers[0]])):
                ratios = [a / b for a, b in zip(mine, first)]  # round by round: the same moment of the machine
                result.update({key: statistics.median(ratios), f"{key}_range": [min(ratios), max(ratios)]})
        return results
    finally:
        for w in workers:
            w.close()
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> list[dict]:
    """`python -m pea_kd_bench.scale --examples N [--examples M ...]`: one JSON object per size on stdout."""
    p = argparse.ArgumentParser(prog="python -m pea_kd_bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=positive_int, action="append", required=True, metavar="N",
                   help="training examples of the synthetic pair task; repeat it to compare sizes (each is built in "
                        "its own process, their steps are timed in alternation)")
    p.add_argument("--steps", type=positive_int, default=50, help="optimiser steps timed per size (default 50)")
    p.add_argument("--rounds", type=positive_int, default=5,
                   help="blocks the steps are timed in, the sizes alternating (default 5)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--work-dir", default=None,
                   help="where the temporary GLUE directory and caches go (default: the system's temporary "
                        "directory); removed afterwards")
    args = p.parse_args(None if argv is None else [str(a) for a in argv])
    configure_logging(logging.INFO)
    records = bench_scale(args.examples, args.steps, args.rounds, args.threads, args.work_dir)
    for record in records:
        print(json.dumps(record), flush=True)  # one JSON object per size, one per line
    return records


if __name__ == "__main__":
    main()
