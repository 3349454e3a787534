"""Times ``optimizer.step()`` for fastoptim's backends and its peers, against the roofline.

An optimizer step is memory-bound: it must read and write every parameter, gradient and state
element at least once. The roofline time is those bytes divided by the memory bandwidth measured
here on the same buffers size (the best of measurements before and after each build order, as
the VM's bandwidth drifts); each step time is printed as a multiple of it (1.0x = at the limit).

Every configuration steps the same ~20M-parameter, ~100-tensor model with fixed random
gradients, each with its own optimizer state. Configurations are timed interleaved (one step
each, round after round, the order rotated every round) after warm-up; the median per
configuration is averaged over several build orders, because where the states land in memory
moves step times by up to 2x on this kind of machine.

Usage::

    python benchmarks/step_speed.py                       # fp32 and bf16, all algorithms
    python benchmarks/step_speed.py --dtypes fp32 --algorithms adam --rounds 40
    python benchmarks/step_speed.py --dtypes fp32 --implementations "fastoptim compiled" "torch fused"
"""

from __future__ import annotations

import argparse
import gc
import importlib
import platform
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastoptim.bench.roofline import ELEMENTS_PER_PARAM, measure_bandwidth, roofline_bytes_per_param
from fastoptim.bench.speed import make_params, time_interleaved

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Config:
    """One optimizer implementation to time."""

    algorithm: str
    name: str
    build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def _peer(module: str, name: str, **kwargs):
    """A peer implementation ``module.name(params, **kwargs)``, imported when built."""

    def build(params):
        return getattr(importlib.import_module(module), name)(params, **kwargs)

    return build


ADAM = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-6)
SGD = dict(lr=1e-2, momentum=0.9)

