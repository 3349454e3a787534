"""Replacing an attribute of torch's internals for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def replaced(owner: Any, name: str, value: Any, enabled: bool = True) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block and what it was before after it.

    Args:
        owner: The class or module holding the attribute.
        name: The attribute's name.
        value: Its value inside the block.
        enabled: When False, nothing is replaced (a torch that lacks the attribute).
    """
    if not enabled:
        yield
        return
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def wrapped(
    owner: Any, name: str, wrap: Callable[[Any], Any], enabled: bool = True
) -> contextlib.AbstractContextManager[None]:
    """``owner.name`` is ``wrap(owner.name)`` inside the block.

    The replacement is built on what the attribute is when this is called, so that patches of
    one attribute nest when each is called inside the blocks of the ones before.
    """
    value = wrap(getattr(owner, name)) if enabled else None
    return replaced(owner, name, value, enabled)
