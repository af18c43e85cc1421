"""Data-parallel training (the Trainer with a DataParallel), on CPU with the gloo backend.

Two worker processes (torch.multiprocessing + gloo, no Ray: the cheapest way to get a real
process group) against one process on the same samples: the reference is the single-process
Trainer with twice the batch."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny_train_config, write_clips
from vsr_core.checkpoint import RAW_WEIGHTS_KEY, load_checkpoint
from vsr_core.data.datasets import ContinuingSampler
from vsr_core.engine.distributed import DataParallel, effective_batch_text, scaled_lr_exponent
from vsr_core.engine.schedule import cosine_lr
from vsr_core.engine.trainer import Trainer

BATCH, ACCUMULATION, STEPS = 2, 2, 1  # one step: see the weights comparison


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("dp_clips"), num_frames=8, height=36, width=42)


def record_gradients(trainer: Trainer) -> list:
    """The gradients each optimizer step applies (a list that grows by one dict per step)."""
    steps = []
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: steps.append(
        {names[id(p)]: p.grad.detach().clone() for g in opt.param_groups for p in g["params"] if p.grad is not None}))
    return steps


def _worker(rank: int, world: int, init_file: str, config, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = Trainer(config, parallel=DataParallel.from_process_group(torch.device("cpu")))
        grads = record_gradients(trainer)
        losses = [trainer.train_step().loss_total for _ in range(STEPS)]
        grads = list(grads)  # the first STEPS steps' (all-reduced) gradients
        activity = trainer.model.layer_activity()
        trainer.save()  # rank 0 only
        weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        # A NaN loss on one worker only: every worker must skip the step (and none may hang).
        if rank == 1:
            with torch.no_grad():
                trainer.model.upsample[0].bias.fill_(math.nan)
        skipped = trainer.train_step()
        unchanged = all(torch.equal(weights[k], v) for k, v in trainer.model.state_dict().items()
                        if not (rank == 1 and k == "upsample.0.bias"))
        if rank == 1:  # healed: the group trains on after a skipped step (DDP's reducer is not left waiting)
            with torch.no_grad():
                trainer.model.upsample[0].bias.copy_(weights["upsample.0.bias"])
        after = trainer.train_step()
        torch.save({"weights": weights, "grads": grads, "losses": losses, "activity": activity, "skipped": skipped.skipped,
                    "unchanged_after_skip": unchanged, "step": trainer.step, "after_skip": after.skipped,
                    "weights_after": trainer.model.state_dict()}, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_workers(clips, tmp_path_factory):
    """STEPS steps of 2 workers x BATCH windows x ACCUMULATION micro-batches, then one step that
    worker 1 poisons with a NaN; each worker's results."""
    folder = tmp_path_factory.mktemp("dp_run")
    config = tiny_train_config(clips, folder / "run", batch_size=BATCH, accumulation_steps=ACCUMULATION,
                               max_steps=10, device="cpu")
    mp.spawn(_worker, args=(2, str(folder / "rendezvous"), config, str(folder / "result")), nprocs=2, join=True)
    return config, [torch.load(f"{folder / 'result'}.{rank}", weights_only=True) for rank in range(2)]


def test_two_workers_step_like_one_process_with_the_double_batch(clips, two_workers, tmp_path):
    config, results = two_workers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: the CPU kernels' sums then run in the same order
    try:
        single = Trainer(tiny_train_config(clips, tmp_path / "single", batch_size=2 * BATCH,
                                           accumulation_steps=ACCUMULATION, max_steps=10, device="cpu"))
        single_grads = record_gradients(single)
        losses = [single.train_step().loss_total for _ in range(STEPS)]
    finally:
        torch.set_num_threads(threads)
    for rank, result in enumerate(results):
        # The first step applies the same gradients (the workers' all-reduced mean = the big
        # batch's gradient, from the same weights). Later steps start from weights that differ by
        # AdamW's sign noise (below), so their gradients are close but not to float tolerance.
        for name, grad in single_grads[0].items():
            torch.testing.assert_close(result["grads"][0][name], grad, rtol=1e-4, atol=1e-8,
                                       msg=lambda m: f"rank {rank}, grad of {name}: {m}")
        # And the same weights, to float tolerance, wherever a gradient is clearly non-zero: AdamW
        # turns a gradient near 0 (|g| ~ its eps) into a +-lr step whose sign is float noise.
        for name, value in single.model.state_dict().items():
            clear = torch.ones_like(value, dtype=torch.bool)
            for grads in single_grads:
                if name in grads:
                    clear &= grads[name].abs() > 1e-6
            torch.testing.assert_close(result["weights"][name][clear], value[clear], rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"rank {rank}, {name}: {m}")
        # the losses and the layer activity are means over both workers = the single process's
        assert result["losses"] == pytest.approx(losses, rel=1e-5)
        assert result["activity"] == pytest.approx(single.model.layer_activity(), rel=1e-5)
    moved = sum(float((single.model.state_dict()[k] - v).abs().sum())
                for k, v in Trainer(tiny_train_config(clips, tmp_path / "init")).model.state_dict().items())
    assert moved > 0  # the steps changed the weights (a comparison of untouched weights proves nothing)


def test_a_nan_on_one_worker_skips_the_step_on_every_worker(two_workers):
    _, results = two_workers
    for result in results:
        assert result["skipped"] and result["unchanged_after_skip"]
        assert not result["after_skip"] and result["step"] == STEPS + 2
    torch.testing.assert_close(results[0]["weights_after"], results[1]["weights_after"])