#: algorithm -> (fastoptim class, its kwargs, peers); the bytes each step must move are in
#: fastoptim.bench.roofline. Peers: name -> (module, class, kwargs); "official" marks the authors'
#: package.
ALGORITHMS = {
    "adam": (
        "Adam",
        ADAM,
        {
            "torch foreach": ("torch.optim", "Adam", {**ADAM, "foreach": True}),
            "torch fused": ("torch.optim", "Adam", {**ADAM, "fused": True}),
            "torch loop": ("torch.optim", "Adam", {**ADAM, "foreach": False}),
            "optimi loop": ("optimi", "Adam", {**ADAM, "foreach": False, "triton": False}),
            "optimi foreach": ("optimi", "Adam", {**ADAM, "foreach": True, "triton": False}),
        },
    ),
    "adamw": (
        "AdamW",
        {**ADAM, "weight_decay": 1e-2},
        {
            "torch foreach": ("torch.optim", "AdamW", {**ADAM, "weight_decay": 1e-2, "foreach": True}),
            "torch fused": ("torch.optim", "AdamW", {**ADAM, "weight_decay": 1e-2, "fused": True}),
            "torch loop": ("torch.optim", "AdamW", {**ADAM, "weight_decay": 1e-2, "foreach": False}),
            "optimi loop": ("optimi", "AdamW", {**ADAM, "foreach": False, "triton": False}),
            "optimi foreach": ("optimi", "AdamW", {**ADAM, "foreach": True, "triton": False}),
        },
    ),
    "sgd": (
        "SGD",
        SGD,
        {
            "torch foreach": ("torch.optim", "SGD", {**SGD, "foreach": True}),
            "torch fused": ("torch.optim", "SGD", {**SGD, "fused": True}),
            "torch loop": ("torch.optim", "SGD", {**SGD, "foreach": False}),
            "optimi loop": ("optimi", "SGD", {**SGD, "foreach": False, "triton": False}),
            "optimi foreach": ("optimi", "SGD", {**SGD, "foreach": True, "triton": False}),
        },
    ),
    "lion": (
        "Lion",
        dict(lr=1e-4, weight_decay=1e-2),
        {
            "optimi loop": ("optimi", "Lion", dict(lr=1e-4, weight_decay=1e-2, foreach=False, triton=False)),
            "optimi foreach": (
                "optimi",
                "Lion",
                dict(lr=1e-4, weight_decay=1e-2, foreach=True, triton=False),
            ),
            "lion-pytorch": ("lion_pytorch", "Lion", dict(lr=1e-4, weight_decay=1e-2)),
        },
    ),
    "adopt": (
        "ADOPT",
        dict(lr=1e-3),
        {
            "official loop": ("adopt", "ADOPT", dict(lr=1e-3, foreach=False)),
            "official foreach": ("adopt", "ADOPT", dict(lr=1e-3, foreach=True)),
            "pytorch-optimizer": ("pytorch_optimizer", "ADOPT", dict(lr=1e-3)),
        },
    ),
    "adan": (
        "Adan",
        dict(lr=1e-3, weight_decay=0.02),
        {
            "pytorch-optimizer loop": (
                "pytorch_optimizer",
                "Adan",
                dict(lr=1e-3, weight_decay=0.02, foreach=False),
            ),
            "pytorch-optimizer foreach": (
                "pytorch_optimizer",
                "Adan",
                dict(lr=1e-3, weight_decay=0.02, foreach=True),
            ),
        },
    ),
    "adamp": (
        "AdamP",
        dict(lr=1e-3, weight_decay=1e-2),
        {
            "official": ("adamp", "AdamP", dict(lr=1e-3, weight_decay=1e-2)),
            "pytorch-optimizer": ("pytorch_optimizer", "AdamP", dict(lr=1e-3, weight_decay=1e-2)),
        },
    ),
    # growth_rate=1 keeps d finite on the benchmark's fixed gradients; the operations are the same
    "prodigy": (
        "Prodigy",
        dict(lr=1.0, weight_decay=1e-2, growth_rate=1.0),
        {
            "official": ("prodigyopt", "Prodigy", dict(lr=1.0, weight_decay=1e-2, growth_rate=1.0)),
            "pytorch-optimizer": (
                "pytorch_optimizer",
                "Prodigy",
                dict(lr=1.0, weight_decay=1e-2, growth_rate=1.0),
            ),
        },
    ),
    "dadapt_adam": (
        "DAdaptAdam",
        dict(growth_rate=1.0),
        {"official": ("dadaptation", "DAdaptAdam", dict(growth_rate=1.0))},
    ),
    "dadapt_sgd": (
        "DAdaptSGD",
        dict(growth_rate=1.0),
        {"official": ("dadaptation", "DAdaptSGD", dict(growth_rate=1.0))},
    ),
    "dadapt_lion": (
        "DAdaptLion",
        dict(lr=1e-3),
        {"official": ("dadaptation", "DAdaptLion", dict(lr=1e-3))},
    ),
    "dadapt_adan": (
        "DAdaptAdan",
        dict(growth_rate=1.0),
        {"official": ("dadaptation", "DAdaptAdan", dict(growth_rate=1.0))},
    ),
    "dadapt_adagrad": (
        "DAdaptAdaGrad",
        dict(growth_rate=1.0),
        {"official": ("dadaptation", "DAdaptAdaGrad", dict(growth_rate=1.0))},
    ),
    "sgdp": (
        "SGDP",
        dict(lr=1e-2, momentum=0.9, weight_decay=1e-4),
        {
            "official": ("adamp", "SGDP", dict(lr=1e-2, momentum=0.9, weight_decay=1e-4)),
            "pytorch-optimizer": (
                "pytorch_optimizer",
                "SGDP",
                dict(lr=1e-2, momentum=0.9, weight_decay=1e-4),
            ),
        },
    ),
}


def configs() -> list[Config]:
    """fastoptim's backends and the peers, per algorithm, with matching hyperparameters."""
    out = []
    for algorithm, (class_name, kwargs, peers) in ALGORITHMS.items():
        for backend in ("loop", "foreach", "compiled"):
            build = _peer("fastoptim", class_name, **kwargs, backend=backend)
            out.append(Config(algorithm, f"fastoptim {backend}", build))
        for name, (module, peer_class, peer_kwargs) in peers.items():
            out.append(Config(algorithm, name, _peer(module, peer_class, **peer_kwargs)))
    return out


