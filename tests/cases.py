"""Declarative registry of optimizer configurations.

Each case names a fastoptim optimizer with explicit hyperparameters and, where one exists, the
reference implementations that must follow the same trajectory. Entries never mention backends,
dtypes or features: the test harness adds those variants to every case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import fastoptim
import fastoptim.runners
from tests.reference import (
    lion_pytorch_lion,
    official_adamp,
    official_adopt,
    official_dadaptation,
    official_prodigy,
    optimi_optimizer,
    pytorch_optimizer_adan,
)

ReferenceFactory = Callable[[Any], torch.optim.Optimizer]


@dataclass(frozen=True)
class Case:
    """One optimizer configuration.

    Attributes:
        name: Test id.
        optimizer: The fastoptim class.
        kwargs: Its constructor arguments.
        references: Reference name -> factory building the reference optimizer on given params.
        low_precision_reason: Why the case is left out of the bf16/fp16 trajectory comparisons,
            or None when it takes part.
        gradient_release: False where the configuration must refuse gradient release.
    """

    name: str
    optimizer: type[fastoptim.Optimizer]
    kwargs: dict[str, Any]
    references: dict[str, ReferenceFactory] = field(default_factory=dict)
    low_precision_reason: str | None = None
    gradient_release: bool = True

    def build(self, params: Any, **extra: Any) -> fastoptim.Optimizer:
        return self.optimizer(params, **{**self.kwargs, **extra})

    def __str__(self) -> str:
        return self.name


def torch_optim(cls: type, **kwargs: Any) -> ReferenceFactory:
    return lambda params: cls(params, foreach=False, **kwargs)


ADAM_TORCH = dict(betas=(0.9, 0.99), eps=1e-6)

CASES: list[Case] = [
    Case(
        "adam",
        fastoptim.Adam,
        dict(lr=1e-2),
        {
            "torch": torch_optim(torch.optim.Adam, lr=1e-2, **ADAM_TORCH),
            "optimi": optimi_optimizer("Adam", lr=1e-2),
        },
    ),
    Case(
        "adam_betas_eps",
        fastoptim.Adam,
        dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-8),
        {
            "torch": torch_optim(torch.optim.Adam, lr=3e-3, betas=(0.8, 0.95), eps=1e-8),
            "optimi": optimi_optimizer("Adam", lr=3e-3, betas=(0.8, 0.95), eps=1e-8),
        },
    ),
    Case(
        "adam_l2",
        fastoptim.Adam,
        dict(lr=1e-2, weight_decay=0.1),
        {
            "torch": torch_optim(torch.optim.Adam, lr=1e-2, weight_decay=0.1, **ADAM_TORCH),
            "optimi": optimi_optimizer("Adam", lr=1e-2, weight_decay=0.1),
        },
    ),
    Case(
        "adam_decouple_wd",
        fastoptim.Adam,
        dict(lr=1e-2, weight_decay=0.1, decouple_wd=True),
        {
            "torch": torch_optim(torch.optim.AdamW, lr=1e-2, weight_decay=0.1, **ADAM_TORCH),
            "optimi": optimi_optimizer("Adam", lr=1e-2, weight_decay=0.1, decouple_wd=True),
        },
    ),
    Case(
        "adamw",
        fastoptim.AdamW,
        dict(lr=1e-2),
        {
            "torch": torch_optim(torch.optim.AdamW, lr=1e-2, weight_decay=1e-2, **ADAM_TORCH),
            "optimi": optimi_optimizer("AdamW", lr=1e-2),
        },
    ),
    Case(
        "adamw_decouple_lr",
        fastoptim.AdamW,
        dict(lr=1e-2, weight_decay=1e-3, decouple_lr=True, max_lr=2e-2),
        {
            # lr / max_lr * wd per step == torch's lr * (wd / max_lr)
            "torch": torch_optim(torch.optim.AdamW, lr=1e-2, weight_decay=1e-3 / 2e-2, **ADAM_TORCH),
            "optimi": optimi_optimizer("AdamW", lr=1e-2, weight_decay=1e-3, decouple_lr=True, max_lr=2e-2),
        },
    ),
    Case(
        "sgd",
        fastoptim.SGD,
        dict(lr=5e-2),
        {
            "torch": torch_optim(torch.optim.SGD, lr=5e-2),
            "optimi": optimi_optimizer("SGD", lr=5e-2),
        },
    ),
    Case(
        "sgd_momentum_l2",
        fastoptim.SGD,
        dict(lr=2e-2, momentum=0.9, weight_decay=1e-2),
        {
            "torch": torch_optim(torch.optim.SGD, lr=2e-2, momentum=0.9, weight_decay=1e-2),
            "optimi": optimi_optimizer("SGD", lr=2e-2, momentum=0.9, weight_decay=1e-2),
        },
    ),
    Case(
        "sgd_dampening",
        fastoptim.SGD,
        dict(lr=2e-2, momentum=0.8, dampening=0.3),
        {"torch": torch_optim(torch.optim.SGD, lr=2e-2, momentum=0.8, dampening=0.3)},
    ),
    Case(
        "sgd_nesterov",
        fastoptim.SGD,
        dict(lr=2e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
        {"torch": torch_optim(torch.optim.SGD, lr=2e-2, momentum=0.9, nesterov=True, weight_decay=1e-3)},
    ),
    Case(
        "sgd_decouple_wd",
        fastoptim.SGD,
        dict(lr=2e-2, momentum=0.9, weight_decay=0.1, decouple_wd=True),
        {"optimi": optimi_optimizer("SGD", lr=2e-2, momentum=0.9, weight_decay=0.1, decouple_wd=True)},
    ),
    Case(
        "sgd_decouple_lr",
        fastoptim.SGD,
        dict(lr=2e-2, momentum=0.9, weight_decay=1e-3, decouple_lr=True, max_lr=4e-2),
        {
            "optimi": optimi_optimizer(
                "SGD", lr=2e-2, momentum=0.9, weight_decay=1e-3, decouple_lr=True, max_lr=4e-2
            )
        },
    ),
    Case(
        "lion",
        fastoptim.Lion,
        dict(lr=1e-3),
        {"optimi": optimi_optimizer("Lion", lr=1e-3), "lion_pytorch": lion_pytorch_lion(lr=1e-3)},
    ),
    Case(
        "lion_wd_betas",
        fastoptim.Lion,
        dict(lr=1e-3, betas=(0.95, 0.98), weight_decay=0.5),
        {
            "optimi": optimi_optimizer("Lion", lr=1e-3, betas=(0.95, 0.98), weight_decay=0.5),
            "lion_pytorch": lion_pytorch_lion(lr=1e-3, betas=(0.95, 0.98), weight_decay=0.5),
        },
    ),
    Case(
        "lion_decouple_lr",
        fastoptim.Lion,
        dict(lr=1e-3, weight_decay=1e-3, decouple_lr=True),
        {
            "optimi": optimi_optimizer("Lion", lr=1e-3, weight_decay=1e-3, decouple_lr=True),
            "lion_pytorch": lion_pytorch_lion(lr=1e-3, weight_decay=1e-3, decoupled_weight_decay=True),
        },
    ),
    Case("lion_l2", fastoptim.Lion, dict(lr=1e-3, weight_decay=0.1, decouple_wd=False)),
    Case("adopt", fastoptim.ADOPT, dict(lr=1e-2), {"official": official_adopt(lr=1e-2)}),
    Case(
        "adopt_l2_noclip",
        fastoptim.ADOPT,
        dict(lr=1e-2, weight_decay=0.1, clip_lambda=None, betas=(0.8, 0.99)),
        {"official": official_adopt(lr=1e-2, weight_decay=0.1, clip_lambda=None, betas=(0.8, 0.99))},
        low_precision_reason=(
            "unclipped ADOPT divides by the root of a bf16/fp16 second moment without bound: the "
            "trajectory departs from float32 by O(1) with or without Kahan (why the authors added the clip)"
        ),
    ),
    Case("adan", fastoptim.Adan, dict(lr=1e-2), {"pytorch_optimizer": pytorch_optimizer_adan(lr=1e-2)}),
    Case(
        "adan_prox_clip",
        fastoptim.Adan,
        dict(lr=1e-2, weight_decay=0.02, max_grad_norm=0.5),
        {"pytorch_optimizer": pytorch_optimizer_adan(lr=1e-2, weight_decay=0.02, max_grad_norm=0.5)},
        gradient_release=False,
    ),
    Case(
        "adan_no_prox",
        fastoptim.Adan,
        dict(lr=1e-2, weight_decay=0.02, no_prox=True, betas=(0.9, 0.9, 0.999), eps=1e-6),
        {
            "pytorch_optimizer": pytorch_optimizer_adan(
                lr=1e-2, weight_decay=0.02, weight_decouple=True, betas=(0.9, 0.9, 0.999), eps=1e-6
            )
        },
    ),
    Case(
        "adopt_decouple",
        fastoptim.ADOPT,
        dict(lr=1e-2, weight_decay=0.1, decouple=True, eps=1e-8),
        {"official": official_adopt(lr=1e-2, weight_decay=0.1, decouple=True, eps=1e-8)},
    ),
]

PROJECTION_FLIP = (
    "a projection decision near its threshold goes the other way in bf16 than in float32 (an "
    "O(update) jump Kahan cannot prevent; with delta=0 Kahan is 7x closer)"
)
ADAMP_CASES = [
    ("adamp", "AdamP", dict(lr=1e-2, weight_decay=1e-2), None),
    (
        "adamp_nesterov",
        "AdamP",
        dict(lr=1e-2, weight_decay=1e-2, nesterov=True, delta=0.2, wd_ratio=0.5),
        None,
    ),
    ("sgdp", "SGDP", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2), PROJECTION_FLIP),
    ("sgdp_nesterov", "SGDP", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4), None),
]
CASES += [
    Case(name, getattr(fastoptim, cls), kwargs, {"official": official_adamp(cls, **kwargs)}, reason)
    for name, cls, kwargs, reason in ADAMP_CASES
]

PRODIGY_CASES = [
    ("prodigy", dict(lr=1.0)),
    (
        "prodigy_coupled_bias_correction",
        dict(lr=1.0, weight_decay=0.1, decouple=False, use_bias_correction=True),
    ),
    (
        "prodigy_decoupled_safeguard_slice",
        dict(lr=1.0, weight_decay=0.05, safeguard_warmup=True, slice_p=3, d0=1e-5),
    ),
]
D_ESTIMATE = (
    "d grows by orders of magnitude in the first steps from sums over every parameter, so bf16 "
    "rounding of the states changes the trajectory by O(1) with or without Kahan; in fp16 the "
    "d-scaled states underflow at d = 1e-6 (states keep the parameter dtype, as officially)"
)
CASES += [
    Case(name, fastoptim.Prodigy, kwargs, {"official": official_prodigy(**kwargs)}, D_ESTIMATE, False)
    for name, kwargs in PRODIGY_CASES
]

DADAPT_CASES = [
    ("dadapt_adam", "DAdaptAdam", dict(lr=1.0)),
    (
        "dadapt_adam_coupled_bias_correction",
        "DAdaptAdam",
        dict(lr=1.0, weight_decay=0.1, use_bias_correction=True),
    ),
    (
        "dadapt_adam_decouple_growth",
        "DAdaptAdam",
        dict(lr=1.0, weight_decay=0.05, decouple=True, growth_rate=2.0, d0=1e-5),
    ),
    ("dadapt_adagrad", "DAdaptAdaGrad", dict(lr=1.0, d0=1e-3)),
    ("dadapt_adagrad_momentum_wd", "DAdaptAdaGrad", dict(lr=1.0, momentum=0.9, weight_decay=0.01, d0=1e-3)),
    ("dadapt_sgd", "DAdaptSGD", dict(lr=1.0, d0=1e-3)),
    (
        "dadapt_sgd_momentum_wd_growth",
        "DAdaptSGD",
        dict(lr=1.0, momentum=0.9, weight_decay=0.01, growth_rate=1.5, d0=1e-3),
    ),
    ("dadapt_lion", "DAdaptLion", dict(lr=1.0)),
    ("dadapt_lion_wd_betas", "DAdaptLion", dict(lr=1.0, betas=(0.95, 0.98), weight_decay=0.1, d0=1e-4)),
    ("dadapt_adan", "DAdaptAdan", dict(lr=1.0)),
    (
        "dadapt_adan_no_prox_growth",
        "DAdaptAdan",
        dict(lr=1.0, weight_decay=0.05, no_prox=True, growth_rate=2.0, d0=1e-5, betas=(0.9, 0.9, 0.99)),
    ),
]
CASES += [
    Case(
        name,
        getattr(fastoptim, cls),
        kwargs,
        {"official": official_dadaptation(cls, **kwargs)},
        D_ESTIMATE,
        False,
    )
    for name, cls, kwargs in DADAPT_CASES
]

CASES_BY_NAME = {case.name: case for case in CASES}

#: Every concrete backend a case runs on ("auto" only chooses among these).
BACKENDS: tuple[str, ...] = tuple(backend for backend in fastoptim.runners.BACKENDS if backend != "auto")
#: Backends that compile each configuration before its first step: on 2 CPU cores, seconds per
#: optimizer class and dtype, which every case on every dtype would turn into many minutes per file.
COMPILING_BACKENDS = ("compiled",)
#: The first case of each optimizer class: every rule, without every configuration of it.
REPRESENTATIVE_CASES = [
    case for i, case in enumerate(CASES) if all(other.optimizer is not case.optimizer for other in CASES[:i])
]
#: The dtypes a compiling backend runs the representative cases in. The compiled backend's bf16
#: and fp16 steps are compared with the loop's in tests/test_compiled.py and test_compiled_cuda.py.
COMPILING_DTYPES = (torch.float32,)


def backend_variants(cases: list[Case], dtype: torch.dtype = torch.float32) -> list[tuple[Case, str]]:
    """``(case, backend)`` for the backends of :data:`BACKENDS` the harness runs ``cases`` on in
    ``dtype``: every case on the eager backends; a compiling backend on the cases among
    :data:`REPRESENTATIVE_CASES` in :data:`COMPILING_DTYPES` only. For tests that step each variant."""
    representative = {case.name for case in REPRESENTATIVE_CASES}
    return [
        (case, backend)
        for case in cases
        for backend in BACKENDS
        if backend not in COMPILING_BACKENDS or (case.name in representative and dtype in COMPILING_DTYPES)
    ]


LOW_PRECISION_CASES = [case for case in CASES if case.low_precision_reason is None]
REFERENCE_RUNS = [(case, reference) for case in CASES for reference in sorted(case.references)]