def test_only_rank_0_writes_and_a_one_worker_resume_continues_at_its_step_and_lr(clips, two_workers, tmp_path):
    config, _ = two_workers
    latest = config.output_dir + "/latest.pth"
    checkpoint = load_checkpoint(latest)
    assert checkpoint["step"] == STEPS
    resumed = Trainer(tiny_train_config(clips, tmp_path / "resumed", batch_size=BATCH,
                                        accumulation_steps=ACCUMULATION, max_steps=10, device="cpu"),
                      resume_from=latest)
    assert resumed.step == STEPS and resumed.workers == 1
    assert resumed.lr == pytest.approx(cosine_lr(config.learning_rate, STEPS, config.max_steps))
    torch.testing.assert_close(resumed.model.state_dict(), checkpoint["model_state_dict"])
    metrics = resumed.train_step()
    assert metrics.step == STEPS + 1 and math.isfinite(metrics.loss_total)
    assert resumed.lr == pytest.approx(cosine_lr(config.learning_rate, STEPS + 1, config.max_steps))
    assert resumed.samples_seen == (STEPS + 1) * BATCH * ACCUMULATION  # one worker's effective batch from here


def _ema_worker(rank: int, world: int, init_file: str, config, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = Trainer(config, parallel=DataParallel.from_process_group(torch.device("cpu")))
        raw = [{k: v.clone() for k, v in trainer.model.state_dict().items()}]  # the init, then after every step
        trainer.optimizer.register_step_post_hook(
            lambda *_: raw.append({k: v.clone() for k, v in trainer.model.state_dict().items()}))
        for _ in range(3):
            trainer.train_step()
        trainer.save()  # rank 0 only
        torch.save({"raw": raw, "averaged": trainer.ema.state_dict()}, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def test_every_worker_keeps_the_same_average_and_rank_0_saves_it(clips, tmp_path):
    config = tiny_train_config(clips, tmp_path / "run", batch_size=BATCH, accumulation_steps=ACCUMULATION,
                               max_steps=10, device="cpu", ema_decay=0.9, lr_exponent=-2)
    mp.spawn(_ema_worker, args=(2, str(tmp_path / "rendezvous"), config, str(tmp_path / "result")), nprocs=2,
             join=True)
    results = [torch.load(f"{tmp_path / 'result'}.{rank}", weights_only=True) for rank in range(2)]
    torch.testing.assert_close(results[0]["averaged"], results[1]["averaged"], rtol=0, atol=0)
    for name, averaged in results[0]["averaged"].items():  # the warm-up EMA of the raw weights, computed plainly
        reference = results[0]["raw"][0][name].double()
        for step, weights in enumerate(results[0]["raw"][1:]):
            d = min(0.9, (1 + step) / (10 + step))
            reference = d * reference + (1 - d) * weights[name].double()
        torch.testing.assert_close(averaged.double(), reference, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert len(results[0]["raw"]) == 4
    checkpoint = load_checkpoint(tmp_path / "run" / "latest.pth")
    torch.testing.assert_close(checkpoint["model_state_dict"], results[0]["averaged"], rtol=0, atol=0)
    torch.testing.assert_close(checkpoint["optimizer_state_dict"][RAW_WEIGHTS_KEY], results[0]["raw"][-1],
                               rtol=0, atol=0)


def test_worker_shares_cover_the_single_stream_exactly_once():
    def take(sampler, n):
        iterator = iter(sampler)
        return [next(iterator) for _ in range(n)]

    start, batch, workers = 24, 3, 4
    shares = [take(ContinuingSampler(start, batch, rank, workers), 2 * batch) for rank in range(workers)]
    for k in range(2):  # global micro-batch k = the ranks' k-th batches side by side
        merged = [g for share in shares for g in share[k * batch:(k + 1) * batch]]
        assert merged == list(range(start + k * batch * workers, start + (k + 1) * batch * workers))
    assert take(ContinuingSampler(5), 4) == [5, 6, 7, 8]


def test_lr_scaling_rules_and_the_effective_batch_text(clips, tmp_path):
    assert scaled_lr_exponent(-4, 4, "none") == -4
    assert 10 ** scaled_lr_exponent(-4, 4, "linear") == pytest.approx(4e-4)
    assert 10 ** scaled_lr_exponent(-4, 4, "sqrt") == pytest.approx(2e-4)
    with pytest.raises(ValueError, match="LR scaling rule"):
        scaled_lr_exponent(-4, 2, "cubic")
    config = tiny_train_config(clips, tmp_path, batch_size=4, accumulation_steps=3)
    assert effective_batch_text(config, 2).startswith("effective batch 4 x 3 x 2 = 24")


def test_tensorboard_states_the_effective_batch(clips, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = Trainer(tiny_train_config(clips, tmp_path / "run", batch_size=2, accumulation_steps=3))
    trainer.tensorboard.close()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    text = events.Tensors("Run/EffectiveBatch/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("effective batch 2 x 3 x 1 = 6 (BATCH_SIZE x ACCUMULATION_STEPS x workers)")


def test_vsr_train_refuses_fewer_than_one_worker(clips, tmp_path, capsys):
    from vsr_core import cli

    config = tmp_path / "config.json"
    tiny_train_config(clips, tmp_path / "run").save(config)
    assert cli.main(["train", "--config", str(config), "--workers", "0"]) != 0
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err


def test_a_data_parallel_trial_scales_its_lr_and_threads_by_the_rule(clips, tmp_path):
    from tune.trainable import trial_config

    base = tiny_train_config(clips, tmp_path / "base", lr_exponent=-4).to_dict()
    one = trial_config({"base_config": base, "cpus_per_trial": 2}, tmp_path)
    four = trial_config({"base_config": base, "cpus_per_trial": 2, "workers_per_trial": 4, "cpus_per_worker": 3,
                         "lr_scaling": "sqrt"}, tmp_path)
    assert one.lr_exponent == -4 and one.num_threads == 2
    assert four.learning_rate == pytest.approx(2e-4) and four.num_threads == 3
