"""keras_finetune: the fine-tuning playbook as parts that plug into Keras 3.

Submodules and names load on first use, so `keras-finetune --help` answers
without importing TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_NAMES = {
    "build_classifier": "heads",
    "discriminative_optimizer": "optimizers",
    "fine_tune": "recipe",
    "freeze": "freezing",
    "lr_find": "callbacks",
    "smooth_labels": "losses",
    "trainable_summary": "freezing",
    "unfreeze": "freezing",
}
_SUBMODULES = (
    "backbones", "callbacks", "distribute", "freezing", "heads", "image_folders", "layers", "losses", "models",
    "optimizers", "recipe", "report",
)

__all__ = ["__version__", *_NAMES, *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
