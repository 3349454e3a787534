"""A compile-time patch of the compiled runner, with and without, on the same tensors.

Step times of two processes, or of two optimizers in one, differ by where their tensors landed
in memory by up to several percent on the development VM (whose L3 cache, 480 MiB, holds part
of a 20M-parameter model), more than most changes to the generated kernels gain. Here one
optimizer compiles its chunks twice, with the patch and without it (inductor's caches off, so
the second compilation is fresh), and its steps then alternate between the two sets of compiled
chunks: the same parameters, gradients and states for both. Before each timed step a buffer
larger than the L3 cache is written, so that both start from cold caches.

Usage::

    python benchmarks/patch_ab.py --patch streaming_stores --algorithms dadapt_sgd dadapt_adagrad
    python benchmarks/patch_ab.py --patch shared_region --algorithms dadapt_sgd --tensors 1000

Patches: ``shared_region`` (a kernel's parallel reductions in one region),
``loop_invariants`` (scalar work the same in every iteration done once before the loop),
``streaming_stores`` (stores to memory a kernel never reads around the caches).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

import fastoptim
from fastoptim.bench.speed import make_params
from fastoptim.runners.compiled.cpu_codegen import (
    direct,
    loop_invariants,
    shared_region,
    streaming_stores,
)

#: Module whose ``_CAN_PATCH`` switches each patch.
PATCHES = {
    "loop_invariants": loop_invariants,
    "shared_region": shared_region,
    "streaming_stores": streaming_stores,
}

#: Benchmark name -> (class name, keyword arguments).
ALGORITHMS = {
    "adamw": ("AdamW", {"lr": 1e-3, "weight_decay": 1e-2}),
    "lion": ("Lion", {"lr": 1e-4}),
    "sgd": ("SGD", {"lr": 1e-2, "momentum": 0.9}),
    "adan": ("Adan", {"lr": 1e-3}),
    "adamp": ("AdamP", {"lr": 1e-3}),
    "sgdp": ("SGDP", {"lr": 1e-2, "momentum": 0.9}),
    "prodigy": ("Prodigy", {}),
    "dadapt_sgd": ("DAdaptSGD", {}),
    "dadapt_adam": ("DAdaptAdam", {}),
    "dadapt_adagrad": ("DAdaptAdaGrad", {}),
    "dadapt_lion": ("DAdaptLion", {"lr": 1e-4}),
    "dadapt_adan": ("DAdaptAdan", {}),
}


def _compiled_chunks(optimizer: torch.optim.Optimizer, patched: bool, module: object) -> dict:
    """The chunks ``optimizer``'s next steps compile, with the patch switched on or off."""
    saved = module._CAN_PATCH
    module._CAN_PATCH = patched and saved
    direct.clear()
    try:
        with torch._inductor.config.patch(fx_graph_cache=False, autotune_local_cache=False):
            for _ in range(3):  # ONE_PASS optimizers compile their steady-state graph on step 2
                optimizer.step()
    finally:
        module._CAN_PATCH = saved
    return dict(direct._COMPILED)


def compare(algorithm: str, args: argparse.Namespace) -> tuple[float, float]:
    """Median step times (seconds) with and without the patch."""
    name, kwargs = ALGORITHMS[algorithm]
    params = make_params(args.params, args.tensors, torch.float32, seed=0)
    optimizer = getattr(fastoptim, name)(params, backend="compiled", **kwargs)
    module = PATCHES[args.patch]
    variants = [_compiled_chunks(optimizer, True, module), _compiled_chunks(optimizer, False, module)]
    flush = torch.empty(args.flush_mib * 2**20 // 4)
    times: list[list[float]] = [[], []]
    for round_index in range(args.rounds):
        for index in (round_index % 2, 1 - round_index % 2):
            direct._COMPILED.clear()
            direct._COMPILED.update(variants[index])
            flush.add_(1.0)
            start = time.perf_counter()
            optimizer.step()
            times[index].append(time.perf_counter() - start)
    direct.clear()
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", choices=list(PATCHES), required=True)
    parser.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=["dadapt_sgd"])
    parser.add_argument("--params", type=int, default=20_000_000)
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--flush-mib", type=int, default=1024, help="buffer written before each step")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, patch {args.patch}")
    size = f"{args.params / 1e6:.0f}M parameters in {args.tensors} tensors"
    print(f"{size}, median of {args.rounds} steps each\n")
    print("| algorithm | with (ms) | without (ms) | with / without |")
    print("| --- | ---: | ---: | ---: |")
    for algorithm in args.algorithms:
        with_patch, without = compare(algorithm, args)
        print(f"| {algorithm} | {with_patch * 1e3:.2f} | {without * 1e3:.2f} | {with_patch / without:.3f} |")
        gc.collect()


if __name__ == "__main__":
    main()
