"""torch.optim's conventions: named parameters and ``maximize``, against torch.optim itself."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import fastoptim
from tests.cases import CASES_BY_NAME, REPRESENTATIVE_CASES
from tests.problems import make_batches, make_model, train


def test_named_parameters_as_torch_takes_them() -> None:
    """``model.named_parameters()`` gives groups and state dicts the ``param_names`` torch gives."""
    ours_model, theirs_model = make_model(), make_model()
    ours = fastoptim.AdamW(ours_model.named_parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    theirs = torch.optim.AdamW(theirs_model.named_parameters(), lr=1e-2, foreach=False)
    batches = make_batches(3)
    train(ours_model, ours, batches)
    train(theirs_model, theirs, batches)
    names = [name for name, _ in ours_model.named_parameters()]
    assert ours.param_groups[0]["param_names"] == names
    assert (
        ours.state_dict()["param_groups"][0]["param_names"]
        == theirs.state_dict()["param_groups"][0]["param_names"]
    )
    for a, b in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    resumed = fastoptim.AdamW(make_model().named_parameters(), lr=1e-2)
    resumed.load_state_dict(ours.state_dict())
    assert resumed.param_groups[0]["param_names"] == names


def test_named_and_unnamed_parameters_do_not_mix() -> None:
    model = make_model()
    named = list(model.named_parameters())
    with pytest.raises(ValueError, match="with names or none"):
        fastoptim.Adam([named[0], named[1][1]], lr=1e-3)
    optimizer = fastoptim.Adam(named[:2], lr=1e-3)
    with pytest.raises(ValueError, match=r"with names .*or none of them"):
        optimizer.add_param_group({"params": [p for _, p in named[2:]]})
    optimizer.add_param_group({"params": named[2:]})
    assert optimizer.param_groups[1]["param_names"] == [name for name, _ in named[2:]]


@pytest.mark.parametrize("backend", ["loop", "foreach", "compiled"])
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        ("Adam", dict(lr=1e-2, weight_decay=0.1)),
        ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
        ("SGD", dict(lr=1e-2, momentum=0.9, weight_decay=0.1)),
    ],
)
def test_maximize_as_torch(cls: str, kwargs: dict, backend: str) -> None:
    """torch's ``maximize=True``: the gradient negated before L2 decay."""
    ours_model, theirs_model = make_model(), make_model()
    torch_kwargs = {**kwargs, "betas": (0.9, 0.999), "eps": 1e-8} if cls != "SGD" else kwargs
    ours_kwargs = {**torch_kwargs, "decouple_wd": cls == "AdamW"} if cls != "AdamW" else torch_kwargs
    ours = getattr(fastoptim, cls)(ours_model.parameters(), maximize=True, backend=backend, **ours_kwargs)
    theirs = getattr(torch.optim, cls)(
        theirs_model.parameters(), maximize=True, foreach=False, **torch_kwargs
    )
    batches = make_batches(4)
    train(ours_model, ours, batches)
    train(theirs_model, theirs, batches)
    for a, b in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["loop", "foreach"])
@pytest.mark.parametrize("case", [*REPRESENTATIVE_CASES, CASES_BY_NAME["adan_prox_clip"]], ids=str)
def test_maximize_equals_the_negated_gradient(case, backend: str) -> None:
    """Every optimizer with ``maximize=True`` takes the steps it takes on the negated gradients."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (4,), (3, 2, 2)]
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(4)]
    results = []
    for maximize, sign in ((True, 1.0), (False, -1.0)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = case.build(params, maximize=maximize, backend=backend)
        for step in grads:
            for param, grad in zip(params, step, strict=True):
                param.grad = sign * grad
            optimizer.step()
        results.append([p.detach() for p in params])
    for a, b, first in zip(*results, start, strict=True):
        assert not torch.equal(a, first)
        assert torch.equal(a, b)


def test_maximize_is_checked() -> None:
    with pytest.raises(TypeError, match="maximize"):
        fastoptim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, maximize="yes")


@pytest.mark.parametrize("name", ["adamw", "prodigy"])
def test_torch_compile_of_step_runs_the_step_without_recompiling(name: str) -> None:
    """torch's recipe ``torch.compile(optimizer.step)``: no graph, no recompile as a scheduler
    moves lr, and the eager step's results."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    case = CASES_BY_NAME[name]
    models = [make_model(), make_model()]
    optimizers = [case.build(model.parameters()) for model in models]
    schedulers = [torch.optim.lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=4) for o in optimizers]
    torch._dynamo.reset()
    counters.clear()
    compiled_step = torch.compile(optimizers[0].step)
    for batch in make_batches(5):
        for model, optimizer, scheduler, step in zip(
            models, optimizers, schedulers, (compiled_step, optimizers[1].step), strict=True
        ):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(batch[0]), batch[1]).backward()
            step()
            scheduler.step()
    assert counters["stats"]["unique_graphs"] == 0
    assert sum(counters["recompiles"].values()) == 0
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


def _complex_run(build: Any, backend: str | None = None) -> list[torch.Tensor]:
    """Four steps on two complex parameters and a real one, with seeded gradients."""
    torch.manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(5, 3, dtype=torch.complex64)),
        torch.nn.Parameter(torch.randn(4, dtype=torch.complex64)),
        torch.nn.Parameter(torch.randn(4)),
    ]
    optimizer = build(params) if backend is None else build(params, backend=backend)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        for param in params:
            param.grad = torch.randn(param.shape, dtype=param.dtype, generator=generator)
        optimizer.step()
    return [param.detach() for param in params]


#: name -> (fastoptim, the official or torch's optimizer), on complex parameters.
COMPLEX = {
    "Adam": (
        lambda p, **b: fastoptim.Adam(p, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8, **b),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, foreach=False),
    ),
    "AdamW": (
        lambda p, **b: fastoptim.AdamW(p, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, **b),
        lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=False),
    ),
    "SGD": (
        lambda p, **b: fastoptim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True, **b),
        lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True, foreach=False),
    ),
    "ADOPT": (
        lambda p, **b: fastoptim.ADOPT(p, lr=1e-2, **b),
        lambda p: __import__("adopt").ADOPT(p, lr=1e-2, foreach=False),
    ),
    "Adan": (
        lambda p, **b: fastoptim.Adan(p, lr=1e-2, max_grad_norm=0.5, **b),
        lambda p: __import__("pytorch_optimizer").Adan(p, lr=1e-2, max_grad_norm=0.5, foreach=False),
    ),
}


@pytest.mark.parametrize("backend", ["loop", "foreach"])
@pytest.mark.parametrize("name", list(COMPLEX))
def test_complex_parameters_as_the_official_code(name: str, backend: str) -> None:
    """Complex parameters step through their real views, as torch.optim, torch-adopt and
    pytorch-optimizer step them (Adan's clipping norm counts both parts)."""
    ours, theirs = COMPLEX[name]
    for got, want in zip(_complex_run(ours, backend), _complex_run(theirs), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_complex_parameters_compiled() -> None:
    ours, theirs = COMPLEX["Adam"]
    for got, want in zip(_complex_run(ours, "compiled"), _complex_run(theirs), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_complex_parameters_refused_where_the_official_code_has_none(case) -> None:
    param = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    if case.optimizer.__name__ in COMPLEX:
        case.build([param])
        return
    with pytest.raises(TypeError, match=f"{case.optimizer.__name__} does not step complex parameters"):
        case.build([param])
