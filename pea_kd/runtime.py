"""Where and how reproducibly code runs: seeding, device and mixed-precision choice, RNG snapshots, atomic files.

Nothing here knows about training; `pea_kd.trainer` and the stages build on it.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """The device called `name`: "auto" = cuda when available, else cpu; otherwise as torch reads it ("cuda:1")."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype: bf16/fp16 on CUDA ("auto": bf16 when supported), None (fp32) on CPU or with "off"."""
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16"):
            log.warning("amp=%s ignored on %s: training in float32", amp, device)
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def write_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never half of it (tmp + os.replace)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def rng_state() -> dict:
    """Every random generator's state (python, numpy, torch, CUDA), for a checkpoint."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(rng: dict) -> None:
    """Restore what rng_state() returned: the run continues with the same random draws."""
    random.setstate(rng["python"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
