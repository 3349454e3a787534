"""The compiled runner keeps each bucket's chunks between steps: every change must be seen.

A kept bucket skips making each parameter's inputs again; a step that changes what the bucket
holds (which parameters have gradients, where a parameter or state lives, a gradient's layout, a
channel view's shape) must rebuild it, or the kernels would update memory the optimizer no longer
uses. Each scenario runs on the compiled runner and on the loop runner, exactly equal in float64.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef

import fastoptim
from fastoptim.runners import probe
from fastoptim.runners.apply import apply_accumulate, apply_rule
from fastoptim.runners.compiled import chunks as compiled_chunks
from fastoptim.runners.compiled.ops import CompiledOps
from fastoptim.runners.ops import TensorOps, Workspace
from tests.cases import CASES, Case
from tests.problems import make_model, max_abs_diff

#: 20 tensors: a chunk of 16, then 4 and padding; weights and biases.
SHAPES = [(7, 3), (5,), (2, 3, 4)] * 6 + [(11,), (4, 4)]

Change = Callable[[list[Tensor], torch.optim.Optimizer, torch.Generator], None]


def _drop_a_gradient(
    params: list[Tensor], optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> None:
    params[4].grad = None


def _move_a_parameter(
    params: list[Tensor], optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> None:
    params[2].data = params[2].data.clone()


def _reload_the_states(
    params: list[Tensor], optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> None:
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))


def _transpose_a_gradient(
    params: list[Tensor], optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> None:
    rows, columns = params[0].shape
    params[0].grad = torch.randn(columns, rows, generator=generator, dtype=torch.float64).t()


def _nothing(params: list[Tensor], optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    pass


#: What happens before each step, after the new gradients; (name, change, rebuilds the bucket).
STEPS: list[tuple[str, Change, bool]] = [
    ("first", _nothing, True),
    ("steady", _nothing, False),
    ("a parameter without gradient", _drop_a_gradient, True),
    ("every parameter again", _nothing, True),
    ("a moved parameter", _move_a_parameter, True),
    ("loaded states", _reload_the_states, True),
    ("a transposed gradient", _transpose_a_gradient, True),
    ("steady again", _nothing, False),
]


def _scenario(backend: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Tensor], list[int]]:
    """Lion in float64 through :data:`STEPS`: the parameters, and per step the rows made one by one."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64)) for s in SHAPES]
    optimizer = fastoptim.Lion(params, lr=1e-2, weight_decay=0.25, backend=backend)
    made = [0]
    owned_inputs = compiled_chunks.owned_inputs

    def counting(*args: object, **kwargs: object) -> object:
        made[0] += 1
        return owned_inputs(*args, **kwargs)

    monkeypatch.setattr(compiled_chunks, "owned_inputs", counting)
    per_step = []
    for _, change, _ in STEPS:
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        change(params, optimizer, generator)
        made[0] = 0
        optimizer.step()
        per_step.append(made[0])
    return [param.detach() for param in params], per_step


def test_kept_buckets_follow_every_change_and_steady_steps_reuse_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled, made = _scenario("compiled", monkeypatch)
    loop, _ = _scenario("loop", monkeypatch)
    assert max_abs_diff(compiled, loop) == 0.0
    for (name, _, rebuilds), rows in zip(STEPS, made, strict=True):
        assert (rows > 0) == rebuilds, f"{name}: {rows} rows made one by one"


def test_channel_views_follow_a_parameter_reshaped_in_place() -> None:
    """AdamP steps weights as ``(size(0), -1)`` channel views: a weight (and its states) reshaped
    in place keeps its memory and size but needs other views. Gradients orthogonal to the weight
    in each channel of the new shape, so that the projection uses those channels."""
    generator = torch.Generator().manual_seed(3)
    start = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in ((6, 4), (6,))]
    grads = [
        [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in start] for _ in range(4)
    ]
    results = []
    for backend in ("compiled", "loop"):
        weight, bias = (torch.nn.Parameter(t.clone()) for t in start)
        optimizer = fastoptim.AdamP([weight, bias], lr=1e-2, weight_decay=1e-2, backend=backend)
        for step, (weight_grad, bias_grad) in enumerate(grads):
            if step == 2:
                for tensor in (weight, *optimizer.state[weight].values()):
                    if isinstance(tensor, Tensor) and tensor.dim() == 2:
                        tensor.data = tensor.data.view(4, 6)
            weight_grad = weight_grad.reshape(weight.shape).clone()
            channels = weight.detach()
            weight_grad -= (
                channels
                * (weight_grad * channels).sum(1, keepdim=True)
                / channels.square().sum(1, keepdim=True)
            )
            weight.grad, bias.grad = weight_grad, bias_grad.clone()
            optimizer.step()
        results.append([weight.detach().clone(), bias.detach().clone()])
    assert results[0][0].shape == (4, 6)
    assert max_abs_diff(*results) <= 1e-13


def test_load_state_dict_frees_the_states_it_replaces() -> None:
    """The kept inputs alias the states: loading a checkpoint drops them with the states, so a
    resumed run does not hold two copies of the optimizer's state until its next step."""
    param = torch.nn.Parameter(torch.randn(1000, dtype=torch.float64))
    param.grad = torch.randn(1000, dtype=torch.float64)
    optimizer = fastoptim.AdamW([param], lr=1e-2, weight_decay=1e-2, backend="compiled")
    optimizer.step()
    states = [t for t in optimizer.state[param].values() if isinstance(t, Tensor) and t.dim() > 0]
    replaced = [StorageWeakRef(t.untyped_storage()) for t in states]
    del states
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    gc.collect()
    assert replaced and all(ref.expired() for ref in replaced)


@pytest.mark.parametrize("ops", ["compiled", "loop"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_probe_reads_every_rule(case: Case, ops: str) -> None:
    """Only the projecting rules (AdamP, SGDP) keep channels (compiled: as channel views; loop: no
    blocks); only AdamP's stages its update (read with the compiled ops).

    A rule the meta-tensor probe cannot run would keep channels too (the safe answer), so this also
    fails when the probe breaks on a rule (as it once did on Prodigy's sliced states).
    """
    model = make_model()
    optimizer = case.build(model.parameters(), backend="loop")
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    _, buckets = optimizer._plans()[0]  # what a step hands its runners
    bucket = buckets[0]
    apply = apply_accumulate if optimizer.REDUCES else apply_rule
    if optimizer.REDUCES:
        optimizer.begin_reduction(buckets, one_pass=False)
    probe._TRAITS.clear()
    runner_ops = CompiledOps if ops == "compiled" else TensorOps(Workspace())
    traits = probe.rule_traits(optimizer, apply, next(iter(bucket.tensors())), bucket.scalars, runner_ops)
    assert traits.channels == (case.optimizer in (fastoptim.AdamP, fastoptim.SGDP))
    if ops == "compiled":
        assert traits.stages_update == (case.optimizer is fastoptim.AdamP)
