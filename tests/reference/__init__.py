"""Factories for the official and peer implementations the tests compare against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def optimi_optimizer(name: str, **kwargs: Any) -> Callable[[Any], torch.optim.Optimizer]:
    """torch-optimi's ``name`` on its eager per-tensor path (optimi's default on CPU)."""

    def build(params: Any) -> torch.optim.Optimizer:
        import optimi

        return getattr(optimi, name)(params, foreach=False, triton=False, **kwargs)

    return build


def lion_pytorch_lion(**kwargs: Any) -> Callable[[Any], torch.optim.Optimizer]:
    """lion-pytorch's Lion."""

    def build(params: Any) -> torch.optim.Optimizer:
        from lion_pytorch import Lion

        return Lion(params, **kwargs)

    return build


def official_adopt(**kwargs: Any) -> Callable[[Any], torch.optim.Optimizer]:
    """torch-adopt 0.1.0, the official ADOPT, on its single-tensor path."""

    def build(params: Any) -> torch.optim.Optimizer:
        from adopt import ADOPT

        return ADOPT(params, foreach=False, **kwargs)

    return build


def pytorch_optimizer_adan(**kwargs: Any) -> Callable[[Any], torch.optim.Optimizer]:
    """pytorch-optimizer's Adan port (within 6e-8 of the official code on the golden runs)."""

    def build(params: Any) -> torch.optim.Optimizer:
        from pytorch_optimizer import Adan

        return Adan(params, foreach=False, **kwargs)

    return build


def official_adamp(name: str, **kwargs: Any) -> Callable[[Any], torch.optim.Optimizer]:
    """adamp 0.3.0's ``AdamP`` or ``SGDP`` (the official code)."""

    def build(params: Any) -> torch.optim.Optimizer:
        import adamp

        return getattr(adamp, name)(params, **kwargs)

    return build


def official_prodigy(**kwargs: Any) -> Callable[[Any], torch.optim.Optimizer]:
    """prodigyopt 1.1.2, the official Prodigy."""

    def build(params: Any) -> torch.optim.Optimizer:
        from prodigyopt import Prodigy

        return Prodigy(params, **kwargs)

    return build


def official_dadaptation(name: str, **kwargs: Any) -> Callable[[Any], torch.optim.Optimizer]:
    """dadaptation 3.2's optimizer ``name`` (the official code)."""

    def build(params: Any) -> torch.optim.Optimizer:
        import dadaptation

        return getattr(dadaptation, name)(params, **kwargs)

    return build
