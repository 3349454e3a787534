"""Every optimizer under FSDP2, DDP and ZeRO on 2 processes equals one process on the whole batch."""

from __future__ import annotations

import pytest
import torch

from tests.cases import CASES_BY_NAME, REPRESENTATIVE_CASES
from tests.distributed import run, single_process, uneven_model

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch is built without torch.distributed"
)

#: One case per optimizer class, and Adan's global clipping.
NAMES = [case.name for case in REPRESENTATIVE_CASES] + ["adan_prox_clip"]
EAGER = [(name, backend) for name in NAMES for backend in ("loop", "foreach")]
RELATIVE = 1e-5
#: The parameters before the first step.
START = {key: value.detach().clone() for key, value in uneven_model().named_parameters()}


def _check(results: dict, variants: list[tuple[str, str]]) -> None:
    failures = []
    for name, backend in variants:
        got = results[(name, backend)]
        if isinstance(got, str):
            failures.append(f"{name} on {backend}: {got}")
            continue
        expected = single_process(name, backend)
        for key, value in expected.items():
            # parameters: against what the steps moved them; group values: against themselves
            if torch.equal(got[key], value):  # also an infinite growth_rate
                continue
            scale = (value - START[key]).norm() if key in START else value.abs().clamp_min(1e-30)
            error = (got[key] - value).norm() / scale
            if not error <= RELATIVE:
                failures.append(f"{name} on {backend}: {key} relative error {error:.2e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("setup", ["fsdp2", "ddp", "zero", "hsdp"])
def test_two_ranks_equal_one_process(setup: str) -> None:
    _check(run(setup, EAGER), EAGER)


def test_fsdp2_compiled_equals_one_process() -> None:
    variants = [(name, "compiled") for name in NAMES]
    _check(run("fsdp2", variants), variants)


@pytest.mark.parametrize("setup", ["fsdp2_release", "ddp_release"])
def test_gradient_release_across_ranks(setup: str) -> None:
    """Each parameter steps inside backward on the averaged gradient (DDP: in its communication
    hook; FSDP2: on the reduce-scattered shard), as an ordinary step would."""
    variants = [(name, "loop") for name in NAMES if CASES_BY_NAME[name].gradient_release]
    _check(run(setup, variants), variants)


def test_distributed_checkpoint_resumes_exactly() -> None:
    """dcp.save after 3 steps, dcp.load into a fresh model and optimizer, 2 more steps: the same as
    5 steps in one process."""
    variants = [(name, "foreach") for name in NAMES]
    _check(run("checkpoint", variants), variants)


def test_state_dict_before_the_first_step_changes_nothing() -> None:
    """torch's get_optimizer_state_dict steps a stateless optimizer with zero gradients and lr 0;
    that step counts nothing (no step, no d, no clipping statistic)."""
    variants = [(name, "loop") for name in NAMES]
    _check(run("state_dict_first", variants), variants)


def test_reference_moves_the_parameters() -> None:
    """The comparison can fail: five steps move every parameter of the reference."""
    for name in NAMES:
        moved = single_process(name, "loop")
        for key, value in START.items():
            assert not torch.equal(moved[key], value), f"{name}: {key} did not move"
    assert CASES_BY_NAME["adan_prox_clip"].kwargs["max_grad_norm"] > 0


def test_zero_without_shard_group_is_caught() -> None:
    """Under ZeRO each rank holds whole parameters of its own: without ``shard_group`` DAdaptAdam's
    and Adan's clipping sums cover one rank's parameters, and the comparison sees it."""
    variants = [("dadapt_adam", "loop"), ("adan_prox_clip", "loop")]
    results = run("zero_unaware", variants)
    for variant in variants:
        with pytest.raises(AssertionError, match="relative error"):
            _check(results, [variant])
