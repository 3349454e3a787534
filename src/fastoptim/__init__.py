"""fastoptim: modern PyTorch optimizers, exact to their official code, at memory-bandwidth speed."""

from fastoptim.algorithms import (
    ADOPT,
    SGD,
    SGDP,
    Adam,
    AdamP,
    AdamW,
    Adan,
    DAdaptAdaGrad,
    DAdaptAdam,
    DAdaptAdan,
    DAdaptLion,
    DAdaptSGD,
    Lion,
    Prodigy,
)
from fastoptim.factory import create_optimizer, param_groups_weight_decay
from fastoptim.gradient_release import prepare_for_gradient_release, remove_gradient_release
from fastoptim.optimizer import Optimizer

__version__ = "0.1.0"

__all__ = [
    "ADOPT",
    "SGD",
    "SGDP",
    "Adam",
    "AdamP",
    "AdamW",
    "Adan",
    "DAdaptAdaGrad",
    "DAdaptAdam",
    "DAdaptAdan",
    "DAdaptLion",
    "DAdaptSGD",
    "Lion",
    "Optimizer",
    "Prodigy",
    "__version__",
    "create_optimizer",
    "param_groups_weight_decay",
    "prepare_for_gradient_release",
    "remove_gradient_release",
]
