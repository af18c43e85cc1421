"""Data-parallel training: what one worker of a group of N needs on top of the single-process Trainer.

``Trainer(..., parallel=DataParallel.from_process_group(device))`` stays the one training loop;
with it, each worker

- trains a DDP wrap of its model: gradients are averaged across the workers during the
  backward pass of a step's last micro-batch; the other micro-batches run under ``no_sync``
  (no communication), so a step sends the gradients once, whatever ACCUMULATION_STEPS is;
- reads its own deterministic share of every micro-batch (``ContinuingSampler(rank, workers)``):
  N workers x BATCH_SIZE see exactly the samples of one process with N x BATCH_SIZE;
- agrees with the others once per step, in one all-reduce of a few floats: a NaN/Inf loss on
  any worker skips the step on every worker (every worker still runs every forward and backward
  pass of the step, so DDP's collective calls stay in step; the gradients are dropped), and the
  losses and the per-layer activity become their means over all workers (= over the whole
  global batch, since every worker has the same batch size);
- validates on rank 0 only, which hands its result (without the image) to the others, so every
  worker's hooks see the same metrics;
- writes checkpoints and TensorBoard on rank 0 only (the weights are the same on every worker).

Effective batch = BATCH_SIZE x ACCUMULATION_STEPS x N. The learning rate is not changed with N
unless a scaling rule is asked for (``scaled_lr_exponent``): ``linear`` multiplies it by N (Goyal
et al., for SGD-like updates), ``sqrt`` by sqrt(N) (the usual choice for Adam-type optimizers);
the rule is applied once, to LR_EXPONENT at launch, so checkpoints record the LR really used.

With N = 1 none of this is used: the Trainer runs without a ``DataParallel`` (no process group,
no wrap, no all-reduce).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vsr_core.archs import VSRPPPv2
from vsr_core.config import TrainConfig

LR_SCALING_RULES = ("none", "sqrt", "linear")


def add_worker_args(group) -> None:
    """The resources and LR rule of data-parallel workers, for ``vsr train --workers N`` and
    ``tune/search.py --workers-per-trial N`` (an argparse parser or argument group)."""
    group.add_argument("--cpus-per-worker", type=float, default=1, help="with N > 1: CPUs per worker (torch "
                       "threads follow)")
    group.add_argument("--gpus-per-worker", type=float, default=0, help="with N > 1: GPUs per worker (1 on a GPU "
                       "cluster)")
    group.add_argument("--lr-scaling", choices=LR_SCALING_RULES, default="none",
                       help="with N > 1: scale the LR by N (linear) or sqrt(N) (sqrt); default none. In a sweep the "
                       "searched and summarised LR stays the unscaled one")


def scaled_lr_exponent(lr_exponent: float, workers: int, rule: str = "none") -> float:
    """LR_EXPONENT for ``workers`` data-parallel workers under ``rule`` (see the module docstring)."""
    if rule not in LR_SCALING_RULES:
        raise ValueError(f"LR scaling rule must be one of {list(LR_SCALING_RULES)}, got {rule!r}")
    factor = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[rule]
    return lr_exponent + factor * math.log10(workers)


def effective_batch_text(config: TrainConfig, workers: int) -> str:
    """The effective batch (windows per optimizer step) and how it is made, for the console and TensorBoard."""
    b, a = config.batch_size, config.accumulation_steps
    return f"effective batch {b} x {a} x {workers} = {b * a * workers} (BATCH_SIZE x ACCUMULATION_STEPS x workers)"


class DataParallel:
    """This worker's place in an initialized process group (gloo on CPU, NCCL on CUDA) and the
    few collective operations the Trainer needs."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        if world_size < 2:
            raise ValueError(f"data-parallel training needs at least 2 workers, got {world_size}")
        self.rank, self.world_size, self.device = rank, world_size, device

    @classmethod
    def from_process_group(cls, device: torch.device) -> "DataParallel":
        if not dist.is_initialized():
            raise RuntimeError("no torch.distributed process group: start the workers with Ray Train "
                               "(vsr train --workers N) or call torch.distributed.init_process_group first")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: VSRPPPv2) -> DistributedDataParallel:
        """DDP around ``model`` (its parameters are broadcast from rank 0 here). The optimizer and
        the checkpoints keep using ``model`` itself, so state-dict keys carry no ``module.`` prefix."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)  # no buffers

    @staticmethod
    def micro_batch(wrapped: DistributedDataParallel, final: bool):
        """The context of one micro-batch's forward and backward: gradients are only accumulated
        locally (``no_sync``) except on the step's final micro-batch, whose backward all-reduces them."""
        return contextlib.nullcontext() if final else wrapped.no_sync()

    def agree(self, finite: bool, sums: torch.Tensor, model: VSRPPPv2) -> tuple[bool, torch.Tensor]:
        """One all-reduce per step, before the final backward: whether every worker's losses were
        finite, the loss sums averaged over the workers, and (written back into the blocks) the
        layer activity averaged over the workers."""
        blocks = model.heavy_blocks
        activity = [b.last_activity if b.last_activity is not None else torch.tensor(math.nan) for b in blocks]
        packed = torch.cat([sums.float(), torch.tensor([0.0 if finite else 1.0], device=sums.device),
                            torch.stack(activity).float().to(sums.device)])
        dist.all_reduce(packed)
        packed /= self.world_size
        for block, value in zip(blocks, packed[4:]):
            block.last_activity = value
        return bool(packed[3] == 0), packed[:3]

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every worker (a small picklable object, e.g. validation metrics)."""
        sent = value
        if dataclasses.is_dataclass(value) and getattr(value, "image", None) is not None:
            sent = dataclasses.replace(value, image=None)  # the preview image stays on rank 0
        holder = [sent]
        dist.broadcast_object_list(holder, src=0)
        return value if self.is_main else holder[0]
