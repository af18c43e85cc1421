"""FLOPs counted from the model's layers while it runs (forward hooks), not by hand.

A Conv2d producing [N,Cout,Ho,Wo] costs 2*Cin*Cout*kh*kw*Ho*Wo*N/groups FLOPs (one
multiply + one add per MAC; the bias and the element-wise ops are not counted, as usual).
Counting during a real run gives the work actually done, e.g. 1 feature extraction per
frame in a feature-reusing stream instead of 5.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn


def count_conv_flops(model: nn.Module, run: Callable[[], Any]) -> tuple[int, Any]:
    """(FLOPs of every Conv2d of ``model`` during ``run()``, run's result)."""
    total = 0

    def hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        n, cout, ho, wo = output.shape
        total += 2 * module.in_channels * cout * kh * kw * ho * wo * n // module.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        result = run()
    finally:
        for handle in handles:
            handle.remove()
    return total, result


def conv_flops_per_window(model: nn.Module, height: int, width: int) -> int:
    """FLOPs of one forward pass of one 5-frame window (the model's own forward)."""
    frames = torch.rand(1, 5, 3, height, width)
    with torch.inference_mode():
        flops, _ = count_conv_flops(model, lambda: model(frames))
    return flops


def cross_check_with_flop_counter(model: nn.Module, height: int, width: int) -> int | None:
    """torch.utils.flop_counter's count of the same forward pass (None if unavailable)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    frames = torch.rand(1, 5, 3, height, width)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(frames)
    return int(counter.get_total_flops())


def stream_flops_per_frame(upscaler, frames: list[np.ndarray]) -> float:
    """Conv FLOPs actually executed per output frame by ``upscaler.stream``."""
    flops, outputs = count_conv_flops(upscaler.model, lambda: list(upscaler.stream(iter(frames))))
    return flops / len(outputs)
