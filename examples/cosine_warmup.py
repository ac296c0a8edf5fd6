"""Cosine annealing with a linear warm-up, per epoch (PyTorch's CosineAnnealingLR plus warm-up).

    python examples/cosine_warmup.py      # a few seconds on a CPU
"""

import keras
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune.callbacks import CosineAnnealing
from keras_finetune.freezing import unfreeze
from keras_finetune.heads import build_classifier


def main():
    base = unfreeze(pretrained_base())
    x, y = synthetic_images(256, seed=1)
    model = build_classifier(base, 4, pooling="flatten")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    schedule = CosineAnnealing(t_max=6, eta_min=1e-5, warmup_epochs=2)   # 2 + 6 epochs
    history = model.fit(x, y, epochs=8, batch_size=32, verbose=0, callbacks=[schedule])
    print(f"learning rate per epoch {[round(r, 8) for r in history.history['learning_rate']]}")
    print(f"held-out accuracy {accuracy(model, *synthetic_images(256, seed=2)):.3f}")


if __name__ == "__main__":
    main()
