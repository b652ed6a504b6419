"""Data-parallel training (models/learned/distributed.py): torchrun with two CPU processes (gloo) computes what one
process computes with the same global batch, and resumes exactly.

The sharding itself is tested in-process (a batch's shards are its rows; the generator ends where the whole batch
leaves it; the shards' losses average to the batch's); ``sct-node train`` under ``torchrun --nproc_per_node 2``
is tested as a user runs it, in subprocesses, against a single process of the same settings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from models.errors import ModelError
from models.learned.data import SliceDataset, load_cases
from models.learned.diffusion import training_loss
from models.learned.distributed import LAUNCH_VARIABLES, Launch, Shard, launch_from_environment
from models.learned.model import build_network
from models.learned.train import TrainConfig, train
from models.phantoms import generate_phantom
from models.phantoms.synthrad import write_synthrad_case

REPO_ROOT = Path(__file__).resolve().parents[2]

#: One tiny training run, as ``sct-node train`` options and as the TrainConfig they make (kept in step by
#: :func:`_cli_options`). validate_every = checkpoint_every = 3: the interrupted run stops at a checkpoint.
SETTINGS: dict[str, Any] = {"architecture": "diffusion", "batch_size": 4, "patch_size": 32, "base_channels": 8,
                            "space_to_depth": 1, "validate_every": 3, "checkpoint_every": 3}
STEPS = 6
#: The per-step log line of rank 0 (``--debug``): the global batch's loss.
STEP_LOSS = re.compile(r"step (\d+): loss (\S+)")


def _cli_options(settings: dict[str, Any], steps: int) -> list[str]:
    names = {"architecture": "--arch", "batch_size": "--batch-size", "patch_size": "--patch-size",
             "base_channels": "--base-channels", "space_to_depth": "--space-to-depth",
             "validate_every": "--validate-every", "checkpoint_every": "--checkpoint-every"}
    options = ["--steps", str(steps), "--device", "cpu"]
    for key, value in settings.items():
        options += [names[key], str(value)]
    return options


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cases")
    write_synthrad_case(generate_phantom("pelvis", 3, shape_zyx=(8, 40, 48)), root / "pelvis-0003")
    write_synthrad_case(generate_phantom("head", 4, shape_zyx=(12, 40, 48)), root / "head-0004")
    return root


# ---------------------------------------------------------------------------------------------------------------
# The pieces, in one process


def test_a_shard_is_an_equal_run_of_rows_and_an_uneven_batch_is_refused():
    assert [Shard(rank, 4).rows(8) for rank in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert Shard().rows(5) == slice(0, 5)
    with pytest.raises(ModelError, match=r"global batch of 6 .* divisible by the 4 training processes.*"
                                         r"--batch-size 4 or 8"):
        Shard(1, 4).rows(6)
    with pytest.raises(ModelError, match="rank 2 of 2"):
        Shard(2, 2)


def test_the_torchrun_environment_is_read_whole_or_refused():
    full = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert launch_from_environment({"PATH": "/bin"}) is None
    assert launch_from_environment(full) == Launch(rank=1, local_rank=1, world_size=2, master_addr="10.0.0.1",
                                                   master_port=29500)
    with pytest.raises(ModelError, match="found RANK, WORLD_SIZE but not LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        launch_from_environment({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ModelError, match="WORLD_SIZE must be an integer; found 'two'"):
        launch_from_environment({**full, "WORLD_SIZE": "two"})
    with pytest.raises(ModelError, match=r"RANK must lie in \[0, WORLD_SIZE\)"):
        launch_from_environment({**full, "RANK": "2"})


@pytest.mark.parametrize("patch_size", [32, None])
def test_the_shards_of_a_batch_are_its_rows_and_leave_the_generator_where_the_batch_does(cases, patch_size):
    dataset = SliceDataset(load_cases(cases), patch_size=patch_size)
    whole_generator = torch.Generator().manual_seed(5)
    whole = dataset.sample_batch(6, whole_generator)
    shards = []
    for rank in range(3):
        generator = torch.Generator().manual_seed(5)
        shards.append(dataset.sample_batch(6, generator, rows=Shard(rank, 3).rows(6)))
        assert torch.equal(generator.get_state(), whole_generator.get_state())
    for key, value in whole.items():
        # Whole slices (patch_size None) are padded to the whole batch's largest, not the shard's.
        assert torch.equal(torch.cat([shard[key] for shard in shards]), value), key


def test_the_shards_diffusion_losses_average_to_the_whole_batchs(cases):
    batch = SliceDataset(load_cases(cases), patch_size=32).sample_batch(4, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    network = build_network(TrainConfig(**SETTINGS).network_config())
    # An untrained denoiser outputs 0 (its last layer starts at zero); perturb it so the loss depends on it.
    torch.nn.init.normal_(network.conv_out.weight, std=0.1)
    whole_generator = torch.Generator().manual_seed(2)
    whole = training_loss(network, batch["ct"], batch["mr"], generator=whole_generator)
    losses = []
    for rows in (slice(0, 2), slice(2, 4)):
        generator = torch.Generator().manual_seed(2)
        losses.append(training_loss(network, batch["ct"][rows], batch["mr"][rows], generator=generator,
                                    batch_size=4, rows=rows))
        assert torch.equal(generator.get_state(), whole_generator.get_state())
    # float32 means of different sets of pixels: equal to rounding.
    torch.testing.assert_close(sum(losses) / 2, whole, rtol=1e-6, atol=0)
    with pytest.raises(ModelError, match="rows slice"):
        training_loss(network, batch["ct"][:2], batch["mr"][:2], batch_size=4, rows=slice(0, 3))


def test_a_global_batch_the_processes_cannot_share_is_refused_before_they_meet(cases, tmp_path, monkeypatch):
    # Rank 0 of 2, with no rank 1 anywhere: refusing after the rendezvous would wait for it forever.
    for name, value in zip(LAUNCH_VARIABLES, ("0", "2", "0", "127.0.0.1", "9")):
        monkeypatch.setenv(name, value)
    with pytest.raises(ModelError, match="global batch of 3 .* divisible by the 2 training processes"):
        train(cases, tmp_path / "ckpt", TrainConfig(**{**SETTINGS, "batch_size": 3}, steps=1), show_progress=False)
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------------------------------------------------------
# sct-node train under torchrun


def _torchrun(cases: Path, output: Path, steps: int, settings: dict[str, Any] = SETTINGS) -> dict[int, float]:
    """Run ``torchrun --nproc_per_node 2 -m sct_node train`` on the CPU; rank 0's loss per step."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"  # what torchrun sets anyway, said here to keep its warning out of the output
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sct_node", "train", "--data", str(cases), "--output", str(output), "--quiet", "--debug",
               *_cli_options(settings, steps)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("checkpoint:") == 1, result.stdout  # rank 0 alone prints the result
    return {int(step): float(loss) for step, loss in STEP_LOSS.findall(result.stderr)}


