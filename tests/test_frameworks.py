"""fastoptim inside Hugging Face's Trainer, Lightning and accelerate, with the real packages.

Each runs the example under ``examples/`` with a fastoptim optimizer and with torch.optim's: the
loss falls, and where the maths is torch's (AdamW with torch's betas and eps) the two runs agree,
so fastoptim dropped in changes nothing else. Skipped, saying so, where the ``frameworks`` extra is
not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

import fastoptim

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str, package: str) -> ModuleType:
    pytest.importorskip(package, reason=f"{package} is not installed (pip install -e '.[frameworks]')")
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_adamw(params):
    return torch.optim.AdamW(params, lr=3e-3, foreach=False)


def _fastoptim_adamw(params):
    return fastoptim.AdamW(params, lr=3e-3, betas=(0.9, 0.999), eps=1e-8)


def _falls(losses: list[float]) -> bool:
    return sum(losses[-3:]) < sum(losses[:3])


def test_hugging_face_trainer() -> None:
    example = _example("hf_trainer", "transformers")
    ours = example.train(lambda model: _fastoptim_adamw(model.parameters()))
    theirs = example.train(lambda model: _torch_adamw(model.parameters()))
    built = example.train(
        optimizer_cls_and_kwargs=(fastoptim.AdamW, {"lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8})
    )
    assert _falls(ours)
    # a transformer over 20 steps: float32 rounding grows to about 1e-5 of the loss
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor(built), torch.tensor(theirs), rtol=1e-4, atol=1e-4)


def test_lightning_with_scheduler_closure_and_clipping() -> None:
    example = _example("lightning_module", "lightning")
    ours, theirs = example.train(_fastoptim_adamw), example.train(_torch_adamw)
    assert _falls(ours)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-5, atol=1e-6)
    assert _falls(example.train(lambda params: fastoptim.Prodigy(params, lr=1.0)))


def test_accelerate() -> None:
    example = _example("accelerate_loop", "accelerate")
    ours, theirs = example.train(_fastoptim_adamw), example.train(_torch_adamw)
    assert _falls(ours)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-5, atol=1e-6)
