"""The bench's results as one JSON-ready dictionary, the table printed from it, and its file.

The JSON file is the record: the table and the plots are drawn from the same dictionary, so
they always agree with it. Times are in seconds in the JSON and in milliseconds in the table;
a loss that diverged, or a backend that could not run, is ``null`` in the JSON and ``-`` in the
table.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import fastoptim
from fastoptim.bench.speed import SpeedResult
from fastoptim.bench.task import TrainResult

#: Version of the JSON layout; bump it when a field changes meaning.
FORMAT_VERSION = 1


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and machine, so that results can be compared knowingly."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "fastoptim": fastoptim.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
    }


def optimizer_entry(train: TrainResult, speeds: Sequence[SpeedResult]) -> dict[str, Any]:
    """One optimizer's results: convergence, state size, curves and step speed per backend."""
    roofline = speeds[0] if speeds else None
    return {
        "name": train.name,
        "hyperparameters": train.hyperparameters,
        "train_loss": _finite(train.train_loss),
        "validation_loss": _finite(train.validation_loss),
        "diverged": train.diverged,
        "state_bytes_per_param": train.state_bytes_per_param,
        "roofline_bytes_per_param": roofline.roofline_bytes_per_param if roofline else None,
        "roofline_bytes_estimated": not roofline.roofline_known if roofline else None,
        "train_backend": train.backend,
        "train_seconds_per_step": train.seconds_per_step,
        "train_optimizer_seconds_per_step": train.optimizer_seconds_per_step,
        "curves": {
            "train_loss": [_finite(v) for v in train.train_curve],
            "eval_steps": train.eval_steps,
            "validation_loss": [_finite(v) for v in train.validation_curve],
        },
        "speed": {
            s.backend: {
                "seconds_per_step": s.seconds,
                "roofline_seconds": s.roofline_seconds,
                "roofline_multiple": s.roofline_multiple,
                "rounds": s.rounds,
                "error": s.error,
            }
            for s in speeds
        },
    }


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


#: Decimal places of each number in the table (tests parse the table back with them).
DIGITS = {"loss": 4, "bytes": 1, "ms": 3, "multiple": 2}


def format_hyperparameters(hyperparameters: dict[str, Any]) -> str:
    """``lr=0.003, weight_decay=0.1``: what the bench passed (the rest are the class defaults)."""
    return ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in hyperparameters.items()
    )


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table, one row per optimizer, one time and roofline column pair per backend."""
    backends = results["settings"]["backends"]
    header = ["optimizer", "hyperparameters", "train loss", "validation loss", "state B/param"]
    for backend in backends:
        header += [f"{backend} ms/step", f"{backend} x roofline"]
    rows = [header, ["---", "---"] + ["---:"] * (len(header) - 2)]
    for entry in results["optimizers"]:
        row = [
            entry["name"],
            format_hyperparameters(entry["hyperparameters"]),
            _cell(entry["train_loss"], DIGITS["loss"]),
            _cell(entry["validation_loss"], DIGITS["loss"]),
            _cell(entry["state_bytes_per_param"], DIGITS["bytes"]),
        ]
        for backend in backends:
            speed = entry["speed"].get(backend, {})
            seconds = speed.get("seconds_per_step")
            row += [
                _cell(None if seconds is None else seconds * 1e3, DIGITS["ms"]),
                _cell(speed.get("roofline_multiple"), DIGITS["multiple"]),
            ]
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def write_json(results: dict[str, Any], path: Path) -> None:
    """Writes ``results`` as strict JSON (no NaN or infinity: those are null)."""
    path.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")


def build_results(
    *,
    device: torch.device,
    settings: dict[str, Any],
    data: dict[str, Any],
    speed: dict[str, Any] | None,
    trains: Sequence[TrainResult],
    speeds: Sequence[SpeedResult],
    wall_seconds: float,
) -> dict[str, Any]:
    """The whole run as one dictionary: what the JSON file holds and the table shows."""
    return {
        "format_version": FORMAT_VERSION,
        "environment": environment(device),
        "settings": settings,
        "data": data,
        "speed": speed,
        "optimizers": [optimizer_entry(t, [s for s in speeds if s.name == t.name]) for t in trains],
        "wall_seconds": wall_seconds,
    }


def format_header(results: dict[str, Any]) -> str:
    """Lines that say what was run, on what, before the table."""
    env, settings, data, speed = (results[k] for k in ("environment", "settings", "data", "speed"))
    model = settings["model"]
    lines = [
        f"fastoptim {env['fastoptim']}, torch {env['torch']}, Python {env['python']}, "
        f"{env['device']} ({env['device_name']}), {settings['threads']} of {env['threads']} CPU threads",
        f"training: {data['corpus']} corpus ({data['train_bytes']:,} training and "
        f"{data['validation_bytes']:,} validation bytes from {data['documents']} documents), "
        f"{settings['steps']} steps of {settings['batch_size']} x {model['context']} bytes, "
        f"transformer width {model['width']} depth {model['depth']}, {settings['dtype']}, "
        f"backend {settings['train_backend']}",
    ]
    if speed is not None:
        lines.append(
            f"step speed: {speed['parameters'] / 1e6:.2f}M parameters in {speed['tensors']} tensors, "
            f"{settings['dtype']}, bandwidth {speed['bandwidth_bytes_per_second'] / 1e9:.1f} GB/s, "
            f"median of up to {speed['rounds']} interleaved steps"
        )
    return "\n".join(lines)


def format_notes(results: dict[str, Any]) -> str:
    """Lines after the table: the hyperparameters' origin, divergences, failures, estimates."""
    lines = [
        "hyperparameters: chosen for this task, not the defaults: each learning rate is the best of a "
        "sweep on the default preset (fastoptim.bench.settings.HYPERPARAMETERS); what is not shown is "
        "the class default"
    ]
    for entry in results["optimizers"]:
        if entry["diverged"]:
            lines.append(f"{entry['name']} diverged (non-finite loss); its losses are shown as -")
        if entry["roofline_bytes_estimated"]:
            lines.append(
                f"{entry['name']}: roofline bytes estimated from its state "
                f"({entry['roofline_bytes_per_param']} B/param)"
            )
        for backend, speed in entry["speed"].items():
            if speed["error"]:
                lines.append(f"{entry['name']} could not run on backend {backend}: {speed['error']}")
    return "\n".join(lines)
