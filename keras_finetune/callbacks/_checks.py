"""Argument checks shared by the callbacks."""

from __future__ import annotations

import numpy as np


def is_int(value) -> bool:
    """An int or numpy integer, and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_count(value, argument: str, minimum: int) -> int:
    """`value` as an int, or a ValueError naming `argument` unless it is an int >= `minimum`."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"`{argument}` must be an int >= {minimum}. Received: {argument}={value!r}")
    return int(value)
