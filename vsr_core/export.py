"""The model outside PyTorch: ONNX with dynamic batch, height and width (``vsr export``), and
``torch.export`` programs (.pt2).

Both go through ``torch.export`` (the dynamo-based ONNX exporter, ``torch.onnx.export(...,
dynamo=True, dynamic_shapes=...)``): it records the height and width as symbols, so the
graph's output shape is ``3*height`` x ``3*width`` and one file serves every frame size. The
legacy TorchScript-tracing exporter (``dynamo=False`` with ``dynamic_axes``) exports this model
too, but traces one example and marks axes dynamic afterwards, is deprecated in torch 2.x
and names the output sizes by free symbols. For the same reasons ``--format pt2`` is a
``torch.export`` program rather than TorchScript (in maintenance mode since torch 2.x).

The exported graph is the model's forward in fp32 with the layer-activity bookkeeping off.
Inputs: ``frames`` float32 [B,5,3,H,W], RGB in [0,1], 5 consecutive frames in temporal order;
output: ``upscaled`` float32 [B,3,3H,3W], the center frame 3x (not clamped: clamp to [0,1]).
"""
from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from vsr_core.archs import CENTER, NUM_FRAMES, SCALE

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
INPUT_NAME, OUTPUT_NAME = "frames", "upscaled"
INPUT_CONVENTION = (f"{INPUT_NAME}: float32 [batch,{NUM_FRAMES},3,height,width], RGB in [0,1], {NUM_FRAMES} "
                    f"consecutive frames in temporal order (the output is frame {CENTER}'s)")
OUTPUT_CONVENTION = (f"{OUTPUT_NAME}: float32 [batch,3,{SCALE}*height,{SCALE}*width], RGB, nominally in [0,1] "
                     "(not clamped: clamp before converting to 8 bits)")
# Traced at batch 2 and a size that is no special value: torch.export specialises a dimension
# whose example is 0 or 1, so batch 1 would be baked in.
TRACE_SHAPE = (2, NUM_FRAMES, 3, 32, 48)
DEFAULT_OPSET = 18


def export_module(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for graph capture: eval mode, activity bookkeeping off (a side effect
    of the forward pass that would otherwise be traced into the graph), the caller's model untouched."""
    module = copy.deepcopy(model).float().eval()
    if hasattr(module, "set_activity_tracking"):
        module.set_activity_tracking(False)
    return module


def _dynamic_shapes() -> dict:
    dim = torch.export.Dim
    return {INPUT_NAME: {0: dim("batch"), 3: dim("height"), 4: dim("width")}}


def onnx_model(model: nn.Module, metadata: dict | None = None, opset: int = DEFAULT_OPSET):
    """``model`` as an ``onnx.ModelProto`` with dynamic batch, height and width, checked with
    the onnx checker; ``metadata`` (plus the input/output conventions) in its metadata_props."""
    import onnx

    module = export_module(model)
    example = torch.rand(*TRACE_SHAPE)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=_dynamic_shapes(),
                                    opset_version=opset, verbose=False)
    proto = program.model_proto
    props = {"input": INPUT_CONVENTION, "output": OUTPUT_CONVENTION, "scale": str(SCALE),
             "frames": str(NUM_FRAMES), "center_frame": str(CENTER), "producer": "vsr_core"}
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    return proto


def onnx_bytes(model: nn.Module, metadata: dict | None = None) -> bytes:
    return onnx_model(model, metadata).SerializeToString()


def save_pt2(model: nn.Module, path: str | Path, metadata: dict | None = None) -> None:
    """A ``torch.export`` program with the same dynamic dimensions (``torch.export.load(path)
    .module()(frames)``); the metadata goes into the archive's extra files."""
    module = export_module(model)
    with torch.no_grad():
        program = torch.export.export(module, (torch.rand(*TRACE_SHAPE),),
                                      dynamic_shapes={"frames": _dynamic_shapes()[INPUT_NAME]})
    extra = {"vsr_metadata.json": json.dumps({"input": INPUT_CONVENTION, "output": OUTPUT_CONVENTION,
                                              "scale": SCALE, "frames": NUM_FRAMES, **(metadata or {})})}
    torch.export.save(program, str(path), extra_files=extra)


def checkpoint_metadata(checkpoint: dict) -> dict:
    config = checkpoint.get("config") or {}
    return {"preset": config.get("PRESET", "full"), "step": int(checkpoint.get("step", 0)),
            "training_phase": checkpoint.get("training_phase", "")}


def ort_session(model_source, num_threads: int | None = None, device: torch.device | None = None):
    """An onnxruntime session for a file path or serialized bytes. Intra-op threads = torch's
    (the process's CPU budget); spinning off, so idle pool threads do not take the cores
    that decoding and encoding need between batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device is not None and device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    source = str(model_source) if isinstance(model_source, Path) else model_source
    return ort.InferenceSession(source, options, providers=providers)


def export_file(model: nn.Module, path: str | Path, fmt: str, metadata: dict | None = None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pt2":
        save_pt2(model, path, metadata)
        return
    import onnx

    buffer = io.BytesIO()
    onnx.save_model(onnx_model(model, metadata), buffer)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
