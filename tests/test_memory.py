"""pea_kd.runtime.keep_freed_memory: a stage keeps its freed heap for its next step, the next stage starts with it
given back. Own processes: the allocator settings are process-wide."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pea_kd.runtime import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")

STAGES_SCRIPT = """
import torch
from pea_kd.runtime import keep_freed_memory

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))

assert keep_freed_memory()  # stage 1 starts
start = rss_mb()
tensors = [torch.ones(n) for n in range(10_000_000, 12_000_000, 100_000)]  # 20 blocks of 38-46 MB: 880 MB
pin = torch.ones(1_000)  # a small block after them in the heap: freeing them cannot shrink the heap from its top
grown = rss_mb()
del tensors
kept = rss_mb()  # stage 1 keeps the freed memory for its next step
assert keep_freed_memory()  # stage 2 starts
print(start, grown, kept, rss_mb())
"""


@pytest.mark.skipif(not GLIBC, reason="keep_freed_memory sets glibc's malloc; elsewhere it is a no-op")
def test_a_stage_keeps_its_freed_memory_and_the_next_stage_starts_without_it():
    """880 MB of tensors made and freed in one stage stay resident for that stage's next step (no page faults),
    and are returned to the OS when the next stage starts (malloc_trim), although a block still in use lies above
    them. A process that runs many stages (reproduce) then peaks at its largest stage, not at their sum."""
    out = subprocess.run([sys.executable, "-c", STAGES_SCRIPT], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    start, grown, kept, next_stage = map(float, out.stdout.split())
    assert grown - start > 800  # the tensors were written: resident
    assert kept > grown - 50  # freed, and still resident: the next step reuses these pages
    assert next_stage < start + 50  # given back


def _stage_rss(megabytes: int) -> tuple[int, float]:
    """A stand-in stage: as the trainer does, keep freed memory in the heap (keep_freed_memory), make and free
    `megabytes` MB of tensors, then return (pid, VmRSS in MB)."""
    import torch
    assert keep_freed_memory()
    tensors = [torch.ones(megabytes << 16) for _ in range(4)]  # 4 float32 blocks of megabytes / 4 MB
    pin = torch.ones(1_000)  # noqa: F841  a block above them: the heap's top cannot move down past it
    del tensors
    with open("/proc/self/status") as f:
        return os.getpid(), next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not GLIBC, reason="keep_freed_memory sets glibc's malloc; elsewhere freed memory may be unmapped")
def test_every_stage_of_reproduce_runs_in_a_fresh_process_also_with_one_job():
    """executor(1, ...) (reproduce's default --jobs 1) gives each stage its own spawned process: the second stage
    does not inherit the memory the first one left resident, nor its process."""
    from pea_kd.parallel import executor
    with executor(1, 1) as pool:
        first_pid, first_rss = pool.submit(_stage_rss, 800).result()
        second_pid, second_rss = pool.submit(_stage_rss, 8).result()
    assert len({first_pid, second_pid, os.getpid()}) == 3
    assert first_rss - second_rss > 600  # the second stage's process never held the first stage's 800 MB


def test_under_torchrun_the_stages_run_in_the_torchrun_process(monkeypatch):
    """Under torchrun the process group lives in this process: the stages run here, not in a spawned worker."""
    from pea_kd import distributed
    from pea_kd.parallel import executor
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with executor(1, 1) as pool:
        assert pool.submit(os.getpid).result() == os.getpid()


ONEDNN_SCRIPT = """
import ctypes, sys
import torch
import pea_kd.runtime  # sets oneDNN's kernel cache, unless the environment did

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2

def live_mb():
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20

w = torch.randn(384, 1536, dtype=torch.bfloat16)
x = torch.randn(32 * 128, 384, dtype=torch.bfloat16)
torch.mm(x[:32], w)
before = live_mb()
for rows in range(64, 32 * 128, 16):  # 252 shapes, as batches of every padded length would make: 252 kernels
    torch.mm(x[:rows], w)
print(live_mb() - before)
"""


@pytest.mark.skipif(not GLIBC, reason="mallinfo2 is glibc's")
def test_onednn_keeps_16_kernels_not_one_for_every_padded_length():
    """pea_kd.runtime caps oneDNN's kernel cache at 16 (a bf16 kernel per shape, 0.3 MB each for this product):
    252 shapes then leave less live memory than with oneDNN's default 1,024, and a capacity the user set is kept."""
    from pea_kd.runtime import ONEDNN_CACHE_ENV, native_bf16
    if not native_bf16("cpu"):
        pytest.skip("bf16 products go through oneDNN where the CPU has native bf16")
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_CACHE_ENV}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def growth(**extra):
        out = subprocess.run([sys.executable, "-c", ONEDNN_SCRIPT], env={**env, **extra}, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return float(out.stdout)
    capped, default = growth(), growth(**{ONEDNN_CACHE_ENV: "1024"})
    assert default - capped > 45  # (252 - 16) kernels of ~0.3 MB
    check = subprocess.run([sys.executable, "-c", "import os, pea_kd.runtime; print(os.environ['" + ONEDNN_CACHE_ENV
                            + "'])"], env={**env, ONEDNN_CACHE_ENV: "7"}, capture_output=True, text=True, timeout=120)
    assert check.stdout.split() == ["7"]


def _raise_directory_in_use(directory):
    from pea_kd.storage import DirectoryInUse
    raise DirectoryInUse(f"{directory} is in use by another process", directory)


def test_in_fresh_process_returns_the_result_and_raises_the_error_of_another_process(tmp_path):
    """reproduce's PTP stage runs through in_fresh_process: its result and its exception (DirectoryInUse with the
    directory that run_shared waits for) come back from the spawned process intact."""
    from pea_kd.parallel import in_fresh_process
    from pea_kd.storage import DirectoryInUse
    assert in_fresh_process(os.getpid) != os.getpid()
    assert in_fresh_process(divmod, 7, 2) == (3, 1)
    with pytest.raises(DirectoryInUse, match="in use by another process") as err:
        in_fresh_process(_raise_directory_in_use, tmp_path / "ptp-sps" / "seed0")
    assert err.value.directory == tmp_path / "ptp-sps" / "seed0"


def test_under_torchrun_in_fresh_process_runs_here(monkeypatch):
    from pea_kd import distributed
    from pea_kd.parallel import in_fresh_process
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    assert in_fresh_process(os.getpid) == os.getpid()
