"""keras_finetune: the fine-tuning playbook as parts that plug into Keras 3.

Importing the package registers its Keras classes (losses, layers, models,
optimizers) with Keras's serialization, so `import keras_finetune` is all a `.keras`
file that holds one of them needs to reload. Other submodules and names load
on first use.
"""

import importlib

__version__ = "0.1.0"

_NAMES = {
    "build_classifier": "heads",
    "discriminative_optimizer": "optimizers",
    "fine_tune": "recipe",
    "layer_decay_optimizer": "optimizers",
    "freeze": "freezing",
    "lr_find": "callbacks",
    "smooth_labels": "losses",
    "trainable_summary": "freezing",
    "tta_predict": "tta",
    "unfreeze": "freezing",
}
_SUBMODULES = (
    "backbones", "backend", "blocks", "callbacks", "distribute", "freezing", "heads", "image_folders", "layers", "losses", "models",
    "optimizers", "recipe", "report", "tta",
)

__all__ = ["__version__", *_NAMES, *_SUBMODULES]


# The modules whose classes a saved model may name: importing them registers those classes with Keras.
for _module in ("layers", "losses", "models", "optimizers"):
    importlib.import_module(f"{__name__}.{_module}")
del _module


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