def time_configs(selected: list[Config], params: list[torch.Tensor], args: argparse.Namespace) -> dict:
    """Builds and warms up each configuration in order, then times them interleaved."""
    runs = []
    for config in selected:
        try:
            optimizer = config.build(params)
            for _ in range(args.warmup):
                optimizer.step()
        except (RuntimeError, ValueError, TypeError) as error:
            print(f"  skipped {config.algorithm} {config.name}: {str(error).splitlines()[0]}")
            continue
        runs.append((config, optimizer))
    medians = time_interleaved([optimizer.step for _config, optimizer in runs], args.rounds)
    return {(c.algorithm, c.name): median for (c, _o), median in zip(runs, medians, strict=True)}


def run(args: argparse.Namespace) -> None:
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        selected = [
            c
            for c in configs()
            if c.algorithm in args.algorithms and (not args.implementations or c.name in args.implementations)
        ]
        # One set of parameters and gradients for every configuration (steps with lr <= 1e-2 on
        # gradients of 1e-2 keep them finite), so that only optimizer states differ in placement.
        params = make_params(args.params, args.tensors, dtype, seed=0)
        n_params = sum(p.numel() for p in params)
        # The VM's bandwidth drifts (29.7 to 47 GB/s on one day) while step times move a few percent:
        # measured before and after each build order, and the best is the roofline's.
        bandwidths = [measure_bandwidth(n_params * 4 * 4)]
        # Where tensors land in memory moves step times by up to 2x on this kind of machine; build
        # the states in several orders (forward, reverse, two seeded shuffles) and average.
        orders = [selected, selected[::-1]]
        for seed in range(args.orders - 2):
            shuffled = selected[:]
            random.Random(seed).shuffle(shuffled)
            orders.append(shuffled)
        results = []
        for order in orders[: args.orders]:
            results.append(time_configs(order, params, args))
            gc.collect()
            bandwidths.append(measure_bandwidth(n_params * 4 * 4))
        bandwidth = max(bandwidths)
        print(
            f"\n### {dtype_name}: {n_params / 1e6:.1f}M parameters in {len(params)} tensors, "
            f"bandwidth {bandwidth / 1e9:.1f} GB/s, mean over {len(results)} build orders of the median "
            f"of {args.rounds} "
            "interleaved steps\n"
        )
        spread = ", ".join(f"{b / 1e9:.1f}" for b in bandwidths)
        print(f"Bandwidth measured before and after each build order: {spread} GB/s; the best is used.\n")
        print("| algorithm | implementation | bytes/param | ms/step | x roofline | x fastest eager peer |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for algorithm in args.algorithms:
            rows = [
                (c, statistics.mean(r[key] for r in results))
                for c in selected
                if c.algorithm == algorithm and (key := (c.algorithm, c.name)) in results[0]
            ]
            peers = [t for c, t in rows if not c.name.startswith("fastoptim") and "fused" not in c.name]
            best_peer = min(peers) if peers else float("nan")
            for config, seconds in rows:
                kahan = dtype != torch.float32 and config.name.startswith(("fastoptim", "optimi"))
                elements = ELEMENTS_PER_PARAM[ALGORITHMS[algorithm][0]]
                per_param = roofline_bytes_per_param(elements, dtype, kahan)
                roofline = per_param * n_params / bandwidth
                print(
                    f"| {algorithm} | {config.name} | {per_param} | {seconds * 1e3:.2f} | "
                    f"{seconds / roofline:.2f} | {seconds / best_peer:.2f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=20_000_000)
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--orders", type=int, default=4, help="build orders to average (>= 2)")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=list(ALGORITHMS),
        choices=list(ALGORITHMS),
    )
    parser.add_argument(
        "--implementations",
        nargs="+",
        default=None,
        help='only these, e.g. "fastoptim compiled" "torch fused" (default: all)',
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
