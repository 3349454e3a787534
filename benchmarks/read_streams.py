"""What an elementwise kernel's time follows on this machine: the tensors it reads, or its bytes.

The roofline of ``step_speed.py`` counts bytes: every element read or written once, over the
bandwidth of a copy. This script times compiled elementwise kernels over float32 tensors of the
benchmark model's size that read ``R`` tensors and write ``W`` of them back in place (an
optimizer's parameter and states), or write a tensor they never read (DAdaptSGD's ``z``), all
interleaved in one process (``fastoptim.bench.speed.time_interleaved``). Each time is printed
against the copy (one read, one write), next to what the byte count and the read count predict.

On the 2-core development VM the read count predicts the time and the byte count does not: a
write back to a tensor the kernel has just read costs next to nothing, a tensor written without
being read costs a read (its lines are fetched before they are written). An optimizer step's
floor on such a machine is then the tensors it reads per parameter, not its bytes.

The kernels marked "streamed" are compiled with ``cpu_codegen.streaming_stores``, as the
compiled runner compiles its steps: their write-only tensors are stored around the caches,
without the read of each line (DAdaptSGD's step with momentum 0 reads 3 tensors, writes one
back and the parameter without reading it).

Usage::

    python benchmarks/read_streams.py
    python benchmarks/read_streams.py --elements 20000000 --rounds 15
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from fastoptim.bench.speed import time_interleaved
from fastoptim.runners.compiled.cpu_codegen.streaming_stores import streamed_stores

#: ``(reads, in-place writes, write-only tensors)`` per kernel; the first is the copy.
KERNELS = [
    (1, 1, 0),
    (2, 1, 0),
    (2, 2, 0),
    (3, 1, 0),
    (3, 3, 0),
    (4, 1, 0),
    (4, 3, 0),
    (4, 4, 0),
    (5, 3, 0),
    (6, 3, 0),
    (1, 0, 1),
    (2, 0, 1),
    (3, 1, 1),
    (4, 3, 1),
]
#: Kernels also timed with their write-only tensors streamed.
STREAMED = [(1, 0, 1), (2, 0, 1), (3, 1, 1)]


def _kernel(reads: int, writes: int, write_only: int, tensors: list[torch.Tensor], streamed: bool = False):
    """A compiled step over ``tensors`` with that traffic: a sum of the reads, written back scaled.

    Compiled at once (inductor's graph cache off, so that the plain and the streamed kernel of one
    traffic do not share an entry), with the stores rewritten when ``streamed``.
    """

    def step(*xs: torch.Tensor) -> None:
        if streamed:  # read, so that dynamo keys the compiled code on it too
            pass
        total = xs[0]
        for x in xs[1:reads]:
            total = total + x
        for i in range(writes):
            xs[i].copy_(total * (0.5 + i))
        for i in range(write_only):
            xs[reads + i].copy_(total * (0.25 + i))

    compiled = torch.compile(step, dynamic=False)
    inputs = tensors[: reads + write_only]
    rewrite = streamed_stores() if streamed else contextlib.nullcontext()
    with torch._inductor.config.patch(fx_graph_cache=False), rewrite:
        compiled(*inputs)
    return lambda: compiled(*inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=20_000_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(KERNELS))
    tensors = [torch.rand(args.elements) for _ in range(7)]
    variants = [(*traffic, False) for traffic in KERNELS] + [(*traffic, True) for traffic in STREAMED]
    kernels = [_kernel(*variant[:3], tensors, streamed=variant[3]) for variant in variants]
    times = time_interleaved(kernels, args.rounds)
    copy = times[0]
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.elements / 1e6:.0f}M float32 elements\n")
    print("| reads | in-place writes | write-only | stores | ms | x copy | bytes predict | reads predict |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for (reads, writes, write_only, streamed), seconds in zip(variants, times, strict=True):
        by_bytes = (reads + writes + write_only) / 2
        by_reads = reads + write_only
        stores = "streamed" if streamed else "plain"
        print(
            f"| {reads} | {writes} | {write_only} | {stores} | {seconds * 1e3:.2f} | {seconds / copy:.2f} "
            f"| {by_bytes:.1f} | {by_reads} |"
        )


if __name__ == "__main__":
    main()
