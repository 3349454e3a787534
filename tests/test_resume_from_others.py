"""A run started with another library's optimizer resumes in fastoptim, and back where formats allow.

Each original optimizer takes 3 steps; its state dict is loaded into a fastoptim optimizer built
with other hyperparameters, and both take 3 more steps from the same parameters: equal to float32
rounding, the hyperparameters, step counts and group values (``d``, ``k``) taken over.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import adamp
import dadaptation
import lion_pytorch
import optimi
import prodigyopt
import pytest
import pytorch_optimizer
import torch
from adopt import ADOPT as OfficialADOPT

import fastoptim
from tests.problems import make_batches, make_model, train

#: name -> (original factory on params, fastoptim class, what the fastoptim optimizer is built with).
RESUMES: dict[str, tuple[Callable[[Any], torch.optim.Optimizer], type, dict[str, Any]]] = {
    "torch_adam_l2": (lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1), fastoptim.Adam, {"lr": 0.5}),
    "torch_adam_decoupled": (
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
        fastoptim.Adam,
        {"lr": 0.5},
    ),
    "torch_adamw": (lambda p: torch.optim.AdamW(p, lr=1e-2), fastoptim.AdamW, {"lr": 0.5}),
    "torch_sgd_nesterov": (
        lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
        fastoptim.SGD,
        {"lr": 0.5, "momentum": 0.5},
    ),
    "torch_sgd_plain": (lambda p: torch.optim.SGD(p, lr=1e-2), fastoptim.SGD, {"lr": 0.5}),
    "torch_adopt": (lambda p: OfficialADOPT(p, lr=1e-2), fastoptim.ADOPT, {"lr": 0.5}),
    "adamp": (lambda p: adamp.AdamP(p, lr=1e-2, weight_decay=1e-2), fastoptim.AdamP, {"lr": 0.5}),
    "sgdp": (lambda p: adamp.SGDP(p, lr=0.1, momentum=0.9, weight_decay=1e-2), fastoptim.SGDP, {"lr": 0.5}),
    "dadapt_sgd": (lambda p: dadaptation.DAdaptSGD(p, momentum=0.9), fastoptim.DAdaptSGD, {}),
    "dadapt_adam": (lambda p: dadaptation.DAdaptAdam(p), fastoptim.DAdaptAdam, {}),
    "dadapt_adagrad": (lambda p: dadaptation.DAdaptAdaGrad(p), fastoptim.DAdaptAdaGrad, {}),
    "dadapt_lion": (lambda p: dadaptation.DAdaptLion(p, lr=1.0), fastoptim.DAdaptLion, {}),
    "dadapt_adan": (lambda p: dadaptation.DAdaptAdan(p), fastoptim.DAdaptAdan, {}),
    "prodigy": (lambda p: prodigyopt.Prodigy(p, d0=1e-4), fastoptim.Prodigy, {}),
    "prodigy_slice": (lambda p: prodigyopt.Prodigy(p, d0=1e-4, slice_p=3), fastoptim.Prodigy, {"slice_p": 3}),
    "optimi_adam": (lambda p: optimi.Adam(p, lr=1e-2, foreach=False), fastoptim.Adam, {"lr": 0.5}),
    "optimi_adamw": (
        lambda p: optimi.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=False),
        fastoptim.AdamW,
        {"lr": 0.5},
    ),
    "optimi_sgd": (
        lambda p: optimi.SGD(p, lr=1e-2, momentum=0.9, dampening=True, foreach=False),
        fastoptim.SGD,
        {"lr": 0.5},
    ),
    "optimi_lion": (
        lambda p: optimi.Lion(p, lr=1e-3, weight_decay=0.1, foreach=False),
        fastoptim.Lion,
        {"lr": 0.5},
    ),
    "lion_pytorch": (lambda p: lion_pytorch.Lion(p, lr=1e-3, weight_decay=0.1), fastoptim.Lion, {"lr": 0.5}),
    "pytorch_optimizer_adan": (
        lambda p: pytorch_optimizer.Adan(p, lr=1e-2, weight_decay=0.02, weight_decouple=True, foreach=False),
        fastoptim.Adan,
        {"lr": 0.5},
    ),
}


def _floats(group: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in group.items() if type(v) is float and k not in ("lr",)}


@pytest.mark.parametrize("name", list(RESUMES))
def test_resume_from_the_original(name: str) -> None:
    make_original, cls, ours_kwargs = RESUMES[name]
    batches = make_batches(6)
    model = make_model()
    original = make_original(model.parameters())
    train(model, original, batches[:3])
    saved = copy.deepcopy(original.state_dict())
    resumed_model = copy.deepcopy(model)
    ours = cls(resumed_model.parameters(), **ours_kwargs)
    ours.load_state_dict(saved)
    train(model, original, batches[3:])
    train(resumed_model, ours, batches[3:])
    for a, b in zip(resumed_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    theirs = original.param_groups[0]
    for key, value in _floats(ours.param_groups[0]).items():
        if key in theirs and type(theirs[key]) is float:
            assert value == pytest.approx(theirs[key], rel=1e-4, abs=1e-12), key
    assert ours.param_groups[0]["lr"] == theirs["lr"]


def _torch_adam_state() -> dict[str, Any]:
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, optimizer, make_batches(2))
    return optimizer.state_dict()


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (fastoptim.Lion, {"lr": 1e-3}, r"has \['exp_avg_sq'\], which Lion does not keep"),
        (fastoptim.AdamP, {"lr": 1e-3}, r"param group 0 has no 'delta': not a AdamP state dict"),
        (
            fastoptim.SGD,
            {"lr": 1e-3, "momentum": 0.9},
            r"param group 0 has no 'momentum': not a SGD state dict",
        ),
    ],
)
def test_another_algorithm_is_refused_before_anything_changes(cls: type, kwargs: dict, message: str) -> None:
    model = make_model()
    optimizer = cls(model.parameters(), **kwargs)
    train(model, optimizer, make_batches(1))
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(_torch_adam_state())
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for key, state in before["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(after["state"][key][name]), torch.as_tensor(value))


def test_a_wrong_shape_and_amsgrad_are_refused() -> None:
    state = _torch_adam_state()
    state["state"][0]["exp_avg"] = torch.zeros(3)
    with pytest.raises(
        ValueError, match=r"parameter 0's 'exp_avg' has shape \(3,\), its parameter needs \(16, 6\)"
    ):
        fastoptim.Adam(make_model().parameters(), lr=1e-3).load_state_dict(state)
    model = make_model()
    amsgrad = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    train(model, amsgrad, make_batches(1))
    with pytest.raises(ValueError, match="amsgrad=True"):
        fastoptim.Adam(make_model().parameters(), lr=1e-3).load_state_dict(amsgrad.state_dict())


#: The originals that load fastoptim's state dicts and continue as from their own (torch-optimi's
#: and pytorch-optimizer's formats differ too much: see docs/features/checkpoints.md).
REVERSE = [
    "torch_adam_l2",
    "torch_adamw",
    "torch_sgd_nesterov",
    "torch_adopt",
    "adamp",
    "sgdp",
    "dadapt_sgd",
    "dadapt_adam",
    "dadapt_adagrad",
    "dadapt_adan",
    "dadapt_lion",
    "prodigy",
    "prodigy_slice",
    "lion_pytorch",
]


@pytest.mark.parametrize("name", REVERSE)
def test_fastoptim_state_into_the_original(name: str) -> None:
    make_original, cls, _ = RESUMES[name]
    batches = make_batches(6)
    model = make_model()
    reference = make_original(model.parameters())
    accepted = inspect.signature(cls).parameters
    ours = cls(model.parameters(), **{k: v for k, v in reference.defaults.items() if k in accepted})
    train(model, ours, batches[:3])
    back_model = copy.deepcopy(model)
    original = make_original(back_model.parameters())
    original.load_state_dict(copy.deepcopy(ours.state_dict()))
    train(model, ours, batches[3:])
    train(back_model, original, batches[3:])
    for a, b in zip(back_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
