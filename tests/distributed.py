"""Two-process runs (gloo, CPU) of every registry case under FSDP2, DDP and ZeRO.

Each setup trains :func:`uneven_model` for :data:`STEPS` steps, each rank on its half of the
batch, and returns the full parameters; the tests compare them with one process on the whole
batch. The model's layers have 3, 5, 1, 4, 2 and 3 output features, so that FSDP2 shards them
unevenly over two ranks and leaves one rank a shard of zero rows. Float64 throughout, so that
only the optimizers' maths (not the order of the gradient sums) can make the runs differ.

:func:`run` spawns the two processes once per setup and runs every variant in them.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.cases import CASES_BY_NAME

WORLD = 2
STEPS = 5
FEATURES = (4, 3, 5, 1, 4, 2, 3)
DTYPE = torch.float64
#: The step after which :func:`_checkpoint` saves and resumes.
RESUME_AT = 3
#: Where :func:`_checkpoint` saves (set in each process from :func:`run`'s temporary directory).
CHECKPOINTS = ""
#: How long a rank waits in a collective (a variant that fails on one rank only ends there).
TIMEOUT_S = 60

#: A variant after its steps: parameter name -> full tensor, and ``group.KEY`` -> the first param
#: group's float values (D-Adaptation's and Prodigy's ``d`` and sums) as 0-d tensors.
Params = dict[str, torch.Tensor]


def _outcome(params: dict[str, torch.Tensor], optimizer: Any) -> Params:
    group = optimizer.param_groups[0]
    floats = {
        f"group.{key}": torch.tensor(value, dtype=DTYPE)
        for key, value in group.items()
        if type(value) is float
    }
    return {**{key: value.detach().clone() for key, value in params.items()}, **floats}


class RowNormalizedLinear(nn.Linear):
    """A linear layer whose weight rows are normalised: each row is scale-invariant, so that AdamP's
    and SGDP's per-channel projection fires on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight / self.weight.norm(dim=1, keepdim=True), self.bias)


def uneven_model(seed: int = 0) -> nn.Sequential:
    """Six linear layers (tanh between them) whose output features shard unevenly over 2 ranks;
    the second one row-normalised."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(FEATURES)):
        layers += [(RowNormalizedLinear if index == 1 else nn.Linear)(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(DTYPE)


def batches(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One regression batch of 8 per step."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(8, FEATURES[0], generator=generator, dtype=DTYPE),
            torch.randn(8, FEATURES[-1], generator=generator, dtype=DTYPE),
        )
        for _ in range(STEPS)
    ]


def _train(model: nn.Module, optimizer: Any, rank: int, world: int, steps: slice = slice(None)) -> None:
    for x, y in batches()[steps]:
        part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x[part]), y[part]).backward()
        optimizer.step()


def build(name: str, params: Any, backend: str, **extra: Any) -> Any:
    """The registry case ``name`` on ``params``."""
    return CASES_BY_NAME[name].build(params, backend=backend, **extra)


def single_process(name: str, backend: str) -> Params:
    """The reference: one process on the whole batch."""
    model = uneven_model()
    optimizer = build(name, model.parameters(), backend)
    _train(model, optimizer, 0, 1)
    return _outcome(dict(model.named_parameters()), optimizer)


def _sharded_model(mesh: Any = None) -> nn.Module:
    """:func:`uneven_model` under FSDP2: each linear layer and the whole model ``fully_shard``-ed."""
    from torch.distributed.fsdp import fully_shard

    model = uneven_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _full(model: nn.Module, optimizer: Any) -> Params:
    return _outcome({key: value.full_tensor() for key, value in model.named_parameters()}, optimizer)


def _fsdp2(name: str, backend: str, rank: int, world: int) -> Params:
    model = _sharded_model()
    optimizer = build(name, model.parameters(), backend)
    _train(model, optimizer, rank, world)
    return _full(model, optimizer)


def _hsdp(name: str, backend: str, rank: int, world: int) -> Params:
    """HSDP on a (replicate 2, shard 1) mesh: placements (Replicate, Shard(0)), whose replicas must
    not add their sums up."""
    from torch.distributed.device_mesh import init_device_mesh

    model = _sharded_model(init_device_mesh("cpu", (world, 1), mesh_dim_names=("replicate", "shard")))
    optimizer = build(name, model.parameters(), backend)
    _train(model, optimizer, rank, world)
    return _full(model, optimizer)


def _state_dict_first(name: str, backend: str, rank: int, world: int) -> Params:
    """FSDP2, with ``get_optimizer_state_dict`` called before the first step (torch then steps
    the optimizer once with zero gradients and lr 0 to create its state)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = _sharded_model()
    optimizer = build(name, model.parameters(), backend)
    get_optimizer_state_dict(model, optimizer)
    _train(model, optimizer, rank, world)
    return _full(model, optimizer)


