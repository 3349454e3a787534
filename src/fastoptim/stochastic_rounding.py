r"""Stochastic rounding of bf16 parameters: unbiased writes without a compensation buffer.

With ``stochastic_rounding=True`` a bf16 parameter's new value :math:`x` (computed in float32)
is written as one of the two bf16 values around it, the upper one with probability
:math:`(x - \lfloor x \rfloor) / (\lceil x \rceil - \lfloor x \rfloor)`: on average the update is
kept exactly, small decoupled decay included, where round-to-nearest drops every update smaller
than half a bf16 step. Unlike Kahan summation it keeps no buffer: 2 bytes a parameter less.

On the bits: a float32's low 16 bits are what bf16 drops; adding 16 random bits to them and
clearing them rounds the magnitude up exactly with that probability (sign and magnitude are
apart in the format, so this holds for negative values too). Non-finite values are kept.

The random bits come from a counter-based hash (splitmix64's finaliser) of the step's seed, the
parameter's stream number and each element's index, in integer tensor arithmetic only, so that
every backend draws them alike and a compiled step needs no random generator of its own. The
step's seed is drawn from the optimizer's own ``torch.Generator`` (seeded from torch's global
generator when the optimizer is built); its state is in ``state_dict()``, so a resumed run draws
the same bits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: splitmix64's increment and finaliser multipliers, as signed 64-bit integers.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
#: Elements a parameter may have before its stream's counters run into the next stream's.
_STREAM_STRIDE = 1 << 40
#: The ``state_dict()`` entry holding the generator's state.
STATE_KEY = "fastoptim_rounding_rng"


def _shifted(x: Tensor, bits: int) -> Tensor:
    """``x >> bits`` as an unsigned shift (torch shifts signed integers arithmetically)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def random_16_bits(like: Tensor, seed: Tensor | int, stream: Tensor | int) -> Tensor:
    """16 random bits (int32 in [0, 65536)) per element of ``like``, from (seed, stream, index)."""
    index = torch.arange(like.numel(), dtype=torch.int64, device=like.device).view(like.shape)
    z = (index + stream * _STREAM_STRIDE) * _GOLDEN + seed
    z = (z ^ _shifted(z, 30)) * _MIX1
    z = (z ^ _shifted(z, 27)) * _MIX2
    z = z ^ _shifted(z, 31)
    return _shifted(z, 48).to(torch.int32)


def round_to_bf16(x: Tensor, seed: Tensor | int, stream: Tensor | int) -> Tensor:
    """Float32 ``x`` stochastically rounded to a bf16 value (returned in float32, exact in bf16)."""
    bits = x.view(torch.int32)
    rounded = ((bits + random_16_bits(x, seed, stream)) & -65536).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x)


class RoundingSource:
    """An optimizer's random seeds for stochastic rounding, and its parameters' stream numbers.

    Args:
        seed: The generator's seed; None draws one from torch's global generator.
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator().manual_seed(seed)
        #: id of a parameter -> (its stream number, that number as a tensor on its device).
        self._streams: dict[int, tuple[int, Tensor]] = {}

    def step_seed(self, device: torch.device) -> Tensor:
        """A new seed for one bucket's step (a 0-d int64 tensor, so compiled steps take it as input)."""
        value = torch.randint(0, 2**62, (1,), generator=self.generator)
        return value.view(()).to(device)

    def stream(self, param: Tensor, number: int) -> Tensor:
        """``param``'s stream number (its position in the optimizer), kept as a 0-d tensor."""
        kept = self._streams.get(id(param))
        if kept is None or kept[0] != number:
            kept = self._streams[id(param)] = (
                number,
                torch.tensor(number, dtype=torch.int64, device=param.device),
            )
        return kept[1]

    def state_dict(self) -> Tensor:
        """The generator's state."""
        return self.generator.get_state()

    def load_state_dict(self, state: Any) -> None:
        """Restores :meth:`state_dict`'s generator state."""
        self.generator.set_state(torch.as_tensor(state, dtype=torch.uint8).cpu())
