"""What the bench runs: presets (sizes and step counts) and each optimizer's hyperparameters."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from fastoptim.bench.model import ModelSize
from fastoptim.factory import OPTIMIZERS, _normalise, create_optimizer
from fastoptim.optimizer import Optimizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Preset:
    """Sizes of one bench run; command-line options override ``steps`` and ``speed_params``."""

    #: Bytes of text read for training and validation together.
    corpus_bytes: int
    model: ModelSize
    batch_size: int
    steps: int
    #: Validation loss is measured every this many steps (and after the last).
    eval_every: int
    #: Batches (of ``batch_size`` windows) in each fixed evaluation set.
    eval_batches: int
    #: Parameters and tensors of the step-speed section's synthetic model; accelerators get more
    #: parameters, so that their steps are not dominated by kernel launches.
    speed_params: int
    speed_params_accelerator: int
    speed_tensors: int
    #: Interleaved timed steps per configuration, after ``speed_warmup`` untimed ones; fewer
    #: where one optimizer's rounds would take over ``speed_seconds`` (a loaded machine).
    speed_rounds: int
    speed_warmup: int
    speed_seconds: float


PRESETS = {
    # every optimizer in about 90 s on 2 CPU cores: ~75 s of training, ~15 s of step speed
    "default": Preset(
        corpus_bytes=1_000_000,
        model=ModelSize(width=64, depth=2, heads=4, context=64),
        batch_size=24,
        steps=200,
        eval_every=25,
        eval_batches=4,
        speed_params=4_000_000,
        speed_params_accelerator=64_000_000,
        speed_tensors=40,
        speed_rounds=15,
        speed_warmup=3,
        speed_seconds=1.5,
    ),
    # a few seconds: for tests and for trying options
    "tiny": Preset(
        corpus_bytes=64_000,
        model=ModelSize(width=16, depth=1, heads=2, context=16),
        batch_size=4,
        steps=6,
        eval_every=3,
        eval_batches=1,
        speed_params=20_000,
        speed_params_accelerator=20_000,
        speed_tensors=4,
        speed_rounds=3,
        speed_warmup=1,
        speed_seconds=0.5,
    ),
}


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer as the bench builds it: a fastoptim class and its hyperparameters."""

    name: str
    cls: type[Optimizer]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, model_or_params: Any, backend: str, fixed_gradients: bool = False) -> Optimizer:
        """The optimizer on ``model_or_params`` (weight decay skips biases and norms of a module).

        ``fixed_gradients`` (the speed section, which steps the same gradients again and again)
        caps D-Adaptation's and Prodigy's growth of ``d`` at 1x per step, keeping values finite;
        the operations per step are the same.
        """
        kwargs = dict(self.kwargs)
        if fixed_gradients and "growth_rate" in inspect.signature(self.cls).parameters:
            kwargs["growth_rate"] = 1.0
        return create_optimizer(self.cls, model_or_params, backend=backend, **kwargs)


#: Hyperparameters per optimizer (keys as :data:`fastoptim.factory.OPTIMIZERS` spells them): the
#: learning rate is the best of a sweep (1e-3, 3e-3, 1e-2 and neighbours; SGD 0.1 to 1) on the
#: default preset. The learning-rate-free ones use ``lr=1.0`` as their authors advise, except
#: DAdaptLion, which diverges here at 1.0 (so does the official dadaptation 3.2: ``d`` grows to
#: 2e4) and trains well at 0.3. The table's order is the bench's order.
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "adam": {"lr": 3e-3},
    "adamw": {"lr": 3e-3, "weight_decay": 0.1},
    "adopt": {"lr": 3e-3},
    "adan": {"lr": 5e-3, "weight_decay": 0.02},
    "adamp": {"lr": 3e-3, "weight_decay": 0.01},
    "lion": {"lr": 3e-3, "weight_decay": 0.3},
    "sgd": {"lr": 0.1, "momentum": 0.9},
    "sgdp": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    "prodigy": {"lr": 1.0},
    "dadaptadam": {"lr": 1.0},
    "dadaptadan": {"lr": 1.0},
    "dadaptlion": {"lr": 0.3},
    "dadaptsgd": {"lr": 1.0, "momentum": 0.9},
    "dadaptadagrad": {"lr": 1.0},
}


def optimizer_specs(names: list[str] | None) -> list[OptimizerSpec]:
    """Specs for ``names`` (any spelling ``create_optimizer`` accepts), or for every optimizer.

    An optimizer that the library knows but :data:`HYPERPARAMETERS` does not runs with its
    constructor's defaults (and ``lr=1e-3`` where ``lr`` has no default).

    Raises:
        ValueError: An unknown name.
    """
    if names is None:
        tuned = [k for k in HYPERPARAMETERS if k in OPTIMIZERS]
        keys = tuned + [k for k in OPTIMIZERS if k not in HYPERPARAMETERS]
    else:
        keys = []
        for name in names:
            key = _normalise(name)
            if key not in OPTIMIZERS:
                known = ", ".join(cls.__name__ for cls in OPTIMIZERS.values())
                raise ValueError(f"unknown optimizer {name!r}; known: {known}")
            if key not in keys:
                keys.append(key)
    specs = []
    for key in keys:
        cls = OPTIMIZERS[key]
        kwargs = HYPERPARAMETERS.get(key)
        if kwargs is None:
            lr = inspect.signature(cls).parameters.get("lr")
            kwargs = {"lr": 1e-3} if lr is None or lr.default is inspect.Parameter.empty else {}
        specs.append(OptimizerSpec(cls.__name__, cls, dict(kwargs)))
    return specs
