"""The convergence section: train the character model once per optimizer, on identical terms.

Every optimizer starts from the same initial weights (the model is built right after seeding),
sees the same batches in the same order and follows the same schedule (linear warm-up over the
first 5% of steps, then cosine decay to a tenth of the peak; for the learning-rate-free
optimizers the schedule multiplies their ``lr=1.0``). Losses are measured on fixed evaluation
sets drawn once from each split, so the final training and validation losses are comparable
across optimizers rather than the noise of one last batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fastoptim.bench.data import VOCAB_SIZE, Corpus, batch, random_offsets
from fastoptim.bench.model import CharTransformer, next_byte_loss
from fastoptim.bench.roofline import state_size, synchronize
from fastoptim.bench.settings import OptimizerSpec, Preset


@dataclass
class TrainResult:
    """One optimizer's training run; losses are in nats per byte, NaN after a divergence."""

    name: str
    hyperparameters: dict[str, Any]
    backend: str
    train_loss: float
    validation_loss: float
    #: Measured from ``optimizer.state`` after training: all state tensors' bytes / parameters.
    state_bytes_per_param: float
    #: Parameter-sized state tensors per parameter (Kahan buffer excluded).
    state_tensors: int
    #: Wall time of a training step (forward, backward, optimizer step; evaluations excluded),
    #: and of the optimizer step alone.
    seconds_per_step: float
    optimizer_seconds_per_step: float
    diverged: bool
    #: Minibatch loss at every step.
    train_curve: list[float] = field(default_factory=list)
    #: Steps at which the fixed validation set was evaluated, and its loss there.
    eval_steps: list[int] = field(default_factory=list)
    validation_curve: list[float] = field(default_factory=list)


@dataclass
class Batches:
    """The training batches (one offset row per step) and the fixed evaluation sets."""

    corpus: Corpus
    context: int
    train_offsets: torch.Tensor
    eval_train: torch.Tensor
    eval_validation: torch.Tensor

    @classmethod
    def draw(cls, corpus: Corpus, preset: Preset, steps: int, seed: int) -> Batches:
        """Draws every offset once with seeded generators, so all optimizers share them."""
        context, size = preset.model.context, preset.batch_size
        generator = torch.Generator().manual_seed(seed)
        offsets = random_offsets(corpus.train, steps * size, context, generator).view(steps, size)
        evaluation = torch.Generator().manual_seed(seed + 1)
        count = preset.eval_batches * size
        return cls(
            corpus,
            context,
            offsets,
            random_offsets(corpus.train, count, context, evaluation),
            random_offsets(corpus.validation, count, context, evaluation),
        )


def schedule(step: int, steps: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based): 5% linear warm-up, cosine decay to 0.1."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: torch.Tensor, offsets: torch.Tensor, batches: Batches) -> float:
    """Mean loss of ``model`` over the windows at ``offsets``, in chunks of one training batch."""
    model.eval()
    size = batches.train_offsets.shape[1]
    device = next(model.parameters()).device
    losses = []
    for chunk in offsets.split(size):
        inputs, targets = batch(tokens, chunk, batches.context)
        losses.append(next_byte_loss(model, inputs.to(device), targets.to(device)))
    model.train()
    return torch.stack(losses).mean().item()


def train(
    spec: OptimizerSpec,
    batches: Batches,
    preset: Preset,
    *,
    dtype: torch.dtype,
    device: torch.device,
    backend: str,
    seed: int,
    progress: Any,
) -> TrainResult:
    """Trains a fresh model with ``spec``; ``progress`` is a bar advanced once per step."""
    torch.manual_seed(seed)
    model = CharTransformer(VOCAB_SIZE, preset.model).to(device=device, dtype=dtype)
    optimizer = spec.build(model, backend)
    steps = batches.train_offsets.shape[0]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, steps))
    corpus = batches.corpus
    losses: list[torch.Tensor] = []
    eval_steps: list[int] = []
    validation: list[float] = []
    optimizer_seconds = eval_seconds = 0.0
    diverged = False
    start = time.perf_counter()
    for step, offsets in enumerate(batches.train_offsets, start=1):
        inputs, targets = batch(corpus.train, offsets, batches.context)
        loss = next_byte_loss(model, inputs.to(device), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        synchronize(device)
        step_start = time.perf_counter()
        optimizer.step()
        synchronize(device)
        optimizer_seconds += time.perf_counter() - step_start
        scheduler.step()
        losses.append(loss.detach())
        progress.update(1)
        if step % preset.eval_every == 0 or step == steps:
            eval_start = time.perf_counter()
            eval_steps.append(step)
            validation.append(evaluate(model, corpus.validation, batches.eval_validation, batches))
            eval_seconds += time.perf_counter() - eval_start
            progress.set_postfix_str(f"{spec.name} validation loss {validation[-1]:.3f}", refresh=False)
            if not math.isfinite(validation[-1]) or not math.isfinite(losses[-1].item()):
                diverged = True
                progress.update(steps - step)
                break
    seconds = time.perf_counter() - start - eval_seconds
    state_bytes, state_tensors = state_size(optimizer)
    nan = float("nan")
    return TrainResult(
        name=spec.name,
        hyperparameters=spec.kwargs,
        backend=backend,
        train_loss=nan if diverged else evaluate(model, corpus.train, batches.eval_train, batches),
        validation_loss=nan if diverged else validation[-1],
        state_bytes_per_param=state_bytes,
        state_tensors=state_tensors,
        seconds_per_step=seconds / len(losses),
        optimizer_seconds_per_step=optimizer_seconds / len(losses),
        diverged=diverged,
        train_curve=torch.stack(losses).float().tolist(),
        eval_steps=eval_steps,
        validation_curve=validation,
    )
