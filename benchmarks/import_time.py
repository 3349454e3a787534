"""What ``import fastoptim`` costs on top of ``import torch``, and what it loads.

Each import runs in a fresh interpreter, alternating the two, and the median of ``--runs`` is
reported; a check that neither ``torch._dynamo`` nor ``torch._inductor`` was imported goes with it.

Usage::

    python benchmarks/import_time.py --runs 11
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

_TIMED = """
import sys, time
start = time.perf_counter()
import torch
middle = time.perf_counter()
{extra}
end = time.perf_counter()
loaded = [m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor"))]
print(middle - start, end - middle, len(loaded))
"""


def _run(extra: str) -> tuple[float, float, int]:
    out = subprocess.run(
        [sys.executable, "-c", _TIMED.format(extra=extra)], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    torch_alone, with_fastoptim, added, compiled = [], [], [], []
    for _ in range(args.runs):
        torch_alone.append(_run("")[0])
        base, extra, loaded = _run("import fastoptim")
        with_fastoptim.append(base + extra)
        added.append(extra)
        compiled.append(_run("import fastoptim\nfastoptim.runners.load('compiled')")[1])
        if loaded:
            raise SystemExit(f"import fastoptim loaded {loaded} dynamo/inductor modules")
    print(f"median of {args.runs} fresh interpreters")
    print(f"import torch:                          {statistics.median(torch_alone) * 1e3:7.0f} ms")
    print(f"import fastoptim, after torch:         {statistics.median(added) * 1e3:7.0f} ms")
    print(f"+ the compiled backend (first use):    {statistics.median(compiled) * 1e3:7.0f} ms")
    print("torch._dynamo / torch._inductor loaded by import fastoptim: none")


if __name__ == "__main__":
    main()
