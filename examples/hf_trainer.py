"""fastoptim in Hugging Face's Trainer: a tiny GPT-2 trained on random tokens, on the CPU.

Run: ``pip install -e ".[frameworks]" && python examples/hf_trainer.py``
"""

from __future__ import annotations

import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import fastoptim


class Tokens(torch.utils.data.Dataset):
    """Random sequences over a small vocabulary (a stand-in for a tokenized corpus)."""

    def __init__(self, count: int = 64, length: int = 16, vocab: int = 64) -> None:
        generator = torch.Generator().manual_seed(0)
        self.data = torch.randint(vocab, (count, length), generator=generator)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[index], "labels": self.data[index]}


def train(optimizer_factory=None, optimizer_cls_and_kwargs=None, steps: int = 20) -> list[float]:
    """Trains the tiny model; returns the logged training losses."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=8,
            logging_steps=1,
            report_to="none",
            use_cpu=True,
            save_strategy="no",
            seed=0,
        )
        optimizers = (optimizer_factory(model), None) if optimizer_factory is not None else (None, None)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=Tokens(),
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
        )
        trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


if __name__ == "__main__":
    # the optimizer built by hand (the Trainer adds its linear schedule) ...
    losses = train(lambda model: fastoptim.AdamW(model.parameters(), lr=3e-3))
    # ... or the class and its arguments, which the Trainer builds on its parameter groups
    losses_cls = train(optimizer_cls_and_kwargs=(fastoptim.AdamW, {"lr": 3e-3}))
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print(f"built by the Trainer: {losses_cls[0]:.3f} -> {losses_cls[-1]:.3f}")
