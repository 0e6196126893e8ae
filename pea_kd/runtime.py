"""Where and how reproducibly code runs: seeding, device and mixed-precision choice, RNG snapshots.

Nothing here knows about training; `pea_kd.trainer` and the stages build on it.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import random
import sys
from typing import Optional

import numpy as np
import torch

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def native_bf16(device) -> bool:
    """True when `device` (a torch.device or its name) computes bf16 matrix products in hardware.

    CUDA: torch.cuda.is_bf16_supported() (Ampere and later). CPU: oneDNN's own check for AVX512-BF16, AMX or Arm
    BF16 (torch.ops.mkldnn._is_mkldnn_bf16_supported). Without them bf16 is emulated and slower than fp32: on an
    AVX2-only AMD EPYC the trainer's FT and SPS + PKD stages ran 14-21x slower in bf16 (docs/performance.md,
    "Mixed precision (bf16)").
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


AUTO_BF16_ENV = "PEA_KD_AUTO_BF16"


def auto_bf16(device) -> bool:
    """Whether `--amp auto` computes in bf16 on `device`: native_bf16(device), unless $PEA_KD_AUTO_BF16 decides.

    PEA_KD_AUTO_BF16=1: auto picks bf16, as on a device with native bf16 (where the device has none, bf16 is
    emulated: slower, and a warning says so); =0: auto never picks bf16 (fp32 on CPU, fp16 on CUDA). On MPS auto
    stays fp32 either way. The tests use it to run as on a CPU with and without native bf16 (`make test-cpus`). It
    changes the choice only, never what native_bf16 reports. ValueError (one line) for another value.
    """
    value = os.environ.get(AUTO_BF16_ENV, "")
    if value == "":
        return native_bf16(device)
    if value not in ("0", "1"):
        raise ValueError(f"${AUTO_BF16_ENV}={value!r}: expected 1 (--amp auto picks bf16), 0 (it never does) or "
                         "unset (native bf16 decides)")
    if value == "1" and not native_bf16(device):
        log.warning("%s=1: --amp auto uses bf16 on %s, which has no native bf16 (emulated, slower than fp32)",
                    AUTO_BF16_ENV, device)
    return value == "1"


DEVICE_TYPES = ("cpu", "cuda", "mps")  # what pea-kd trains on; "auto" tries them in the order cuda, mps, cpu


def mps_available() -> bool:
    """Whether this torch can run on an Apple-silicon GPU now (built with MPS and the device present)."""
    return torch.backends.mps.is_available()


def mps_bf16() -> bool:
    """Whether MPS tensors can be bf16 here: Metal's bfloat16 type needs macOS 14 or newer."""
    return mps_available() and torch.backends.mps.is_macos_or_newer(14, 0)


def resolve_device(name: str = "auto") -> torch.device:
    """The device called `name`: "auto" = cuda when available, else mps (Apple silicon), else cpu; otherwise as torch
    reads it ("cuda:1", "mps"). ValueError (one line) for a name torch does not know, a device type pea-kd does not
    train on, or a CUDA/MPS device this machine does not have."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"device {name!r}: pea-kd trains on cpu, cuda or mps (Apple silicon); use --device auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this machine has no CUDA GPU (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not mps_available():
        why = ("this torch build has no MPS support (torch.backends.mps.is_built() is False)"
               if not torch.backends.mps.is_built() else "no Apple-silicon GPU is available (macOS 12.3+ on an "
               "M-series Mac; torch.backends.mps.is_available() is False)")
        raise ValueError(f"device {name!r}: {why}; use --device cpu or auto")
    if device.type == "mps" and (device.index or 0) > 0:
        raise ValueError(f"device {name!r}: a Mac has one MPS device; use --device mps")
    return device


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of a run, or None for float32 throughout.

    "auto": bf16 where the device runs it natively (auto_bf16: native_bf16, or $PEA_KD_AUTO_BF16); else fp16 on CUDA
        (with a GradScaler), fp32 on CPU.
        On MPS (Apple silicon) fp32: no 16-bit training on MPS was measured in this project, whether an Apple GPU
        has bf16 in hardware depends on the chip and torch cannot tell, and fp32 is the precision of the project's
        measured tables. fp16 and bf16 are there to be asked for.
    "bf16": bf16 autocast (a warning where it is only emulated or not measured); on MPS it needs macOS 14 (Metal's
        bfloat16 type), an older macOS is refused.
    "fp16": CUDA or MPS, with a GradScaler (torch ships the scaler's kernels for both); refused on CPU.
    "off": fp32.
    Under autocast the master weights and the optimiser state stay fp32; only the matrix products run in 16 bits.
    """
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "mps":
            return None
        if auto_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    if amp == "fp16":
        if device.type not in ("cuda", "mps"):
            raise ValueError(f"--amp fp16 needs a CUDA device or mps (it trains with a GradScaler); on {device} use "
                             "--amp bf16 or --amp off")
        return torch.float16
    if amp == "bf16":
        if device.type == "mps" and not mps_bf16():
            raise ValueError("--amp bf16 on mps needs macOS 14 or newer (Metal's bfloat16 type); use --amp fp16 or "
                             "--amp off")
        if device.type == "mps":
            log.warning("amp=bf16 on mps: not measured in this project; --amp off (the default there) is fp32")
        elif not native_bf16(device):
            log.warning("amp=bf16 on %s: this device has no native bf16, so it is emulated and slower than fp32",
                        device)
        return torch.bfloat16
    raise ValueError(f"amp must be auto, bf16, fp16 or off, got {amp!r}")


ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
# oneDNN (torch's bf16 matrix products on the CPU) compiles a kernel for every shape it meets and keeps the last 1,024
# by default. Every batch has its own padded length, so a training stage meets a hundred lengths, each with its own
# forward and backward kernels: after 30 steps of MRPC (bf16) they held 0.3 GB more than 64 kernels do, and a full
# stage meets more lengths (the teacher stage of a bf16 MRPC reproduction: 2.3 GB at peak with 64, 3.6 GB with
# 1,024). 16 keep those of the current length; a length met again has its kernels compiled afresh. Pea-KD's
# distillation on MRPC (3 epochs, bf16): 2,062 MB at peak with 16 against 2,243 MB with 64, for no more CPU time
# (803 against 833 s, run side by side); 64 against 1,024 cost about 10% more CPU over 60 steps (docs/performance.md).
# oneDNN reads the variable once, at its first kernel: set here, on import, unless the user set it.
ONEDNN_CACHE_CAPACITY = 16
os.environ.setdefault(ONEDNN_CACHE_ENV, str(ONEDNN_CACHE_CAPACITY))

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
KEPT_FREE_BYTES = 1 << 30  # freed memory at the top of the heap glibc keeps for reuse instead of returning it


