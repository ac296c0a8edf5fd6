"""Argument checks shared by the callbacks."""

from __future__ import annotations

import math

import numpy as np


def is_int(value) -> bool:
    """An int or numpy integer, and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_count(value, argument: str, minimum: int) -> int:
    """`value` as an int, or a ValueError naming `argument` unless it is an int >= `minimum`."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"`{argument}` must be an int >= {minimum}. Received: {argument}={value!r}")
    return int(value)


def check_positive(value, argument: str) -> float:
    """`value` as a float, or a ValueError naming `argument` unless it is a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise ValueError(f"`{argument}` must be a number > 0. Received: {argument}={value!r}")
    return float(value)


def check_epoch(value, argument: str) -> None:
    """A ValueError naming `argument` unless it is an int epoch >= 0 or a float fraction in [0, 1)."""
    if is_int(value):
        if value < 0:
            raise ValueError(
                f"`{argument}` must be an epoch >= 0 or a fraction in [0, 1). Received: {argument}={value!r}"
            )
    elif isinstance(value, (float, np.floating)):
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"A float `{argument}` is a fraction of the planned epochs, "
                f"in [0, 1). Received: {argument}={value!r}"
            )
    else:
        raise ValueError(
            f"`{argument}` must be an int epoch or a float fraction. Received: {argument}={value!r}"
        )


def epoch_of(value, epochs: int) -> int:
    """The epoch a `check_epoch` value names in a `fit` of `epochs` epochs (a fraction is floored)."""
    return int(value) if is_int(value) else math.floor(value * epochs)
