"""Progress bars on stderr (tqdm), shown only to a person watching a terminal."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, description: str, enabled: bool) -> Any:
    """A tqdm bar of ``total`` units; a silent one unless ``enabled`` and stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=description,
        disable=not (enabled and sys.stderr.isatty()),
        file=sys.stderr,
        dynamic_ncols=True,
    )