def keep_freed_memory() -> bool:
    """Start a training stage on a clean heap, and serve its large tensors from the heap (glibc Linux; else a no-op).

    Two things, at every call (the trainer calls it once per stage, when it is built):

    1. Give back what earlier stages freed: gc.collect(), then malloc_trim(0), which returns every free page of the
       heap to the OS, the ones between blocks still in use included. Without it a process that runs many stages
       (`reproduce`: 19) never shrinks: each stage's tensors of other sizes leave holes that stay resident, and a
       later stage that cannot reuse them grows the heap further. With it the process peaks at its largest stage.
    2. Keep this stage's freed memory for its next step: glibc hands every allocation above 32 MB (the ceiling of
       its mmap threshold) a fresh mmap and unmaps it on free, so a tensor of that size made anew each step is faulted
       in page by page every time. The word-embedding gradient is one: dense (vocabulary x H, 47 MB for 30,522 x
       384), allocated in every backward pass and freed by zero_grad; allocating and zeroing it took 100-140 ms
       (11,450 page faults) on a loaded 2-core VM against 10-20 ms from the heap. mallopt(M_MMAP_MAX, 0) takes such
       blocks from the heap instead, and a 1 GiB M_TRIM_THRESHOLD keeps freed memory there for the next step.

    Process-wide. True when set, False where malloc is not glibc's.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    gc.collect()  # objects of the previous stage held only by reference cycles
    malloc_trim(0)
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_FREE_BYTES))


def non_blocking(device: torch.device) -> bool:
    """Whether host-to-device copies may be asynchronous: on CUDA only. On MPS an asynchronous copy of a CPU tensor
    that is freed right after (a batch) can read released memory and silently corrupt the data (pytorch #189690)."""
    return device.type == "cuda"


PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def precision_name(amp_dtype: Optional[torch.dtype]) -> str:
    """How a run computed: "fp32" (no autocast), "bf16" or "fp16" (autocast dtype; weights and loss in fp32)."""
    return PRECISION_NAMES[amp_dtype]


def precision_note(device="cpu") -> str:
    """One line that says how `device` computes here, for the first output of a notebook: forward passes without
    autocast are fp32; what training with --amp auto uses (auto_bf16); the CPU's kernels (their last bits differ
    between AVX2, AVX-512 and ATEN_CPU_CAPABILITY=default) or the GPU's name; native bf16 or not."""
    device = torch.device(device)
    hardware = (f"{torch.backends.cpu.get_cpu_capability()} CPU kernels" if device.type == "cpu"
                else torch.cuda.get_device_name(device) if device.type == "cuda" else device.type)
    forced = f", {AUTO_BF16_ENV}={os.environ[AUTO_BF16_ENV]}" if os.environ.get(AUTO_BF16_ENV) else ""
    return (f"precision: forward passes fp32, training with --amp auto {precision_name(resolve_amp('auto', device))} "
            f"({hardware}, native bf16: {'yes' if native_bf16(device) else 'no'}{forced})")


def rng_state() -> dict:
    """Every random generator's state (python, numpy, torch, CUDA, MPS), for a checkpoint."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "mps": torch.mps.get_rng_state() if mps_available() else None}


def set_rng_state(rng: dict) -> None:
    """Restore what rng_state() returned: the run continues with the same random draws."""
    random.setstate(rng["python"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if rng.get("mps") is not None and mps_available():  # absent from checkpoints written before MPS support
        torch.mps.set_rng_state(rng["mps"])
