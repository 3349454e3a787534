"""Cold compile time of ``backend="compiled"`` for every optimizer, each in a fresh process.

Each optimizer steps an 18-tensor MLP (a chunk of 16 tensors, then one of 2 filled up with
padding: the one graph a model of 16 or more tensors needs) three times in its own Python
process with an empty inductor cache. A trivial compiled function first pays torch.compile's
one-off start-up (imports, compiler checks), reported apart; the first step then pays the
optimizer's compilation. The third step's time is there for scale. Optimizers whose first step
differs from the later ones (SGD, ADOPT, Adan, and DAdaptSGD, DAdaptAdam, DAdaptAdaGrad and
DAdaptAdan, whose later steps run both phases in one pass) compile another graph on step 2,
which is counted in "steps 1-2".

Usage::

    python benchmarks/compile_time.py                    # every optimizer
    python benchmarks/compile_time.py --optimizers adamw prodigy
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

#: The optimizer names of ``fastoptim.create_optimizer`` and the keyword arguments used here.
OPTIMIZERS = {
    "adam": {"lr": 1e-3},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2},
    "sgd": {"lr": 1e-2, "momentum": 0.9},
    "lion": {"lr": 1e-4},
    "adopt": {"lr": 1e-3},
    "adan": {"lr": 1e-3},
    "adamp": {"lr": 1e-3},
    "sgdp": {"lr": 1e-2, "momentum": 0.9},
    "prodigy": {},
    "dadaptadam": {},
    "dadaptsgd": {},
    "dadaptlion": {},
    "dadaptadan": {},
    "dadaptadagrad": {},
}


def measure(name: str) -> dict[str, float]:
    """Runs in the child process: torch.compile's start-up, then each of the first three steps."""
    import fastoptim

    start = time.perf_counter()
    torch.compile(lambda x: x + 1, dynamic=True)(torch.ones(3))  # loads inductor and the compiler
    startup = time.perf_counter() - start
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(9)])
    optimizer = fastoptim.create_optimizer(name, model.parameters(), backend="compiled", **OPTIMIZERS[name])
    data = torch.randn(32, 64)
    times = []
    for _ in range(3):
        model(data).square().mean().backward()
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
        optimizer.zero_grad()
    return {"startup": startup, "step1": times[0], "step2": times[1], "step3": times[2]}


def cold(name: str) -> dict[str, float]:
    """Measures ``name`` in a fresh interpreter with an empty inductor cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        child = subprocess.run(
            [sys.executable, __file__, "--child", name], env=env, capture_output=True, text=True
        )
    if child.returncode != 0:
        raise SystemExit(f"{name} failed:\n{child.stderr[-2000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, a fresh process and inductor cache each\n")
    print("| optimizer | torch.compile start-up (s) | step 1 (s) | steps 1-2 (s) | step 3 (ms) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.optimizers:
        times = cold(name)
        print(
            f"| {name} | {times['startup']:.1f} | {times['step1']:.1f} | "
            f"{times['step1'] + times['step2']:.1f} | {times['step3'] * 1e3:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
