"""PNG figures drawn from the results dictionary with matplotlib's Agg backend (no display).

* ``loss_curves.png``: training loss (smoothed minibatch loss) and validation loss per step;
* ``step_times.png``: milliseconds per ``optimizer.step()`` by optimizer and backend, with each
  optimizer's roofline time as a black tick and the roofline multiple written at each bar.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from fastoptim.bench.report import format_hyperparameters


def _smooth(values: list[float | None], weight: float) -> list[float]:
    """Exponential moving average with bias correction; missing values carry the average on."""
    out, average, total = [], 0.0, 0.0
    for value in values:
        if value is not None:
            average = weight * average + (1 - weight) * value
            total = weight * total + (1 - weight)
        out.append(average / total if total else math.nan)
    return out


#: Line styles and markers cycled over the optimizers, so that curves lying on each other (Adam
#: and AdamW) both show.
LINE_STYLES = ("-", "--", "-.", ":", (0, (3, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "v", "D")


def _colors(count: int) -> list[Any]:
    """Distinct colours: tab10's, then (past 10) tab20's lighter shades."""
    if count <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(count)]
    tab20 = plt.get_cmap("tab20")
    return [tab20((2 * i) % 20 + (2 * i) // 20 % 2) for i in range(count)]


def plot_losses(results: dict[str, Any], path: Path) -> None:
    """Training and validation loss curves of every optimizer, side by side."""
    entries = results["optimizers"]
    figure, (train_axis, validation_axis) = plt.subplots(1, 2, figsize=(12, 6.4), sharey=True)
    ceiling = []
    for index, (entry, color) in enumerate(zip(entries, _colors(len(entries)), strict=True)):
        curves = entry["curves"]
        style = LINE_STYLES[index % len(LINE_STYLES)]  # lines that coincide stay visible
        label = f"{entry['name']} ({format_hyperparameters(entry['hyperparameters'])})"
        train = _smooth(curves["train_loss"], 0.9)
        train_axis.plot(range(1, len(train) + 1), train, linestyle=style, color=color, label=label)
        validation = [math.nan if v is None else v for v in curves["validation_loss"]]
        marker = MARKERS[index % len(MARKERS)]
        validation_axis.plot(
            curves["eval_steps"], validation, linestyle=style, marker=marker, color=color, markersize=3
        )
        ceiling += [v for v in curves["validation_loss"] if v is not None]
    settings = results["settings"]
    if ceiling:  # keep the interesting range: from the best loss to the worst of the final ones
        finals = [e["validation_loss"] for e in entries if e["validation_loss"] is not None] or ceiling
        low, high = min(ceiling), max(finals)
        margin = max(high - low, 0.05)
        train_axis.set_ylim(low - 0.3 * margin, high + margin)
    train_axis.set_title("training loss (minibatch, smoothed; tuned learning rates)")
    validation_axis.set_title("validation loss")
    for axis in (train_axis, validation_axis):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    train_axis.set_ylabel("cross-entropy (nats per byte)")
    figure.legend(loc="lower center", ncol=3, fontsize="small", frameon=False)
    figure.suptitle(
        f"{settings['task']} corpus, {settings['steps']} steps, {settings['dtype']}, "
        f"device {results['environment']['device']}"
    )
    figure.tight_layout(rect=(0, 0.22, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_step_times(results: dict[str, Any], path: Path) -> None:
    """Horizontal bars of ms per step, grouped by optimizer, one bar per backend."""
    entries = results["optimizers"]
    backends = results["settings"]["backends"]
    height = 0.8 / len(backends)
    figure, axis = plt.subplots(figsize=(9, 1.2 + 0.45 * len(entries) * max(1, len(backends) / 2)))
    for b, (backend, color) in enumerate(zip(backends, _colors(len(backends)), strict=True)):
        for row, entry in enumerate(entries):
            speed = entry["speed"].get(backend, {})
            seconds = speed.get("seconds_per_step")
            if seconds is None:
                continue
            y = row + (b - (len(backends) - 1) / 2) * height
            axis.barh(y, seconds * 1e3, height=height, color=color, label=backend if row == 0 else None)
            axis.text(seconds * 1e3, y, f" {speed['roofline_multiple']:.1f}x", va="center", fontsize=7)
    for row, entry in enumerate(entries):
        roofline = next((s["roofline_seconds"] for s in entry["speed"].values()), None)
        if roofline is not None:
            axis.plot([roofline * 1e3] * 2, [row - 0.45, row + 0.45], color="black", linewidth=1.5)
    axis.plot([], [], color="black", linewidth=1.5, label="roofline")
    axis.set_yticks(range(len(entries)), [e["name"] for e in entries])
    axis.invert_yaxis()
    axis.set_xlabel("ms per optimizer.step() (labels: multiple of the roofline)")
    speed, settings, environment = results["speed"], results["settings"], results["environment"]
    threads = f" ({settings['threads']} threads)" if environment["device"] == "cpu" else ""
    axis.set_title(
        f"{speed['parameters'] / 1e6:.2f}M parameters in {speed['tensors']} tensors, {settings['dtype']}, "
        f"{environment['device_name']}{threads}, {speed['bandwidth_bytes_per_second'] / 1e9:.1f} GB/s",
        fontsize=9,
    )
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
