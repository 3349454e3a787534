"""AdamP's compiled step with the update's scratch buffer and without, on the same tensors.

``cpu_codegen.update_scratch`` steps each weight of ``MIN_ELEMENTS`` to ``MAX_ELEMENTS``
elements in a call of its own, storing its update in a buffer shared by all of them. Here two AdamP
optimizers step the same parameters (each with its own moments): one with the buffer, one of a
subclass without it (``STAGES_UPDATE = False``: every weight in 16-tensor calls, its second pass
reading the moments again). Their steps alternate, each after a buffer larger than the L3 cache
has been written, and the medians are compared.

Usage::

    python benchmarks/update_scratch_ab.py
    python benchmarks/update_scratch_ab.py --tensors 400 --rounds 30
    python benchmarks/update_scratch_ab.py --tensors 4 --max-elements 67108864   # larger weights
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastoptim
from fastoptim.bench.speed import make_params
from fastoptim.runners.compiled.cpu_codegen import update_scratch


class AdamPWithoutScratch(fastoptim.AdamP):
    """AdamP whose compiled step reads the moments again in its second pass."""

    STAGES_UPDATE = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=20_000_000)
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--min-elements", type=int, default=update_scratch.MIN_ELEMENTS)
    parser.add_argument("--max-elements", type=int, default=update_scratch.MAX_ELEMENTS)
    args = parser.parse_args()
    update_scratch.MIN_ELEMENTS, update_scratch.MAX_ELEMENTS = args.min_elements, args.max_elements

    params = make_params(args.params, args.tensors, torch.float32, seed=0)
    weight = params[0].numel()
    optimizers = {
        "with": fastoptim.AdamP(params, lr=1e-3, weight_decay=1e-2, backend="compiled"),
        "without": AdamPWithoutScratch(params, lr=1e-3, weight_decay=1e-2, backend="compiled"),
    }
    for optimizer in optimizers.values():
        for _ in range(3):
            optimizer.step()
    flush = torch.empty(64 * 2**20)  # 256 MB
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for round_index in range(args.rounds):
        order = list(optimizers) if round_index % 2 else list(optimizers)[::-1]
        for name in order:
            flush.fill_(round_index)
            start = time.perf_counter()
            optimizers[name].step()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    uses = args.min_elements <= weight <= args.max_elements
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.tensors} tensors, "
        f"weights of {weight} elements ({'with' if uses else 'without'} the buffer); "
        f"with {medians['with']:.2f} ms, without {medians['without']:.2f} ms, "
        f"ratio {medians['with'] / medians['without']:.3f}"
    )


if __name__ == "__main__":
    main()
