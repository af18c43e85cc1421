"""`vsr export`: the ONNX file against the eager model at sizes it was not traced with, its
metadata and the onnx checker; the pt2 program; the Upscaler's onnxruntime and
torch-compile backends against eager PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_clip, random_model
from vsr_core.checkpoint import save_checkpoint
from vsr_core.export import INPUT_NAME, OUTPUT_NAME, TRACE_SHAPE, export_module
from vsr_core.inference import Upscaler

# (batch, height, width): none is the traced example's size (TRACE_SHAPE), batch 1 included
SIZES = [(1, 17, 31), (3, 24, 40), (2, 45, 23)]


def save_model(path, model, preset: str, step: int):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    return save_checkpoint({
        "step": step, "epoch": 0, "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": {}, "scheduler_state_dict": scheduler.state_dict(), "config": {"PRESET": preset},
        "training_phase": "pretrain"}, path)


@pytest.fixture(scope="module")
def small():
    return random_model("small", seed=4)


@pytest.fixture(scope="module")
def exported(small, tmp_path_factory):
    from vsr_core.cli import main

    folder = tmp_path_factory.mktemp("export")
    checkpoint = save_model(folder / "ckpt.pth", small, "small", step=123)
    assert main(["export", str(folder / "model.onnx"), "--checkpoint", str(checkpoint), "--format", "onnx"]) == 0
    return folder / "model.onnx"


def eager(model, windows):
    module = export_module(model)
    with torch.inference_mode():
        return module(windows).numpy()


def test_onnx_file_is_checked_and_described(exported):
    import onnx

    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (meta["preset"], meta["step"], meta["scale"], meta["frames"]) == ("small", "123", "3", "5")
    assert "[batch,5,3,height,width]" in meta["input"] and "[0,1]" in meta["input"]
    assert "[batch,3,3*height,3*width]" in meta["output"]
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    assert (graph_input.name, graph_output.name) == (INPUT_NAME, OUTPUT_NAME)
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims[1:3] == [5, 3] and all(isinstance(d, str) and d for d in (dims[0], dims[3], dims[4]))


@pytest.mark.parametrize("batch,height,width", SIZES)
def test_onnxruntime_equals_eager_at_sizes_it_was_not_traced_with(exported, small, batch, height, width):
    from vsr_core.export import ort_session

    assert (batch, height, width) != (TRACE_SHAPE[0], TRACE_SHAPE[3], TRACE_SHAPE[4])
    session = ort_session(exported)
    windows = torch.rand(batch, 5, 3, height, width, generator=torch.Generator().manual_seed(height))
    got = session.run(None, {INPUT_NAME: windows.numpy()})[0]
    expected = eager(small, windows)
    assert got.shape == (batch, 3, 3 * height, 3 * width)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(expected - torch.nn.functional.interpolate(
        windows[:, 2], scale_factor=3, mode="bilinear").numpy()).max() > 0.01  # the residual is not trivial


def test_export_switches_activity_tracking_off_in_a_copy(small):
    module = export_module(small)
    assert not any(block.track_activity for block in module.heavy_blocks)
    assert all(block.track_activity for block in small.heavy_blocks)  # the caller's model is untouched


def test_pt2_program_equals_eager(small, tmp_path):
    from vsr_core.cli import main

    checkpoint = save_model(tmp_path / "ckpt.pth", small, "small", step=7)
    assert main(["export", str(tmp_path / "model.pt2"), "--checkpoint", str(checkpoint), "--format", "pt2"]) == 0
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    windows = torch.rand(1, 5, 3, 17, 31)
    with torch.inference_mode():
        assert np.abs(program(windows).numpy() - eager(small, windows)).max() <= 1e-4


def test_export_errors_name_the_problem(tmp_path):
    from vsr_core.export import export_file

    with pytest.raises(ValueError, match="--format"):
        export_file(random_model("tiny"), tmp_path / "m.trt", "tensorrt")


def test_onnxruntime_backend_matches_torch(small):
    windows = torch.rand(2, 5, 3, 17, 31, generator=torch.Generator().manual_seed(1))
    reference = Upscaler(small, device="cpu", precision="fp32")
    ort = Upscaler(small, device="cpu", backend="onnxruntime")  # auto -> fp32: what onnxruntime runs
    assert ort.precision == "fp32" and ort.runner.name == "onnxruntime"
    assert (ort.upscale_windows(windows) - reference.upscale_windows(windows)).abs().max() <= 1e-4
    clip = make_clip(6, 20, 26, seed=5)
    got = np.stack(list(ort.stream(iter(clip))))
    expected = np.stack(list(reference.stream(iter(clip))))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="precision 'bf16' is not available with the onnxruntime backend"):
        Upscaler(small, device="cpu", backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="backend"):
        Upscaler(small, device="cpu", backend="tensorrt")


def test_torch_compile_compiles_once_per_frame_size():
    model = random_model("tiny", seed=6)
    compiled = Upscaler(model, device="cpu", batch_size=2, backend="torch-compile", precision="fp32")
    clip = make_clip(5, 12, 16, seed=6)  # batches of 2, 2 and 1 windows: the last is padded, not recompiled
    got = np.stack(list(compiled.stream(iter(clip))))
    expected = np.stack(list(Upscaler(model, device="cpu", batch_size=2, precision="fp32").stream(iter(clip))))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert list(compiled.runner.compile_seconds) == [(2, 12, 16)]


def test_inference_pauses_the_activity_bookkeeping():
    model = random_model("tiny", seed=7)
    with torch.no_grad():
        model(torch.rand(1, 5, 3, 8, 8))  # a training-like forward records the activity
    before = model.layer_activity()
    Upscaler(model, device="cpu", precision="fp32").upscale_windows(torch.rand(1, 5, 3, 9, 11))
    assert model.layer_activity() == before  # not overwritten by the inference pass
    assert all(block.track_activity for block in model.heavy_blocks)  # and switched back on
