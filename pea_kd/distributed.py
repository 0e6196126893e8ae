"""Data-parallel training over several processes: what `torchrun --nproc_per_node=W -m pea_kd ...` changes.

torchrun starts W copies of the command (ranks r = 0..W-1, one device each). Every rank holds the whole model and
walks the same global batches (make_batches depends only on (seed, epoch)); rank r trains on its share, n_r of the
N examples of each global batch (`share`), so --batch-size keeps meaning the global batch B = N:

    L   = sum_r (n_r / N) L_r                  the mean over the global batch; L_r the mean over rank r's share
    DDP averages the gradients over ranks:  g = 1/W sum_r grad(w_r L_r)
    with w_r = W n_r / N:                   g = sum_r (n_r / N) grad L_r = grad L

so g is the 1-process gradient of the same batch, up to the order of the floating-point sums (exact for losses that
are means over examples: CE, MSE, KD, PKD; a loss averaged over tokens, e.g. attention KD, is weighted by examples).
Every rank then holds the same g, clips it by the same norm and takes the same AdamW step: the weights stay equal.

Rank 0 alone evaluates and writes (log.jsonl, checkpoint.pt, final/, result.json, the teacher cache); the others wait
at a barrier and read what it wrote, so the run directory must be on a file system that every machine sees.
Backend: gloo on CPU; on a CUDA machine NCCL for CUDA tensors (and gloo for CPU ones), each rank on GPU LOCAL_RANK.
MPS (Apple silicon) is refused under torchrun (check_device): no backend handles MPS tensors.

A plain `python -m pea_kd ...` has no process group: every function here is then a no-op (rank 0 of 1).
"""
from __future__ import annotations

import atexit
import datetime
import logging
import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from .runtime import rng_state

log = logging.getLogger(__name__)


def init_from_env() -> bool:
    """Join the process group that torchrun describes (WORLD_SIZE > 1 in the environment); False for a plain run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" now means this rank's own GPU
    # timeout: the other ranks may wait this long while rank 0 alone computes the teacher cache or evaluates
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo",
                            timeout=datetime.timedelta(hours=1))
    atexit.register(_leave)
    if rank() > 0:  # the ranks do the same thing: rank 0's log lines are enough
        logging.getLogger().setLevel(logging.WARNING)
    log.info("data-parallel: %d processes, backend %s", world_size(), dist.get_backend())
    return True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes files and evaluates: rank 0, or the only process."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here."""
    if is_distributed():
        dist.barrier()


@contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. computes a missing cache); the others wait, then run it (and read it)."""
    if not is_main():
        barrier()
    yield
    if is_main() and is_distributed():
        barrier()


def check_device(device: torch.device) -> None:
    """Refuse, in one line, a device that data-parallel training cannot use: MPS under torchrun. torch.distributed has
    no backend for MPS tensors (gloo, the one for non-CUDA tensors, handles CPU and CUDA: Backend.backend_capability),
    and a Mac has one GPU to share anyway."""
    if is_distributed() and device.type == "mps":
        raise ValueError("under torchrun the processes train on cpu or cuda: torch.distributed has no backend for MPS "
                         "tensors; pass --device cpu, or train on mps in one plain process (python -m pea_kd)")


def wrap(model: torch.nn.Module, loss_fn: torch.nn.Module) -> torch.nn.Module:
    """`model` in DistributedDataParallel (its backward averages the gradients over ranks), or itself when alone.

    The raw model stays the one to evaluate, save and load; DDP shares its parameters and sends rank 0's at start.
    A loss's own parameters (a projection; outside DDP, see average_gradients) are sent from rank 0 here.
    """
    if not is_distributed():
        return model
    for p in loss_fn.parameters():
        dist.broadcast(p.data, src=0)
    device = next(model.parameters()).device
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        raise ValueError(f"under torchrun every process uses its own GPU (LOCAL_RANK); got device {device} on rank "
                         f"{rank()}: pass --device auto or cuda")
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False)  # the buffers (position ids) never change: nothing to send at each forward


def share(indices: np.ndarray) -> tuple[np.ndarray, float]:
    """This rank's share of a global batch and its loss weight w_r = W n_r / N; (indices, 1.0) when alone.

    Strided (rank r takes examples r, r+W, ...): a length-sorted batch gives every rank similar lengths. When the
    batch has fewer examples than ranks, a rank with none runs the first example with weight 0, because every
    rank must take part in the gradient all-reduce.
    """
    if not is_distributed():
        return indices, 1.0
    mine = indices[rank()::world_size()]
    if len(mine) == 0:
        return indices[:1], 0.0
    return mine, world_size() * len(mine) / len(indices)


def average_gradients(module: torch.nn.Module) -> None:
    """Average the gradients of parameters that DDP does not manage (a loss's own projection) over the ranks."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not is_distributed() or not grads:
        return
    for g in grads:
        dist.all_reduce(g)
        g.div_(world_size())


def reduce_batch(total: torch.Tensor, parts: dict, tokens: int, weight: float) -> tuple[float, dict, int]:
    """The global batch's loss, loss parts (sum_r (n_r/N) L_r = 1/W sum_r w_r L_r) and real tokens (a sum).

    Every rank gets the same numbers, so a NaN on one rank stops all of them at the same step.
    """
    if not is_distributed():
        return float(total), {k: float(v) for k, v in parts.items()}, tokens
    keys = sorted(parts)
    values = torch.tensor([float(total), *(float(parts[k]) for k in keys), 0.0], dtype=torch.float64) * weight
    values[-1] = tokens if weight else 0  # a rank with an empty share ran a stand-in example: count no tokens
    dist.all_reduce(values)
    means = (values[:-1] / world_size()).tolist()
    return means[0], dict(zip(keys, means[1:])), int(values[-1])


def agree(flag: bool) -> bool:
    """Rank 0's `flag` on every rank (a decision taken from one clock, e.g. whether a checkpoint is due); `flag`
    itself when alone. A collective: every rank must call it."""
    if not is_distributed():
        return flag
    decision = torch.tensor([int(flag)])
    dist.broadcast(decision, src=0)  # a CPU tensor: gloo, also beside NCCL
    return bool(decision.item())


def seed_per_rank(seed: int) -> None:
    """Give every rank other dropout masks: rank r > 0 reseeds torch with seed + r * 2^32 (rank 0 keeps `seed`)."""
    if rank() > 0:
        torch.manual_seed(seed + (rank() << 32))


def checkpoint_fields() -> dict:
    """What a checkpoint needs under torchrun: the world size and every rank's RNG states; {} when alone.

    A collective: every rank must call it; only rank 0 receives the RNG states of the others.
    """
    if not is_distributed():
        return {}
    states = [None] * world_size() if is_main() else None
    dist.gather_object(rng_state(), states, dst=0)
    return {"world_size": world_size(), "rng_per_rank": states}


def check_resume(ckpt: dict, path) -> None:
    """Refuse, in one line, a checkpoint written by another number of processes."""
    saved = ckpt.get("world_size", 1)
    if saved != world_size():
        how = "plain python -m pea_kd" if saved == 1 else f"torchrun --nproc_per_node={saved} (in all)"
        raise ValueError(f"{path}: cannot resume: written by {saved} process(es), this run has {world_size()}; "
                         f"resume with {how}")


def rank_rng(ckpt: dict) -> dict:
    """This rank's RNG states in a checkpoint (the only ones when it was written by one process)."""
    return ckpt["rng_per_rank"][rank()] if "rng_per_rank" in ckpt else ckpt["rng"]

