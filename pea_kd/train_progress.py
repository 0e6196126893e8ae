"""Machinery: what a training run shows while it trains: one tqdm bar and a line per dev evaluation.

The bar counts optimiser steps and shows the mean training loss since the last evaluation, examples and real
tokens per second. It is shown when TrainConfig.progress says so (None: when stderr is a terminal), by rank 0 only
under torchrun; without it, evaluation lines go to the log. Under reproduce's overall bar it is cleared when done.
"""
from __future__ import annotations

import logging
import sys
from typing import Optional

from tqdm.auto import tqdm

from . import distributed

log = logging.getLogger("pea_kd.trainer")  # the trainer's lines, as before this module held them


class TrainingBar:
    """The bar of one run named `name`, `total` steps long, starting at step `initial` (a resumed run)."""

    def __init__(self, total: int, initial: int, name: str, progress: Optional[bool]):
        self.show = (progress if progress is not None else sys.stderr.isatty()) and distributed.is_main()
        # leave=None: kept on screen when it is the only bar, cleared when it runs under reproduce's overall bar
        self.bar = tqdm(total=total, initial=initial, disable=not self.show, unit="step", desc=f"train {name}",
                        leave=None)

    def update(self, state) -> None:
        """One step done: the running loss and throughput of `state` (checkpoints.LoopState)."""
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{state.loss_sum / state.loss_count:.4f}", refresh=False,
                             ex_s=f"{state.examples / state.train_seconds:.1f}",
                             tok_s=f"{state.tokens / state.train_seconds:.0f}")

    def close(self) -> None:
        self.bar.close()


def report(line: str, bar: Optional[TrainingBar]) -> None:
    """An evaluation line: above the bar when one is shown, else to the log."""
    if bar is not None and bar.show:
        bar.bar.write(line)
    else:
        log.info(line)
