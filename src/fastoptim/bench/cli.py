"""The ``fastoptim`` command line: ``fastoptim bench`` (also ``python -m fastoptim bench``).

Every option is checked before any work starts; a bad one gives one line on stderr and exit
status 2, never a traceback. Backends are those of :data:`fastoptim.runners.BACKENDS`, read at
run time, and the optimizer engine decides whether each one is available.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from fastoptim.bench.data import CORPORA
from fastoptim.bench.report import format_header, format_notes, format_table
from fastoptim.bench.run import Options, log, run, write_outputs
from fastoptim.bench.settings import DTYPES, PRESETS, optimizer_specs
from fastoptim.factory import OPTIMIZERS

#: What ``fastoptim bench`` needs beyond the library, all in the ``bench`` extra.
EXTRAS = ("matplotlib", "tqdm")
DEFAULT_OUTPUT = "bench-results"


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``fastoptim`` parser with its ``bench`` subcommand."""
    from fastoptim.runners import BACKENDS  # at run time: backends land in new releases

    parser = argparse.ArgumentParser(prog="fastoptim", description="fastoptim's command line.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = commands.add_parser(
        "bench",
        help="compare the optimizers: convergence on real text, and step speed against the roofline",
        description=(
            "Trains a small character-level transformer on text that ships with Python with each "
            "optimizer, times optimizer.step() per backend against the memory-bandwidth roofline, "
            "prints a table and writes results.json, loss_curves.png and step_times.png."
        ),
    )
    names = ", ".join(cls.__name__ for cls in OPTIMIZERS.values())
    bench.add_argument(
        "--optimizers", nargs="+", metavar="NAME", help=f"optimizers to compare (default: all: {names})"
    )
    bench.add_argument(
        "--task",
        choices=list(CORPORA),
        default="stdlib",
        help="text to train on: " + "; ".join(f"{k}: {v}" for k, v in CORPORA.items()) + " (default: stdlib)",
    )
    bench.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="default",
        help="sizes: default (about 90 s on 2 CPU cores) or tiny (seconds, for tests)",
    )
    bench.add_argument("--steps", type=_count(1), help="training steps per optimizer (default: the preset's)")
    bench.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, mps... (default: auto: cuda, then mps, then cpu)"
    )
    bench.add_argument(
        "--dtype", choices=list(DTYPES), default="fp32", help="parameter dtype (default: fp32)"
    )
    bench.add_argument(
        "--backends",
        nargs="+",
        default=["loop", "foreach"],
        metavar="BACKEND",
        help=f"backends to time, the first also trains; one of {', '.join(BACKENDS)} (default: loop foreach)",
    )
    bench.add_argument(
        "--output",
        type=Path,
        default=Path(DEFAULT_OUTPUT),
        help=f"results folder (default: {DEFAULT_OUTPUT})",
    )
    bench.add_argument("--seed", type=_count(0), default=0, help="seed of weights and batches (default: 0)")
    bench.add_argument(
        "--speed-params",
        type=_count(0),
        help="parameters of the step-speed section's model; 0 skips the section (default: the preset's, "
        "4M on CPU and 64M on accelerators)",
    )
    bench.add_argument(
        "--threads",
        type=_count(1),
        default=1,
        help="torch's CPU threads (default: 1: the model is small, the roofline is measured with the "
        "same threads, and on a busy machine several threads wait for each other at every kernel)",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bars or messages on stderr")
    return parser


def resolve_device(name: str) -> torch.device:
    """``auto`` or a device name, checked by allocating on it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"--device {name!r} is not a device name ({error})") from None
    try:
        torch.empty(1, device=device)
    except Exception as error:  # each device type fails its own way (AssertionError for CUDA)
        raise ValueError(f"--device {name!r} is not available here: {str(error).splitlines()[0]}") from None
    return device


def check_dtype(dtype: str, device: torch.device) -> None:
    """Raises ValueError if ``device`` cannot run the model's operations in ``dtype``."""
    try:
        x = torch.ones(2, 2, dtype=DTYPES[dtype], device=device, requires_grad=True)
        torch.nn.functional.layer_norm(x @ x, (2,)).sum().backward()
    except Exception as error:
        raise ValueError(
            f"--dtype {dtype} is not supported on {device}: {str(error).splitlines()[0]}"
        ) from None


def check_backends(names: Sequence[str], device: torch.device) -> list[str]:
    """The backends without repeats, each accepted by the optimizer engine (else ValueError)."""
    from fastoptim import SGD

    checked: list[str] = []
    for name in names:
        if name in checked:
            continue
        try:
            SGD([torch.zeros(1, device=device, requires_grad=True)], lr=0.1, backend=name)
        except ValueError as error:
            raise ValueError(f"--backends {name}: {error}") from None
        checked.append(name)
    return checked


def make_options(args: argparse.Namespace) -> Options:
    """Checks the parsed arguments against this machine; raises ValueError with a clear message."""
    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"--output {args.output} exists and is not a folder")
    device = resolve_device(args.device)
    check_dtype(args.dtype, device)
    preset = PRESETS[args.preset]
    speed_params = args.speed_params
    if speed_params is None:
        speed_params = preset.speed_params if device.type == "cpu" else preset.speed_params_accelerator
    preset = dataclasses.replace(preset, steps=args.steps or preset.steps, speed_params=speed_params)
    options = Options(
        specs=optimizer_specs(args.optimizers),
        task=args.task,
        preset_name=args.preset,
        preset=preset,
        device=device,
        dtype=args.dtype,
        backends=check_backends(args.backends, device),
        output=args.output,
        seed=args.seed,
        quiet=args.quiet,
        threads=args.threads,
    )
    try:  # last, so that a bad option leaves no folder behind; before the work, so that it is not lost
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--output {args.output}: cannot create the folder ({error.strerror})") from None
    return options


def bench(args: argparse.Namespace) -> int:
    """Runs ``fastoptim bench``: checks, trains, times, prints the table, writes the files."""
    missing = [name for name in EXTRAS if importlib.util.find_spec(name) is None]
    if missing:
        _error(f"bench needs {' and '.join(missing)}: pip install 'fastoptim[bench]'")
        return 1
    options = make_options(args)
    preset = options.preset
    log(
        f"fastoptim bench: {len(options.specs)} optimizer(s) x {preset.steps} steps on the {options.task} "
        f"corpus, then step speed on {' and '.join(options.backends)}; results in {options.output}/",
        options.quiet,
    )
    results = run(options)
    paths = write_outputs(results, options.output)
    notes = format_notes(results)
    print(format_header(results), format_table(results), *([notes] if notes else []), sep="\n\n")
    print(f"\nwrote {', '.join(str(path) for path in paths)} after {results['wall_seconds']:.1f} s")
    return 0


def _error(message: str) -> None:
    print(f"fastoptim bench: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastoptim`` command; returns the exit status.

    Args:
        argv: Arguments after the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed the usage and the error (or the help)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    try:
        return bench(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except (ValueError, TypeError) as error:
        _error(str(error))
        return 2
    except (OSError, RuntimeError) as error:
        _error(f"{type(error).__name__}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
