"""vsr_core.options.InferenceOptions: the one owner of the inference settings: defaults, checks that
name the option, records, command-line flags, the Ray workers' device rule, and Upscaler built from it."""
import argparse
import json

import pytest
import torch

from conftest import random_model
from vsr_core.inference import Upscaler
from vsr_core.options import SERVICE_MEMORY_BUDGET, InferenceOptions, OptionError

MiB = 2**20


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    InferenceOptions.add_arguments(parser)
    return parser.parse_args(list(flags))


def test_defaults():
    options = InferenceOptions()
    assert (options.device, options.batch_size, options.tile, options.tile_overlap, options.precision,
            options.backend, options.memory_budget) == ("auto", 4, 0, 32, "auto", "torch", None)


@pytest.mark.parametrize("field,value", [
    ("device", "gpu7"), ("device", ""), ("device", 3), ("batch_size", 0), ("batch_size", 2.5), ("batch_size", True),
    ("tile", -1), ("tile_overlap", -1), ("precision", "int8"), ("backend", "tensorrt"),
    ("memory_budget", 0), ("memory_budget", "lots"), ("memory_budget", 1.5),
])
def test_a_bad_value_is_refused_naming_its_option(field, value):
    with pytest.raises(OptionError, match=f"^{field}: ") as error:
        InferenceOptions(**{field: value})
    assert error.value.name == field and isinstance(error.value, ValueError)


def test_a_tile_must_be_larger_than_its_overlap_and_replace_checks_again():
    with pytest.raises(OptionError, match=r"^tile: 16 must be larger than tile_overlap \(16\)"):
        InferenceOptions(tile=16, tile_overlap=16)
    tiled = InferenceOptions(tile=64, tile_overlap=16)
    from dataclasses import replace
    with pytest.raises(OptionError, match="^tile_overlap: "):
        replace(tiled, tile_overlap=-2)


def test_a_torch_device_is_kept_by_its_name():
    assert InferenceOptions(device=torch.device("cpu")).device == "cpu"
    assert InferenceOptions(device=torch.device("cuda", 1)).device == "cuda:1"  # parsing needs no GPU


def test_to_dict_and_from_dict_round_trip_through_json():
    options = InferenceOptions(device="cpu", batch_size=8, tile=96, tile_overlap=16, precision="bf16",
                               backend="onnxruntime", memory_budget=1536 * MiB)
    record = json.loads(json.dumps(options.to_dict()))
    assert InferenceOptions.from_dict(record) == options
    assert InferenceOptions.from_dict({"batch_size": 2}) == InferenceOptions(batch_size=2)  # the rest: defaults
    with pytest.raises(ValueError, match="unknown inference option.* cpus, tiles; known: device, batch_size"):
        InferenceOptions.from_dict({**record, "tiles": 2, "cpus": 1})
    with pytest.raises(OptionError, match="^batch_size: "):
        InferenceOptions.from_dict({**record, "batch_size": -1})


def test_command_line_flags():
    assert InferenceOptions.from_args(parse()) == InferenceOptions(memory_budget=SERVICE_MEMORY_BUDGET)
    args = parse("--device", "cpu", "--batch-size", "8", "--tile", "64", "--tile-overlap", "16", "--precision",
                 "bf16", "--backend", "torch-compile", "--memory-budget", "1536")
    assert InferenceOptions.from_args(args) == InferenceOptions(
        device="cpu", batch_size=8, tile=64, tile_overlap=16, precision="bf16", backend="torch-compile",
        memory_budget=1536 * MiB)
    assert InferenceOptions.from_args(parse("--memory-budget", "off")).memory_budget is None
    for bad in (["--precision", "int8"], ["--backend", "tensorrt"], ["--memory-budget", "-3"], ["--tile", "x"]):
        with pytest.raises(SystemExit):
            parse(*bad)
    with pytest.raises(OptionError, match="^batch_size: "):  # argparse takes it; the options do not
        InferenceOptions.from_args(parse("--batch-size", "0"))