def _checkpoint(name: str, backend: str, rank: int, world: int) -> Params:
    """FSDP2: :data:`RESUME_AT` steps, ``dcp.save``; a fresh model and optimizer ``dcp.load`` it and
    take the remaining steps."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as dcp_state

    model = _sharded_model()
    optimizer = build(name, model.parameters(), backend)
    _train(model, optimizer, rank, world, slice(None, RESUME_AT))
    saved = {
        "model": dcp_state.get_model_state_dict(model),
        "optim": dcp_state.get_optimizer_state_dict(model, optimizer),
    }
    directory = os.path.join(CHECKPOINTS, f"{name}-{backend}")
    dcp.save(saved, checkpoint_id=directory)
    model = _sharded_model()
    optimizer = build(name, model.parameters(), backend)
    loaded = {
        "model": dcp_state.get_model_state_dict(model),
        "optim": dcp_state.get_optimizer_state_dict(model, optimizer),
    }
    dcp.load(loaded, checkpoint_id=directory)
    dcp_state.set_model_state_dict(model, loaded["model"])
    dcp_state.set_optimizer_state_dict(model, optimizer, loaded["optim"])
    _train(model, optimizer, rank, world, slice(RESUME_AT, None))
    return _full(model, optimizer)


def _released(name: str, model: nn.Module, backend: str) -> Any:
    import fastoptim

    optimizer = build(name, model.parameters(), backend, gradient_release=True)
    fastoptim.prepare_for_gradient_release(model, optimizer)
    return optimizer


def _fsdp2_release(name: str, backend: str, rank: int, world: int) -> Params:
    """FSDP2 with gradient release: each shard steps in its post-accumulate-grad hook."""
    model = _sharded_model()
    optimizer = _released(name, model, backend)
    _train(model, optimizer, rank, world)
    return _full(model, optimizer)


def _ddp_release(name: str, backend: str, rank: int, world: int) -> Params:
    """DDP with gradient release: each parameter steps in DDP's communication hook."""
    model = nn.parallel.DistributedDataParallel(uneven_model())
    optimizer = _released(name, model, backend)
    _train(model, optimizer, rank, world)
    return _outcome(dict(model.module.named_parameters()), optimizer)


def _ddp(name: str, backend: str, rank: int, world: int) -> Params:
    model = nn.parallel.DistributedDataParallel(uneven_model())
    optimizer = build(name, model.parameters(), backend)
    _train(model, optimizer, rank, world)
    return _outcome(dict(model.module.named_parameters()), optimizer)


def _zero(name: str, backend: str, rank: int, world: int, shard_group: Any = "world") -> Params:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = nn.parallel.DistributedDataParallel(uneven_model())
    case = CASES_BY_NAME[name]
    optimizer = ZeroRedundancyOptimizer(
        model.parameters(),
        optimizer_class=case.optimizer,
        backend=backend,
        shard_group=dist.group.WORLD if shard_group == "world" else shard_group,
        **case.kwargs,
    )
    _train(model, optimizer, rank, world)
    return _outcome(dict(model.module.named_parameters()), optimizer.optim)


SETUPS: dict[str, Callable[[str, str, int, int], Params]] = {
    "fsdp2": _fsdp2,
    "hsdp": _hsdp,
    "state_dict_first": _state_dict_first,
    "checkpoint": _checkpoint,
    "fsdp2_release": _fsdp2_release,
    "ddp_release": _ddp_release,
    "ddp": _ddp,
    "zero": _zero,
    "zero_unaware": functools.partial(_zero, shard_group=None),  # for a test that the check fails
}


def _worker(rank: int, setup: str, variants: list[tuple[str, str]], directory: str) -> None:
    global CHECKPOINTS
    CHECKPOINTS = directory
    init_file, out = os.path.join(directory, "init"), os.path.join(directory, "out.pt")
    timeout = datetime.timedelta(seconds=TIMEOUT_S)
    init = f"file://{init_file}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD, timeout=timeout)
    try:
        results = {}
        for name, backend in variants:
            try:
                results[(name, backend)] = SETUPS[setup](name, backend, rank, WORLD)
            except Exception as error:  # reported to the test, which fails on it
                results[(name, backend)] = f"{type(error).__name__}: {error}"
        if rank == 0:
            torch.save(results, out)
        dist.barrier()  # no rank tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()


def run(setup: str, variants: list[tuple[str, str]]) -> dict[tuple[str, str], Params | str]:
    """Runs ``variants`` (case name, backend) under ``setup`` on 2 processes; rank 0's results.

    A variant that raised gives its error message instead of parameters.
    """
    with tempfile.TemporaryDirectory() as directory:
        mp.spawn(_worker, args=(setup, variants, directory), nprocs=WORLD, join=True)
        return torch.load(os.path.join(directory, "out.pt"), weights_only=False)
