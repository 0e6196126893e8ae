"""Where and how reproducibly code runs: seeding, device and mixed-precision choice, RNG snapshots.

Nothing here knows about training; `pea_kd.trainer` and the stages build on it.
"""
from __future__ import annotations

import logging
import random
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
    """The device called `name`: "auto" = cuda when available, else cpu; otherwise as torch reads it ("cuda:1").
    ValueError (one line) for a name torch does not know or a CUDA device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this machine has no CUDA GPU (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype: bf16/fp16 on CUDA ("auto": bf16 when supported), None (fp32) on CPU or with "off"."""
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16"):
            log.warning("amp=%s ignored on %s: training in float32", amp, device)
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


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