def test_the_ray_workers_device_rule():
    assert InferenceOptions().for_ray_worker(0).device == "cpu"
    assert InferenceOptions().for_ray_worker(0.5).device == "cuda"  # a GPU share runs on CUDA
    assert InferenceOptions(device="cuda:1").for_ray_worker(2).device == "cuda:1"  # agrees: kept
    assert InferenceOptions(device="cpu").for_ray_worker(0) == InferenceOptions(device="cpu")
    with pytest.raises(OptionError, match=r"^device: 'cuda' contradicts the Ray workers' 0 GPUs each"):
        InferenceOptions(device="cuda").for_ray_worker(0)
    with pytest.raises(OptionError, match=r"^device: 'cpu' contradicts the Ray workers' 1 GPUs each"):
        InferenceOptions(device="cpu").for_ray_worker(1)
    worker = InferenceOptions(batch_size=2, precision="bf16").for_ray_worker(0)
    assert (worker.batch_size, worker.precision) == (2, "bf16")  # only the device changes


def test_an_upscaler_is_built_from_options_and_overrides():
    model = random_model("tiny")
    assert Upscaler(model).options == InferenceOptions()  # the defaults live in InferenceOptions only
    base = InferenceOptions(device="cpu", batch_size=2, tile=40, tile_overlap=8)
    upscaler = Upscaler(model, base, batch_size=3, memory_budget=2**40)
    assert upscaler.options == InferenceOptions(device="cpu", batch_size=3, tile=40, tile_overlap=8,
                                                memory_budget=2**40)
    assert upscaler.device == torch.device("cpu") and upscaler.memory.budget_bytes == 2**40
    with pytest.raises(TypeError, match="tiles"):
        Upscaler(model, tiles=2)
    with pytest.raises(OptionError, match="^batch_size: "):
        Upscaler(model, batch_size=0)
    assert Upscaler.bicubic(device="cpu").options.precision == "fp32"  # the exact reference
    assert Upscaler.bicubic(InferenceOptions(device="cpu")).options.precision == "auto"  # as asked


def test_serve_settings_are_inference_options_for_replicas_and_jobs():
    from serve.settings import ServeSettings, settings_from
    from vsr_core.options import OPTION_HELP

    assert ServeSettings().inference_options() == InferenceOptions(memory_budget=SERVICE_MEMORY_BUDGET)
    custom = settings_from({"device": "cpu", "batch_size": 2, "tile": 64, "tile_overlap": 16, "precision": "bf16",
                            "backend": "onnxruntime", "memory_budget_mb": 512})
    assert custom.inference_options() == InferenceOptions("cpu", 2, 64, 16, "bf16", "onnxruntime", 512 * MiB)
    assert custom.job_inference_options() == custom.inference_options()
    assert ServeSettings(job_gpus_per_worker=1).job_inference_options().device == "cuda"
    assert ServeSettings(device="cuda").job_inference_options().device == "cpu"  # the replica's device is its own
    for config, problem in (({"precision": "int8"}, "precision: Value error, must be one of auto"),
                            ({"tile": 16}, r"tile: 16 must be larger than tile_overlap \(32\)"),
                            ({"batch_size": 0}, "batch_size: Value error, must be an integer >= 1"),
                            ({"device": "gpu"}, "device: Value error, 'gpu' is not a device")):
        with pytest.raises(ValueError, match=f"^invalid user_config: .*{problem}"):
            settings_from(config)
    assert ServeSettings.model_fields["precision"].description == OPTION_HELP["precision"]


def test_the_replicas_window_options_and_a_job_record(tmp_path):
    from serve.jobs import JobRecord, JobStore
    from serve.model import window_budget, window_options
    from serve.settings import ServeSettings

    settings = ServeSettings(device="cpu", backend="torch-compile", batch_size=8, memory_budget_mb=4096)
    windows = window_options(settings)
    # windows: no compile per window size, the replica's budget less its request buffers, the library's batch size
    assert windows == InferenceOptions(device="cpu", backend="torch", memory_budget=window_budget(settings))
    store = JobStore(tmp_path)
    record = JobRecord(store.new_id(), "", "in.mp4", "in.mp4", "model.pth", settings.job_inference_options().to_dict(),
                       {"chunk_frames": None})
    store.create(record.id, reserved_bytes=0)  # as the replica does: write() never creates a job's folder
    store.write(record)
    assert InferenceOptions.from_dict(store.read(record.id).inference) == InferenceOptions(
        device="cpu", batch_size=8, backend="torch-compile", memory_budget=4096 * MiB)
