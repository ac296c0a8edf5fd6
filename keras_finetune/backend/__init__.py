"""What differs between Keras's backends, kept in one place as Keras keeps its trainers.

Keras runs `fit` in three ways. On TensorFlow and PyTorch the train step
updates the model's variables in place. On JAX it is a pure function of the
model's state: during an epoch the variables hold nothing (`fit` keeps the
state outside them and puts it back when the epoch ends), an optimizer
updates exactly the variables it was built over, and a variable that a
traced function reads without being handed it is frozen into the trace.
The parts of keras_finetune are written with `keras.ops` once; the few
things that must be done differently per backend are these functions, taken
from `_tensorflow`, `_jax` or `_torch` by `keras.backend.backend()` (the first and last
share what updating variables in place makes the same, in `_in_place`):

- `scope(model)`: where a callback creates or assigns variables of a model
  being fit (a `tf.distribute` strategy's scope on TensorFlow);
- `one_device(model)`: whether `fit` runs the model's step on one device;
- `sync(model)`: during `fit`, make the model's variables (weights,
  optimizer state) current before a callback reads or sets them, so that the
  next step starts from what the callback left (a no-op where the variables
  always are current);
- `assigning(pure, targets, sources, xla)`: a callable `run(when=None)` that
  sets the variables `targets` to `pure(values of sources)`, compiled for the
  backend, where `when` (a traced bool) is true or not given;
- `step_then(model, step, then)`: a train step that runs `step`, the one
  `fit` would call, and then `then()`, stateful Keras code traced into it
  (an update after every step, as Keras's own `use_ema` has), or None where
  `fit` would not call a model's own `train_step` (JAX with Flax NNX);
- `compiled(pure)`: a pure function of tensors, compiled for the backend;
- `train_subset(model)`: let the model's optimizer, built over every variable
  that some phase trains, update those that train now;
- `strategy(chosen)`: what `fit` distributes over, logged: on TensorFlow a
  `tf.distribute` strategy (`chosen`, or the one the machine calls for), on
  JAX a `keras.distribution` (`chosen`, or `DataParallel` over every device
  when there are several, else None), on PyTorch None (one device);
  `made_in(model, chosen)` whether a model's variables were made for it,
  `fitting(chosen)` the context `fit` runs in for it;
- `train_step(model, step, *args)`, `test_step(model, step, *args)`: a
  model's custom steps from one function, `step(data, training) -> (loss,
  logs)` written as stateful Keras code (forward pass, trackers, metrics);
  `*args` is what `fit` hands a step: `(data,)`, or `(state, data)` on JAX;
- `prepared_step(model, prepare, step, *args)`: Keras's own `step` on
  `prepare(data)`, `prepare` stateful Keras code run before it (a random
  layer, whose seeds must advance in `fit`'s state on JAX);
- `STEP_UPDATES_VARIABLES`: whether the train step assigns variables itself
  (so a callback may trace an update of its own into it); where it does not
  (JAX), a variable the step reads without being handed it is a constant of
  the trace, which changes only when the step is traced again;
- `COMPILES_IMAGE_TRANSFORMS`: whether a compiled step can hold Keras's
  rotation, zoom and translation layers. They say `supports_jit=False`
  (TensorFlow's XLA lacks their transform op), so a model holding them
  trains uncompiled under `jit_compile="auto"`; JAX compiles them
  (`MixingModel` does: 7.2x the uncompiled step's images/s at 32x32,
  1.8-1.9x at 96x96 on 2 CPU cores, benchmarks/RESULTS.md).
"""

import importlib

import keras

_module = importlib.import_module(f"{__name__}._{keras.backend.backend()}")

scope = _module.scope
one_device = _module.one_device
sync = _module.sync
assigning = _module.assigning
step_then = _module.step_then
compiled = _module.compiled
train_subset = _module.train_subset
strategy = _module.strategy
made_in = _module.made_in
fitting = _module.fitting
train_step = _module.train_step
test_step = _module.test_step
prepared_step = _module.prepared_step
STEP_UPDATES_VARIABLES = _module.STEP_UPDATES_VARIABLES
COMPILES_IMAGE_TRANSFORMS = _module.COMPILES_IMAGE_TRANSFORMS

__all__ = ["COMPILES_IMAGE_TRANSFORMS", "STEP_UPDATES_VARIABLES", "assigning", "compiled", "fitting", "made_in", "one_device", "prepared_step", "scope", "strategy", "sync", "test_step", "train_step", "train_subset"]
