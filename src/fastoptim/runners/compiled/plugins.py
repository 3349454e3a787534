"""What a plugin may add to the compiled runner, and the plugins registered.

The core runner (:mod:`~fastoptim.runners.compiled.runner`) compiles each chunk's step with
``torch.compile`` and public options only. A plugin changes how chunks on some devices are
compiled or called: it registers a :class:`Plugin` with :func:`register` (the runner registry
imports the plugins it lists when the compiled runner is first used; the core never imports a
plugin). Each hook is optional; a plugin that returns None for a chunk leaves it to the core.

The one plugin today is :mod:`~fastoptim.runners.compiled.cpu_codegen` (inductor's CPU code
generation, patched; version-guarded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

#: ``rows_alone(optimizer, apply, rows, layouts) -> per row, whether it runs in a call of its own``.
RowsHook = Callable[..., list[bool]]


@dataclass(frozen=True, eq=False)
class Plugin:
    """Hooks a plugin adds to the compiled runner, on the devices it ``applies`` to.

    Attributes:
        name: For messages.
        applies: Whether the plugin takes part on a device.
        options: Inductor options added to the core's (a cache key for its patches, say).
        patches: A context manager the compilations run under.
        direct_step: ``direct_step(apply, algorithm, scalars, update_params, options, device,
            dtype)`` returns a callable that runs a chunk and returns its results, or None to
            leave the chunk to ``torch.compile``; None: every chunk goes to ``torch.compile``.
        rows_alone: Adds per-row inputs (a scratch buffer) and says which rows run alone.
        forget: Drops what the plugin keeps for an optimizer.
    """

    name: str
    applies: Callable[[torch.device], bool]
    options: dict[str, Any] = field(default_factory=dict)
    patches: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    direct_step: Callable[..., Any] | None = None
    rows_alone: RowsHook | None = None
    forget: Callable[[Any], None] | None = None


_PLUGINS: list[Plugin] = []


def register(plugin: Plugin) -> None:
    """Adds ``plugin`` (replacing one of the same name)."""
    _PLUGINS[:] = [p for p in _PLUGINS if p.name != plugin.name]
    _PLUGINS.append(plugin)


def plugin_for(device: torch.device) -> Plugin | None:
    """The last registered plugin that applies to ``device``, or None."""
    for plugin in reversed(_PLUGINS):
        if plugin.applies(device):
            return plugin
    return None


def registered() -> tuple[Plugin, ...]:
    """Every registered plugin."""
    return tuple(_PLUGINS)
