"""ADOPT against the official torch-adopt 0.1.0 and its golden runs, and its pitfalls."""

from __future__ import annotations

import itertools

import adopt
import pytest
import torch

import fastoptim
from tests.reference import golden

# v1_* runs are the pre-clipping release (different maths); maximize is not supported.
RUNS = golden.runs("adopt", lambda run, spec: run.startswith("v1") or "maximize" in run)


@pytest.mark.parametrize("backend", ["loop", "foreach"])
@pytest.mark.parametrize("run", RUNS)
def test_golden_runs(run: str, backend: str) -> None:
    overrides = {} if "foreach" in golden.load("adopt")["runs"][run]["kwargs"] else {"backend": backend}
    ours, gold, _ = golden.replay("adopt", run, fastoptim.ADOPT, **overrides)
    # The official package drifts from these files by up to 2e-6 on this CPU (zero_last, noclip).
    assert golden.max_diff(ours, gold) < 5e-6
    official, _, _ = golden.replay("adopt", run, adopt.ADOPT)
    if backend == "loop":
        assert golden.max_diff(ours, official) == 0, "the loop runner follows the official ops exactly"
    else:
        assert golden.max_diff(ours, official) < 1e-6


def _params(*shapes):
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*shape)) for shape in shapes]


def test_first_call_only_initialises_the_second_moment() -> None:
    (p,) = _params((4, 3))
    before = p.detach().clone()
    optimizer = fastoptim.ADOPT([p], lr=0.1, weight_decay=0.5, decouple=True)
    p.grad = torch.randn(4, 3)
    optimizer.step()
    assert torch.equal(p, before), "no update and no decay at the first call"
    assert torch.equal(optimizer.state[p]["exp_avg"], torch.zeros(4, 3))
    assert torch.equal(optimizer.state[p]["exp_avg_sq"], p.grad * p.grad)


def test_eps_is_a_floor_and_the_clip_uses_the_count_before_increment() -> None:
    (p,) = _params((1000,))
    before = p.detach().clone()
    optimizer = fastoptim.ADOPT([p], lr=1.0, betas=(0.0, 0.5), eps=1e-3, clip_lambda=lambda n: 10 * n)
    p.grad = torch.full((1000,), 1e-5)  # v = 1e-10, sqrt(v) = 1e-5 < eps
    optimizer.step()
    p.grad = torch.full((1000,), 2e-3)
    optimizer.step()
    # beta1 = 0: m = clip(g / max(sqrt(v), eps), 10 * 1) = min(2e-3 / 1e-3, 10) = 2
    torch.testing.assert_close(before - p.detach(), torch.full((1000,), 2.0))
    p.grad = torch.full((1000,), 1.0)
    before = p.detach().clone()
    optimizer.step()
    # second update: previous calls n = 2, so the bound is 20; v = 0.5e-10 + 0.5 * 4e-6
    v = 0.5 * 1e-10 + 0.5 * 4e-6
    expected = min(1.0 / max(v**0.5, 1e-3), 20.0)
    torch.testing.assert_close(before - p.detach(), torch.full((1000,), expected))


@pytest.mark.parametrize("backend", ["loop", "foreach"])
def test_late_parameter_is_initialised_per_parameter(backend: str) -> None:
    """A parameter whose first gradient comes at call 2 gets its own v-initialising call, as on the
    official single-tensor path (the official foreach path would divide its gradient by eps)."""
    early, late = _params((5,), (5,))
    grads = [torch.randn(5) for _ in range(8)]
    ours = fastoptim.ADOPT([early, late], lr=1e-2, backend=backend)
    ref_early, ref_late = (torch.nn.Parameter(t.detach().clone()) for t in (early, late))
    reference = adopt.ADOPT([ref_early, ref_late], lr=1e-2, foreach=False)
    for call in range(4):
        for (a, b), opt in (((early, late), ours), ((ref_early, ref_late), reference)):
            a.grad = grads[2 * call].clone()
            b.grad = None if call == 0 else grads[2 * call + 1].clone()
            opt.step()
    assert ours.state[late]["step"] == 3
    torch.testing.assert_close(late.detach(), ref_late.detach(), atol=0, rtol=0)
    torch.testing.assert_close(early.detach(), ref_early.detach(), atol=0, rtol=0)


def test_zero_initialised_layer_does_not_blow_up() -> None:
    """A zero-initialised last layer gives all-zero gradients upstream at the first call, so v = 0
    there; the clip bounds the next updates by lr * (1 - beta1) * n ** 0.25 per coordinate."""
    ours, _, _ = golden.replay("adopt", "zero_last_lr1e-2", fastoptim.ADOPT)
    lr = 1e-2
    for step, (before, after) in enumerate(itertools.pairwise(ours), start=2):
        bound = lr * step**0.25  # |m| <= max clip so far
        for name in after:
            assert (after[name] - before[name]).abs().max() <= bound + 1e-7
    unclipped, _, _ = golden.replay("adopt", "zero_last_lr1e-2_noclip", fastoptim.ADOPT)
    assert golden.max_diff(unclipped, ours) > 1e-3, "without the clip the eps division shows"


def test_clip_lambda_is_an_attribute_and_pickles() -> None:
    import pickle

    (p,) = _params((3,))
    optimizer = fastoptim.ADOPT([p])
    assert "clip_lambda" not in optimizer.param_groups[0]
    restored = pickle.loads(pickle.dumps(optimizer))
    assert restored.clip_lambda(16.0) == 2.0


def test_bad_arguments() -> None:
    (p,) = _params((3,))
    with pytest.raises(TypeError, match="clip_lambda"):
        fastoptim.ADOPT([p], clip_lambda=0.25)
    with pytest.raises(ValueError, match="fused"):
        fastoptim.ADOPT([p], fused=True)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        fastoptim.ADOPT([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        fastoptim.ADOPT([p], eps=-1.0)
    with pytest.raises(TypeError, match="decouple"):
        fastoptim.ADOPT([p], decouple="yes")
