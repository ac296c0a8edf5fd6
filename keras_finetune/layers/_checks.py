"""Argument checks shared by the layers."""

from __future__ import annotations

import keras

_DATA_FORMATS = ("channels_last", "channels_first")


def check_data_format(data_format) -> str:
    """`data_format`, or Keras's `image_data_format()` when None; a ValueError otherwise."""
    if data_format is None:
        return keras.config.image_data_format()
    if data_format not in _DATA_FORMATS:
        raise ValueError(
            f'`data_format` must be "channels_last", "channels_first" or None. '
            f"Received: data_format={data_format!r}"
        )
    return data_format
