"""How ``Upscaler`` runs the model's forward pass: one runner per backend.

- ``torch``: eager PyTorch under the precision's autocast (the default; the only one that
  reuses per-frame features in a stream).
- ``torch-compile``: ``torch.compile`` (inductor) of the forward, compiled once per input
  shape (batch, height, width) and cached in the runner; a shorter batch of a shape already
  compiled (a clip's last batch) is padded to the compiled batch, so a clip of one frame size
  compiles once. A compile costs tens of seconds on a CPU (benchmarks/README.md): it pays
  for long videos, not for single windows, so the Serve window endpoint never uses it.
- ``onnxruntime``: the model exported to ONNX in memory (``vsr_core.export``, dynamic shapes,
  so one session serves every size) and run by an ONNX Runtime session, fp32.

Every runner maps windows [B,5,3,H,W] in [0,1] to float32 [B,3,3H,3W] on the Upscaler's device.
"""
from __future__ import annotations

import contextlib
import logging
import time

import torch
from torch import nn

from vsr_core.frames import autocast

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-compile", "onnxruntime")
# The precisions each backend can run ("auto" resolves within these).
BACKEND_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "torch-compile": ("fp32", "bf16", "fp16"),
                      "onnxruntime": ("fp32",)}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


class TorchRunner:
    name = "torch"
    reuses_features = True

    def __init__(self, model: nn.Module, device: torch.device, precision: str):
        self.model, self.device, self.precision = model, device, precision

    def context(self) -> contextlib.ExitStack:
        """Where the model runs: the precision's autocast, the layer-activity bookkeeping paused
        (it describes training batches; at inference it is only a cost)."""
        stack = contextlib.ExitStack()
        stack.enter_context(autocast(self.device, self.precision))
        paused = getattr(self.model, "activity_tracking_paused", None)
        if paused is not None:
            stack.enter_context(paused())
        return stack

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        with self.context():
            return self.model(windows).float()


class _Forward(nn.Module):
    """The forward pass under the precision's autocast, as one module to compile."""

    def __init__(self, model: nn.Module, device: torch.device, precision: str):
        super().__init__()
        self.model, self.device, self.precision = model, device, precision

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.model(windows).float()


class CompiledRunner:
    name = "torch-compile"
    reuses_features = False

    def __init__(self, model: nn.Module, device: torch.device, precision: str):
        from vsr_core.export import export_module

        self.device, self.precision = device, precision
        # activity bookkeeping is a side effect the compiled graph should not carry
        self._forward = _Forward(export_module(model).to(device), device, precision)
        self._compiled: dict[tuple[int, int, int], object] = {}  # (batch, H, W) -> compiled forward
        self.compile_seconds: dict[tuple[int, int, int], float] = {}  # first call (= compile) per shape

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        b, _, _, h, w = windows.shape
        compiled_batches = [k[0] for k in self._compiled if k[1:] == (h, w) and k[0] > b]
        if compiled_batches:  # pad to a compiled shape: cheaper than compiling another one
            target = min(compiled_batches)
            pad = windows[-1:].expand(target - b, *windows.shape[1:])
            return self._run((target, h, w), torch.cat([windows, pad]))[:b]
        return self._run((b, h, w), windows)

    def _run(self, shape: tuple[int, int, int], windows: torch.Tensor) -> torch.Tensor:
        fn = self._compiled.get(shape)
        if fn is not None:
            return fn(windows)
        # One compiled module per shape, static shapes: each is specialised to its size (what
        # makes it fast); the per-shape dict keeps every one of them (dynamo's own guard cache
        # would fall back to eager after its recompile limit).
        fn = torch.compile(self._forward, dynamic=False, options={"freezing": True})
        start = time.perf_counter()
        out = fn(windows)
        self.compile_seconds[shape] = time.perf_counter() - start
        logger.info("torch.compile for windows %s took %.1f s", shape, self.compile_seconds[shape])
        self._compiled[shape] = fn
        return out


class OnnxRuntimeRunner:
    name = "onnxruntime"
    reuses_features = False

    def __init__(self, model: nn.Module, device: torch.device, precision: str):
        if precision != "fp32":
            raise ValueError(f"the onnxruntime backend runs fp32 only, not {precision}")
        self.model, self.device, self.precision = model, device, precision
        self.session = None
        self.setup_seconds: float | None = None  # export + session, on the first call

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        # Exported on first use: an Upscaler that only hands its model to chunk workers
        # (a video on Ray) never pays for it.
        if self.session is None:
            from vsr_core.export import onnx_bytes, ort_session

            start = time.perf_counter()
            self.session = ort_session(onnx_bytes(self.model), device=self.device)
            self.setup_seconds = time.perf_counter() - start
        array = windows.detach().float().cpu().contiguous().numpy()
        out = self.session.run(None, {self.session.get_inputs()[0].name: array})[0]
        return torch.from_numpy(out).to(self.device)


_RUNNERS = {"torch": TorchRunner, "torch-compile": CompiledRunner, "onnxruntime": OnnxRuntimeRunner}


def make_runner(backend: str, model: nn.Module, device: torch.device, precision: str):
    """The runner of ``backend`` for ``model`` on ``device`` in ``precision`` (already resolved).
    A model without a graph to export (e.g. the bicubic baseline) always runs eagerly."""
    check_backend(backend)
    from vsr_core.archs import VSRPPPv2

    if backend != "torch" and not isinstance(model, VSRPPPv2):
        backend = "torch"
    return _RUNNERS[backend](model, device, precision)
