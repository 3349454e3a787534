"""One bench run from validated options: the convergence section, the speed section, the files."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastoptim.bench.data import load_corpus
from fastoptim.bench.progress import progress_bar
from fastoptim.bench.report import build_results, write_json
from fastoptim.bench.settings import DTYPES, OptimizerSpec, Preset
from fastoptim.bench.speed import SpeedResult, speed_section
from fastoptim.bench.task import Batches, TrainResult, train

JSON_FILE = "results.json"
LOSS_PLOT = "loss_curves.png"
SPEED_PLOT = "step_times.png"


@dataclass
class Options:
    """A bench run, checked: every field is valid on this machine."""

    specs: list[OptimizerSpec]
    task: str
    preset_name: str
    #: The preset with the command line's ``--steps`` and ``--speed-params`` applied.
    preset: Preset
    device: torch.device
    dtype: str
    #: Backends to time; the first also trains.
    backends: list[str]
    output: Path
    seed: int
    quiet: bool
    #: torch's CPU threads for the whole run.
    threads: int

    def settings(self) -> dict[str, Any]:
        """The options as the JSON results record them."""
        preset = self.preset
        return {
            "task": self.task,
            "preset": self.preset_name,
            "optimizers": [spec.name for spec in self.specs],
            "steps": preset.steps,
            "batch_size": preset.batch_size,
            "model": dataclasses.asdict(preset.model),
            "eval_every": preset.eval_every,
            "eval_windows": preset.eval_batches * preset.batch_size,
            "dtype": self.dtype,
            "backends": self.backends,
            "train_backend": self.backends[0],
            "seed": self.seed,
            "threads": self.threads,
        }


def run(options: Options) -> dict[str, Any]:
    """Trains every optimizer, times every optimizer on every backend, returns the results."""
    start = time.perf_counter()
    corpus = load_corpus(options.task, options.preset.corpus_bytes)
    batches = Batches.draw(corpus, options.preset, options.preset.steps, options.seed)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        trains, speed, speeds = _sections(options, batches, start)
    finally:
        torch.set_num_threads(default_threads)
    return build_results(
        device=options.device,
        settings=options.settings(),
        data=corpus.summary(),
        speed=speed,
        trains=trains,
        speeds=speeds,
        wall_seconds=time.perf_counter() - start,
    )


def _sections(
    options: Options, batches: Batches, start: float
) -> tuple[list[TrainResult], dict[str, Any] | None, list[SpeedResult]]:
    """The convergence section, then the speed section (unless its size is 0)."""
    preset, dtype, show = options.preset, DTYPES[options.dtype], not options.quiet
    with progress_bar(len(options.specs) * preset.steps, "training", show) as bar:
        trains = [
            train(
                spec,
                batches,
                preset,
                dtype=dtype,
                device=options.device,
                backend=options.backends[0],
                seed=options.seed,
                progress=bar,
            )
            for spec in options.specs
        ]
    log(f"training took {time.perf_counter() - start:.1f} s", options.quiet)
    speed, speeds = None, []
    if preset.speed_params > 0:
        speed_start = time.perf_counter()
        with progress_bar(len(options.specs), "step speed", show) as bar:
            speed, speeds = speed_section(
                options.specs,
                options.backends,
                n_params=preset.speed_params,
                n_tensors=preset.speed_tensors,
                dtype=dtype,
                device=options.device,
                rounds=preset.speed_rounds,
                warmup=preset.speed_warmup,
                seconds=preset.speed_seconds,
                seed=options.seed,
                progress=bar,
            )
        log(f"step speed took {time.perf_counter() - speed_start:.1f} s", options.quiet)
    return trains, speed, speeds


def write_outputs(results: dict[str, Any], output: Path) -> list[Path]:
    """Writes the JSON file and the plots into ``output`` (created if missing); returns their paths."""
    from fastoptim.bench.plots import plot_losses, plot_step_times  # matplotlib: only when writing

    output.mkdir(parents=True, exist_ok=True)
    paths = [output / JSON_FILE, output / LOSS_PLOT]
    write_json(results, paths[0])
    plot_losses(results, paths[1])
    if results["speed"] is not None:
        paths.append(output / SPEED_PLOT)
        plot_step_times(results, paths[2])
    elif (output / SPEED_PLOT).exists():  # an older run's plot would contradict this JSON
        (output / SPEED_PLOT).unlink()
    return paths


def log(message: str, quiet: bool) -> None:
    """A progress message on stderr, unless quiet."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
