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
    python benchmarks/patch_ab.py --patch low_precision_codegen --dtype bfloat16 --algorithms dadapt_lion

Parts of the CPU plugin (``fastoptim.runners.compiled.cpu_codegen``), each switched off for the
"without" side: ``direct`` (chunks compiled without dynamo), ``fusion`` (a reduction and its
update in one loop), ``round_trips`` and ``early_write_back`` (graph passes),
``update_scratch`` (AdamP's cache-resident update buffer), ``low_precision_codegen`` (bf16/fp16
vector width), ``shared_region``, ``loop_invariants``, ``streaming_stores`` (rewrites of the
generated C++). ``plugin`` switches the whole plugin off: the core runner alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from unittest import mock

import torch

import fastoptim
from fastoptim.bench.speed import make_params
from fastoptim.runners.compiled import chunks, plugins
from fastoptim.runners.compiled.cpu_codegen import (
    direct,
    fusion,
    loop_invariants,
    shared_region,
    streaming_stores,
)


def _flag_off(module: object) -> contextlib.AbstractContextManager[None]:
    return mock.patch.object(module, "_CAN_PATCH", False)


def _in_fusion(name: str, value: object) -> Callable[[], contextlib.AbstractContextManager[None]]:
    return lambda: mock.patch.object(fusion, name, value)


@contextlib.contextmanager
def _plugin_replaced(**changes: object) -> Iterator[None]:
    saved = list(plugins._PLUGINS)
    plugins._PLUGINS[:] = [dataclasses.replace(p, **changes) for p in saved] if changes else []
    try:
        yield
    finally:
        plugins._PLUGINS[:] = saved


#: Part -> a context manager that switches it off.
PATCHES: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "plugin": _plugin_replaced,
    "direct": lambda: _plugin_replaced(direct_step=None),
    "update_scratch": lambda: _plugin_replaced(rows_alone=None),
    "fusion": _in_fusion("reduction_update_fusion", contextlib.nullcontext),
    "low_precision_codegen": _in_fusion("low_precision_kernels", contextlib.nullcontext),
    "round_trips": _in_fusion("drop_round_trips", lambda graph: None),
    "early_write_back": _in_fusion("write_back_early", lambda graph: None),
    "shared_region": lambda: _flag_off(shared_region),
    "loop_invariants": lambda: _flag_off(loop_invariants),
    "streaming_stores": lambda: _flag_off(streaming_stores),
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


def _compiled_variant(optimizer: torch.optim.Optimizer, patched: bool, patch: str) -> tuple:
    """What ``optimizer``'s next steps compile and keep, with the part switched on or off."""
    direct.clear()
    chunks.forget_kept_inputs(optimizer)
    switch = contextlib.nullcontext() if patched else PATCHES[patch]()
    with switch, torch._inductor.config.patch(fx_graph_cache=False, autotune_local_cache=False):
        for _ in range(3):  # ONE_PASS optimizers compile their steady-state graph on step 2
            optimizer.step()
        return list(plugins._PLUGINS), dict(direct._COMPILED), chunks._KEPT.get(optimizer)


def _use(optimizer: torch.optim.Optimizer, variant: tuple) -> None:
    registered, compiled, kept = variant
    plugins._PLUGINS[:] = registered
    direct._COMPILED.clear()
    direct._COMPILED.update(compiled)
    chunks._KEPT[optimizer] = kept


def compare(algorithm: str, args: argparse.Namespace) -> tuple[float, float]:
    """Median step times (seconds) with and without the patch."""
    name, kwargs = ALGORITHMS[algorithm]
    params = make_params(args.params, args.tensors, getattr(torch, args.dtype), seed=0)
    optimizer = getattr(fastoptim, name)(params, backend="compiled", **kwargs)
    saved = list(plugins._PLUGINS)
    variants = [_compiled_variant(optimizer, patched, args.patch) for patched in (True, False)]
    flush = torch.empty(args.flush_mib * 2**20 // 4)
    times: list[list[float]] = [[], []]
    try:
        for round_index in range(args.rounds):
            for index in (round_index % 2, 1 - round_index % 2):
                _use(optimizer, variants[index])
                flush.add_(1.0)
                start = time.perf_counter()
                optimizer.step()
                times[index].append(time.perf_counter() - start)
    finally:
        plugins._PLUGINS[:] = saved
        direct.clear()
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", choices=list(PATCHES), required=True)
    parser.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=["dadapt_sgd"])
    parser.add_argument("--params", type=int, default=20_000_000)
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--flush-mib", type=int, default=1024, help="buffer written before each step")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, patch {args.patch}")
    size = f"{args.params / 1e6:.0f}M {args.dtype} parameters in {args.tensors} tensors"
    print(f"{size}, median of {args.rounds} steps each\n")
    print("| algorithm | with (ms) | without (ms) | with / without |")
    print("| --- | ---: | ---: | ---: |")
    for algorithm in args.algorithms:
        with_patch, without = compare(algorithm, args)
        print(f"| {algorithm} | {with_patch * 1e3:.2f} | {without * 1e3:.2f} | {with_patch / without:.3f} |")
        gc.collect()


if __name__ == "__main__":
    main()
