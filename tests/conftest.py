"""Shared test fixtures: a tiny random BERT checkpoint and tiny synthetic GLUE data, both written to tmp_path.

    tiny_checkpoint   -> dir with config.json, model.safetensors, vocab.txt (hidden 32, 2 layers, 4 heads)
    tiny_glue         -> GLUE root with MRPC (pairs, labels 0/1) and STS-B (pairs, float scores) train/dev files
    tiny_env          -> both, with $GLUE_DIR and $PEA_KD_CACHE_DIR (features cache) pointing into tmp_path
    single_thread     -> torch.set_num_threads(1) for the test (and OMP_NUM_THREADS=1 for its subprocesses)

Why single_thread: on this 2-core machine, with other processes busy, torch's 2 intra-op threads spin-wait on each
other for every tiny op; a tiny-model training test then takes 36 s instead of 0.4 s. Use it in a test module with
`pytestmark = pytest.mark.usefixtures("single_thread")`.

The plain functions `write_tiny_checkpoint` / `write_tiny_glue` are importable for tests that need other shapes;
`write_slow_cli` writes a `python -m pea_kd` stand-in with a loss "slow" that sleeps, for tests that must meet a run
(kill it, or start a second one) in the middle.
Add fixtures here; do not remove others'.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bert_mini import BertConfig, BertModel, BertTokenizer, save_pretrained

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a cat dog sat ran on mat big small red blue good bad fast slow house tree car road sun moon "
         "same different yes no").split()
TINY_CONFIG = dict(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=64)
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"


def write_tiny_checkpoint(directory, seed: int = 0, **overrides) -> Path:
    """A random tiny pre-trained BERT (no task head) in HF layout with a WordPiece vocab of whole words."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    vocab = directory.parent / f".{directory.name}-vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    save_pretrained(BertModel(BertConfig(**{**TINY_CONFIG, **overrides})), directory, tokenizer=BertTokenizer(vocab))
    return directory


def _sentence(rng, n) -> str:
    return " ".join(rng.choice(WORDS[:-4], size=n))


def write_tiny_glue(root, n_train: int = 64, n_dev: int = 24, seed: int = 0) -> Path:
    """MRPC and STS-B train/dev files with a learnable signal: label 1 / high score iff sentence 2 ends in "same"."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        mrpc, stsb = [], []
        for i in range(n):
            label = int(rng.integers(0, 2))
            a = _sentence(rng, int(rng.integers(3, 12)))
            b = _sentence(rng, int(rng.integers(2, 8))) + (" same" if label else " different")
            mrpc.append(f"{label}\t{i}\t{i + 1000}\t{a}\t{b}")
            stsb.append(f"{i}\tmain-news\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{4.0 * label + rng.random():.3f}")
        for task, header, rows in (("MRPC", MRPC_HEADER, mrpc), ("STS-B", STSB_HEADER, stsb)):
            (root / task).mkdir(parents=True, exist_ok=True)
            (root / task / f"{split}.tsv").write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    return write_tiny_checkpoint(tmp_path / "tiny-bert")


@pytest.fixture
def tiny_glue(tmp_path) -> Path:
    return write_tiny_glue(tmp_path / "glue")


@pytest.fixture
def tiny_env(tmp_path, tiny_checkpoint, tiny_glue, monkeypatch):
    """(checkpoint dir, GLUE root) with $GLUE_DIR and $PEA_KD_CACHE_DIR set inside tmp_path."""
    monkeypatch.setenv("GLUE_DIR", str(tiny_glue))
    monkeypatch.setenv("PEA_KD_CACHE_DIR", str(tmp_path / "features-cache"))
    return tiny_checkpoint, tiny_glue


@pytest.fixture
def single_thread(monkeypatch):
    """One intra-op thread (tiny models gain nothing from more, and lose a lot under CPU contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


SLOW_CLI = '''
import sys, time, torch
from pea_kd.losses import LossResult, register_loss

@register_loss("slow")
def slow(inputs):
    """Adds 0 and sleeps, so that another process can meet the run in the middle."""
    time.sleep({seconds})
    return LossResult(torch.zeros(()), {{"slow": 0.0}})

from pea_kd.cli import main
sys.exit(main(sys.argv[1:]))
'''


def write_slow_cli(path, seconds: float) -> Path:
    """Write the CLI with the loss "slow" (0, after sleeping `seconds` per step) to `path`; use "--loss ce+slow"."""
    path = Path(path)
    path.write_text(SLOW_CLI.format(seconds=seconds), encoding="utf-8")
    return path