@contextmanager
def _step_losses() -> Iterator[dict[int, float]]:
    """Collect the per-step losses that an in-process ``train`` logs at DEBUG."""
    losses: dict[int, float] = {}

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = STEP_LOSS.fullmatch(record.getMessage())
            if match:
                losses[int(match[1])] = float(match[2])

    logger = logging.getLogger("models.learned.train")
    handler, level = Collect(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield losses
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / "train_state.pt", weights_only=True)


def _card(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "card.json").read_text())


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tensor.flatten().double() for tensor in state.values()])


def _assert_equal_states(first: Any, second: Any, where: str = "train_state") -> None:
    """Bit for bit: the same nested dicts and lists of tensors and numbers."""
    if isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            _assert_equal_states(first[key], second[key], f"{where}[{key!r}]")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second)):
            _assert_equal_states(a, b, f"{where}[{index}]")
    elif isinstance(first, torch.Tensor):
        assert torch.equal(first, second), where
    else:
        assert first == second, where


@pytest.fixture(scope="module")
def runs(cases, tmp_path_factory) -> dict[str, Any]:
    """One process for STEPS steps; two for STEPS; two for STEPS / 2, then resumed by a second launch to STEPS."""
    root = tmp_path_factory.mktemp("runs")
    with _step_losses() as single_losses:
        train(cases, root / "single", TrainConfig(**SETTINGS, steps=STEPS), device="cpu", show_progress=False)
    straight_losses = _torchrun(cases, root / "two", STEPS)
    first_losses = _torchrun(cases, root / "two-resumed", STEPS // 2)
    shutil.copytree(root / "two-resumed", root / "two-interrupted")
    resumed_losses = _torchrun(cases, root / "two-resumed", STEPS)
    return {"root": root, "single": single_losses, "two": straight_losses,
            "two-resumed": {**first_losses, **resumed_losses}}


@pytest.mark.slow
def test_two_processes_train_to_the_loss_of_one_with_the_same_global_batch(runs):
    root = runs["root"]
    assert sorted(runs["single"]) == sorted(runs["two"]) == list(range(1, STEPS + 1))
    for step, loss in runs["single"].items():
        # Two shards' gradients are summed in another order than one batch's (per process, then the
        # all-reduce), and float32 rounding differs: measured agreement ~3e-8 relative at every step.
        assert runs["two"][step] == pytest.approx(loss, rel=1e-5), step
    single, two = _state(root / "single"), _state(root / "two")
    # Every random draw is the whole global batch's in both: the generators end in the same state.
    assert torch.equal(single["generator"], two["generator"]) and two["step"] == STEPS
    assert two["metrics"]["validation_mae_hu"] == pytest.approx(single["metrics"]["validation_mae_hu"], rel=1e-5)
    # The weights, measured against how far training moved them. Element by element is the wrong test: AdamW
    # divides each step by the gradient's RMS, so where a gradient is at rounding level (biases ahead of a
    # GroupNorm) the rounding decides the step, up to the learning rate. Measured ratio 4e-4.
    torch.manual_seed(0)  # the seed train() initialises the network with (--seed 0)
    start = _flat(build_network(TrainConfig(**SETTINGS).network_config()).state_dict())
    moved = (_flat(single["network"]) - start).norm()
    assert moved > 0
    assert (_flat(two["network"]) - _flat(single["network"])).norm() < 1e-2 * moved
    assert _card(root / "two")["training_processes"] == 2 and _card(root / "single")["training_processes"] == 1


@pytest.mark.slow
def test_two_processes_resume_exactly_where_they_stopped(runs):
    root = runs["root"]
    interrupted = _state(root / "two-interrupted")
    assert interrupted["step"] == STEPS // 2
    # The resumed run's steps are the straight run's, bit for bit, and so is everything it saves: weights, EMA,
    # optimiser moments, generator (the sampler's position), step and metrics.
    assert runs["two-resumed"] == runs["two"]
    _assert_equal_states(_state(root / "two-resumed"), _state(root / "two"))
    assert _card(root / "two-resumed")["training_steps"] == STEPS
    assert (root / "two-resumed" / "model.pt").read_bytes() == (root / "two" / "model.pt").read_bytes()


@pytest.mark.slow
def test_a_single_process_run_resumed_by_two_processes_continues_it(cases, tmp_path):
    """pix2pix (a second network in DistributedDataParallel, the discriminator) and a change of process count."""
    settings = {**SETTINGS, "architecture": "pix2pix"}
    with _step_losses() as single_losses:
        train(cases, tmp_path / "single", TrainConfig(**settings, steps=STEPS), device="cpu", show_progress=False)
    train(cases, tmp_path / "switched", TrainConfig(**settings, steps=STEPS // 2), device="cpu", show_progress=False)
    switched_losses = _torchrun(cases, tmp_path / "switched", STEPS, settings)
    assert sorted(switched_losses) == list(range(STEPS // 2 + 1, STEPS + 1))
    for step, loss in switched_losses.items():
        # pix2pix's L1 has the gradient sign(prediction - CT), which rounding flips where the two are equal, and
        # the adversarial game amplifies what differs: measured 3e-5 relative after six steps.
        assert loss == pytest.approx(single_losses[step], rel=1e-3), step
    single, switched = _state(tmp_path / "single"), _state(tmp_path / "switched")
    assert torch.equal(single["generator"], switched["generator"]) and switched["step"] == STEPS
    assert _card(tmp_path / "switched")["training_processes"] == 2
