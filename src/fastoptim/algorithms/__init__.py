"""The optimizers, one module each; every one is a :class:`fastoptim.optimizer.Optimizer`."""

from fastoptim.algorithms.adam import Adam, AdamW
from fastoptim.algorithms.adamp import SGDP, AdamP
from fastoptim.algorithms.adan import Adan
from fastoptim.algorithms.adopt import ADOPT
from fastoptim.algorithms.dadapt_adagrad import DAdaptAdaGrad
from fastoptim.algorithms.dadapt_adam import DAdaptAdam
from fastoptim.algorithms.dadapt_adan import DAdaptAdan
from fastoptim.algorithms.dadapt_lion import DAdaptLion
from fastoptim.algorithms.dadapt_sgd import DAdaptSGD
from fastoptim.algorithms.lion import Lion
from fastoptim.algorithms.prodigy import Prodigy
from fastoptim.algorithms.sgd import SGD

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
    "Prodigy",
]
