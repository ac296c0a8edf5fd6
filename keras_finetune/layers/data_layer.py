"""Layers that run in a `tf.data` pipeline and inside a model, on every Keras backend.

Keras's own preprocessing layers do this: inside a `tf.data` pipeline (a
TensorFlow graph) they compute with TensorFlow's ops whatever the backend,
and with the backend's ops elsewhere, so the same layer can be mapped over a
dataset and put in a JAX or PyTorch model. Their base class is private to
Keras and takes a single input, while the mixing layers take `(images,
labels)` and every layer here keeps its images' dtype; `DataLayer` is the
same mechanism for them, built on the two small pieces of Keras it needs,
`DynamicBackend` (the ops of a named backend, as `self.backend`) and
`in_tf_graph`, both in Keras since 3.0.

A `DataLayer` computes with `self.backend` (`self.backend.numpy.where`,
`self.backend.random.uniform`, ...) in place of `keras.ops`, and draws with
`self._get_seed_generator(self.backend.name)`: its own generator, or, in a
pipeline on another backend, a TensorFlow one with the same seed (the
backend's variables cannot be read or advanced from a TensorFlow graph).
Keras's own layers keep theirs the same way, under the same method name;
`pipeline_seed_states` finds both kinds, so a pipeline can be reseeded.
"""

from __future__ import annotations

import keras
from keras.src.utils.backend_utils import DynamicBackend, in_tf_graph

__all__ = ["DataLayer", "pipeline_seed_states"]

_TF = "tensorflow"


class DataLayer(keras.layers.Layer):
    """Computes with TensorFlow's ops in a `tf.data` pipeline and with the backend's elsewhere.

    A subclass that draws random numbers sets `self.seed` and
    `self.generator = keras.random.SeedGenerator(seed)`, as Keras's own
    layers do, and draws from `self._get_seed_generator(self.backend.name)`.
    Inputs keep their dtype.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.backend = DynamicBackend()
        self._convert_input_args = False  # images keep their dtype (uint8, float16...)
        self._allow_non_tensor_positional_args = True

    def __call__(self, *args, **kwargs):
        if keras.backend.backend() == _TF or not _in_pipeline(args):
            return super().__call__(*args, **kwargs)
        self.backend.set_backend(_TF)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self.backend.reset()

    def _get_seed_generator(self, backend=None):
        """The generator of draws made with `backend`'s ops: a TensorFlow one of the same seed in a pipeline."""
        if backend is None or backend == keras.backend.backend():
            return self.generator
        generator = self.__dict__.get("_pipeline_generator")
        if generator is None:
            with _backend(self, _TF):
                generator = keras.random.SeedGenerator(self.seed, backend=self.backend)
            # Past Keras's tracking: a TensorFlow variable is no weight of a JAX or PyTorch model.
            object.__setattr__(self, "_pipeline_generator", generator)
        return generator


class _backend:
    """`layer.backend` set to `name` inside the block."""

    def __init__(self, layer, name: str):
        self.layer, self.name, self.before = layer, name, layer.backend.name

    def __enter__(self):
        self.layer.backend.set_backend(self.name)

    def __exit__(self, *exc):
        self.layer.backend.set_backend(self.before)


def _in_pipeline(args) -> bool:
    """Whether the inputs are tensors of a TensorFlow graph (a `tf.data` map), not symbolic Keras ones."""
    flat = keras.tree.flatten(args)
    return bool(flat) and not isinstance(flat[0], keras.KerasTensor) and in_tf_graph()


def pipeline_seed_states(*layers) -> list:
    """The state variables the random layers in `layers` draw from when mapped over a `tf.data` pipeline.

    On TensorFlow, their generators' own states. On JAX and PyTorch, the
    TensorFlow generators they use in a pipeline (created here if the
    pipeline has not run yet), for keras_finetune's layers and Keras's own
    preprocessing layers alike; a random layer that draws in a pipeline some
    other way is refused, since reseeding would miss it.
    """
    from keras_finetune.callbacks.epoch_seeds import seed_states

    if keras.backend.backend() == _TF:
        return seed_states(*layers)
    states, covered = [], set()
    for layer in layers:
        for inner in layer._flatten_layers():
            generator = getattr(inner, "generator", None)
            if not isinstance(generator, keras.random.SeedGenerator) or id(generator.state) in covered:
                continue
            covered.add(id(generator.state))
            with _backend(inner, _TF):
                states.append(inner._get_seed_generator(_TF).state)
    for layer in layers:
        for variable in layer.variables:
            if variable.name == "seed_generator_state" and id(variable) not in covered:
                raise TypeError(
                    f"{layer.name!r} holds a layer that draws random numbers ({variable.path}) in a way a tf.data "
                    f"pipeline on the {keras.backend.backend()} backend cannot be reseeded from. Use Keras's "
                    f"preprocessing layers or keras_finetune's. Received: a layer of type {type(layer).__name__}"
                )
    return states
