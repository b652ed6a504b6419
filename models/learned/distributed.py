"""Data-parallel training over several processes, GPUs and hosts, as ``torchrun`` launches it.

``sct-node train`` run by ``torchrun`` (or ``python -m torch.distributed.run``) becomes one process per GPU
(or per CPU worker) that trains one shard of every global batch. :func:`launch_from_environment` reads what
torchrun tells each process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
:func:`data_parallel` joins the process group (NCCL on CUDA, gloo on the CPU), pins the process to
``cuda:LOCAL_RANK`` and yields a :class:`DataParallel`: the device, the process's :class:`Shard` of the batch,
and the few collectives the training loop needs. Without torchrun the same object describes one process
alone, and every collective is a no-op, so the loop has one code path.

**One process with batch B and N processes with B / N each compute the same step.** The design that makes
this so, and what it rests on:

* *Same draws.* Every random number of a step (which case, slice and patch; the diffusion time and noise) comes
  from the one training ``torch.Generator``, seeded alike in every process. Every process draws the whole
  global batch, in the order one process would, and keeps its rows (:class:`Shard`): rank ``r`` of ``N``
  computes rows ``r * B/N`` to ``(r + 1) * B/N``. The generators therefore stay identical across processes,
  the one saved in a checkpoint is every process's, and the "sampler position" of a resumed run is that
  generator state. Only the drawing is repeated; cropping patches and the network run for the kept rows only.
  (A ``DistributedSampler`` shards an indexable data set by epoch; training here samples random patches with
  replacement, so sharding the draws is its equivalent.)
* *Same mean.* Each process's loss is the mean over its rows, every shard has the same number of rows and
  pixels (whole slices are padded to the global batch's largest), and DistributedDataParallel averages the
  gradients over processes: the mean of equal-sized means is the mean over the global batch.
* *Per-sample normalisation.* The networks use GroupNorm and InstanceNorm, whose statistics are per sample,
  so a sharded batch normalises each sample as the whole batch does. Batch normalisation would not (each
  process would see only its rows' statistics); :meth:`DataParallel.wrap` refuses a network that has it.
* *No other randomness.* The networks have no dropout (``build_network`` leaves it at 0), and a training step
  uses no global RNG; the weights are initialised from the same seed in every process and DDP broadcasts rank
  0's at the start regardless.

What remains different is floating-point rounding: gradients of B / N rows summed per process and then
across processes are not added in the order one process adds B rows, so the two agree to rounding, not bit
for bit. A run with the same number of processes is reproducible bit for bit, interrupted and resumed or not.

**Rank 0 is the only writer.** It reads the checkpoint to resume from and broadcasts it (so the output folder
need exist on its host only), validates, writes checkpoints, model cards and logs, and shows the progress
bar; every process waits at a barrier after each checkpoint and at the end, so when ``train`` returns in any
process the final checkpoint is on disk. The training cases (and a ``--mean-model``) are read by every
process: on several hosts they must be at the same path on each.

References
----------
.. [1] S. Li et al., "PyTorch Distributed: experiences on accelerating data parallel training", PVLDB
   13(12):3005-3018, 2020 (DistributedDataParallel: gradient buckets all-reduced during the backward pass).
.. [2] PyTorch documentation, "torchrun (Elastic Launch)": the environment variables each worker receives.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from models.errors import ModelError
from models.learned.model import pick_device

__all__ = ["LAUNCH_VARIABLES", "DataParallel", "Launch", "Shard", "data_parallel", "is_main_process",
           "launch_from_environment"]

logger = logging.getLogger(__name__)

#: The environment variables torchrun sets in every worker, all of which a distributed run needs.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: How long a process waits in a collective for the others. Rank 0 validates and writes a checkpoint while the
#: others wait at the next all-reduce or barrier; on a slow shared file system that can take minutes, so the
#: limit is generous (a dead peer is noticed sooner anyway: torchrun stops every worker when one fails).
COLLECTIVE_TIMEOUT = _dt.timedelta(minutes=30)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Launch:
    """Where torchrun put this process.

    Attributes
    ----------
    rank : int
        This process's index among all processes, 0 to ``world_size - 1``; rank 0 writes.
    local_rank : int
        Its index among the processes of its host: the GPU it uses (``cuda:local_rank``).
    world_size : int
        Processes in the job, over all hosts.
    master_addr : str
        Host of the rendezvous (rank 0's).
    master_port : int
        Its TCP port.
    """

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ModelError(f"WORLD_SIZE must be at least 1; found {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ModelError(f"RANK must lie in [0, WORLD_SIZE) = [0, {self.world_size}); found {self.rank}")
        if not 0 <= self.local_rank < self.world_size:
            raise ModelError(f"LOCAL_RANK must lie in [0, WORLD_SIZE) = [0, {self.world_size}); "
                             f"found {self.local_rank}")
        if not 1 <= self.master_port <= 65535:
            raise ModelError(f"MASTER_PORT must be a TCP port (1-65535); found {self.master_port}")


def launch_from_environment(environ: Mapping[str, str] | None = None) -> Launch | None:
    """What torchrun told this process, or None when it was not started by torchrun.

    Parameters
    ----------
    environ : mapping or None
        The environment to read (default: ``os.environ``).

    Returns
    -------
    Launch or None
        None when none of :data:`LAUNCH_VARIABLES` is set (a plain single-process run).

    Raises
    ------
    ModelError
        Some but not all of the variables are set, or one is not a number where a number is expected: a
        process started by hand with a partial environment would otherwise wait for peers forever.
    """
    env = os.environ if environ is None else environ
    present = [name for name in LAUNCH_VARIABLES if name in env]
    if not present:
        return None
    missing = [name for name in LAUNCH_VARIABLES if name not in env]
    if missing:
        raise ModelError(f"a distributed run needs all of {', '.join(LAUNCH_VARIABLES)} in the environment (torchrun "
                         f"sets them); found {', '.join(present)} but not {', '.join(missing)}: start training "
                         f"with torchrun, or unset them for a single process")
    numbers = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        try:
            numbers[name] = int(env[name])
        except ValueError:
            raise ModelError(f"environment variable {name} must be an integer; found {env[name]!r}") from None
    return Launch(rank=numbers["RANK"], local_rank=numbers["LOCAL_RANK"], world_size=numbers["WORLD_SIZE"],
                  master_addr=env["MASTER_ADDR"], master_port=numbers["MASTER_PORT"])


def is_main_process(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is rank 0 of a torchrun job, or not under torchrun at all (it writes and prints)."""
    launch = launch_from_environment(environ)
    return launch is None or launch.rank == 0


@dataclass(frozen=True)
class Shard:
    """The rows of every global batch that one process computes.

    Parameters
    ----------
    rank : int
        The process's rank, 0 to ``world_size - 1``.
    world_size : int
        Processes sharing each batch (1: one process computes all of it).

    Raises
    ------
    ModelError
        ``world_size`` below 1 or ``rank`` outside ``[0, world_size)``.
    """

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ModelError(f"a shard is rank 0 to world_size - 1 of world_size >= 1 processes; "
                             f"found rank {self.rank} of {self.world_size}")

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch of ``batch_size``: ``batch_size / world_size`` consecutive ones.

        Raises
        ------
        ModelError
            ``batch_size`` is not a positive multiple of ``world_size``: unequal shards would weight their rows
            unequally in the averaged gradient.
        """
        if batch_size < 1 or batch_size % self.world_size:
            lower = batch_size // self.world_size * self.world_size
            choices = " or ".join(str(b) for b in (lower, lower + self.world_size) if b >= self.world_size)
            raise ModelError(f"the global batch of {batch_size} (--batch-size) must be divisible by the "
                             f"{self.world_size} training processes, so that each computes the same number of "
                             f"rows; use --batch-size {choices}")
        per_process = batch_size // self.world_size
        return slice(self.rank * per_process, (self.rank + 1) * per_process)


class DataParallel:
    """This process's part in data-parallel training (a process alone included): device, shard, collectives.

    Made by :func:`data_parallel`; with ``launch`` None every collective is a no-op.

    Parameters
    ----------
    launch : Launch or None
        Where torchrun put this process; None for a single process.
    device : torch.device
        The device this process trains on.
    """

    def __init__(self, launch: Launch | None, device: torch.device) -> None:
        self.launch = launch
        self.device = device
        self.shard = Shard(launch.rank, launch.world_size) if launch is not None else Shard()

    @property
    def distributed(self) -> bool:
        """Whether this process is one of a torchrun job (in a process group, even of size 1)."""
        return self.launch is not None

    @property
    def rank(self) -> int:
        return self.shard.rank

    @property
    def world_size(self) -> int:
        return self.shard.world_size

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reads and writes checkpoints, validates, logs and shows progress."""
        return self.shard.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel (gradients averaged over processes), or itself alone.

        The wrapper shares ``module``'s parameters: optimise, save and average those of ``module`` itself (its
        state dict has no ``module.`` prefix, so checkpoints are the same as a single process's).

        Raises
        ------
        ModelError
            ``module`` holds batch normalisation, whose statistics a shard would compute over its rows only.
        """
        if not self.distributed:
            return module
        batch_norms = [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if batch_norms:
            raise ModelError(f"data-parallel training needs per-sample normalisation (GroupNorm, InstanceNorm); "
                             f"{type(module).__name__} has batch normalisation in {', '.join(batch_norms[:3])}")
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            return DistributedDataParallel(module, device_ids=[self.device.index], output_device=self.device.index)
        return DistributedDataParallel(module)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def broadcast(self, value: _T) -> _T:
        """Rank 0's ``value`` in every process (any picklable object; tensors arrive where rank 0 had them)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box: list[object] = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]  # type: ignore[return-value]  # rank 0 sent a _T

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over processes: the global batch's loss from each shard's (equal-sized) mean."""
        if not self.distributed:
            return float(value.item())
        import torch.distributed as dist

        total = value.detach().float().reshape(1).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total.item()) / self.world_size


def _device_for(launch: Launch, requested: str | None) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is requested or available, else the CPU."""
    wanted = torch.device(requested) if requested else None
    if wanted is not None and wanted.type not in ("cuda", "cpu"):
        raise ModelError(f"distributed training runs on CUDA (NCCL) or the CPU (gloo); found --device {requested}")
    if wanted is not None and wanted.type == "cuda" and wanted.index is not None:
        raise ModelError(f"under torchrun each process trains on the GPU of its LOCAL_RANK (cuda:{launch.local_rank} "
                         f"here); give --device cuda, not {requested}, or limit the GPUs with CUDA_VISIBLE_DEVICES")
    if (wanted is None and torch.cuda.is_available()) or (wanted is not None and wanted.type == "cuda"):
        if not torch.cuda.is_available():
            raise ModelError(f"device {requested!r} requested but CUDA is not available")
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise ModelError(f"LOCAL_RANK {launch.local_rank} has no GPU: this host shows {count}; start at most "
                             f"{count} processes per host (torchrun --nproc_per_node {count})")
        return torch.device("cuda", launch.local_rank)
    return torch.device("cpu")


@contextmanager
def data_parallel(launch: Launch | None, requested_device: str | None = None) -> Iterator[DataParallel]:
    """Join the job's process group for the ``with`` block (or stand alone), and leave it afterwards.

    Parameters
    ----------
    launch : Launch or None
        From :func:`launch_from_environment`; None: one process, no process group.
    requested_device : str or None
        ``--device``: None picks CUDA when available, else the CPU. Under torchrun only ``cuda`` or ``cpu``
        (the GPU is ``cuda:LOCAL_RANK``).

    Yields
    ------
    DataParallel
        This process's device, shard and collectives.

    Raises
    ------
    ModelError
        A device that cannot be used (see :func:`_device_for`), or a rendezvous that fails.

    Notes
    -----
    A process group that the caller initialised already (a script of its own around ``train``) is used as it
    is and left open; one made here is destroyed on the way out, after a barrier on success, so that no
    process leaves while another still writes. On an exception no barrier is attempted (the others may never
    reach it); destroying the group makes their pending collectives fail rather than hang, and torchrun stops
    the job.
    """
    if launch is None:
        yield DataParallel(None, pick_device(requested_device))
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise ModelError("this build of torch has no torch.distributed; install one that has to train under torchrun")
    device = _device_for(launch, requested_device)
    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
                                    timeout=COLLECTIVE_TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"cannot join the training processes at {launch.master_addr}:{launch.master_port} "
                             f"as rank {launch.rank} of {launch.world_size} ({backend}): {exc}") from exc
        logger.debug("rank %d of %d joined (%s, %s)", launch.rank, launch.world_size, backend, device)
    elif dist.get_world_size() != launch.world_size or dist.get_rank() != launch.rank:
        raise ModelError(f"the process group already initialised is rank {dist.get_rank()} of "
                         f"{dist.get_world_size()}; the environment says {launch.rank} of {launch.world_size}")
    parallel = DataParallel(launch, device)
    try:
        yield parallel
        parallel.barrier()
    finally:
        if owned:
            dist.destroy_process_group()
