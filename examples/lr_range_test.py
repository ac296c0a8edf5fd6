"""The LR range test (Smith, arXiv 1506.01186): sweep the rate up, pick it where the loss falls fastest.

`lr_find` restores the weights and the optimizer afterwards, so the model trains
from where it was, at the suggested rate.

    python examples/lr_range_test.py [plot.png]      # a few seconds on a CPU
"""

import sys

import keras
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune import lr_find
from keras_finetune.freezing import freeze
from keras_finetune.heads import build_classifier


def main():
    base = freeze(pretrained_base())
    x, y = synthetic_images(256, seed=1)
    model = build_classifier(base, 4, pooling="flatten")
    model.compile(keras.optimizers.Adam(), "sparse_categorical_crossentropy")
    finder = lr_find(model, (x, y), min_lr=1e-6, max_lr=1.0, steps=60, plot_path=sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"suggested learning rate {finder.suggestion:.2e} (lowest loss at {finder.min_loss_lr:.2e})")
    model.optimizer.learning_rate.assign(finder.suggestion)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    print(f"held-out accuracy {accuracy(model, *synthetic_images(256, seed=2)):.3f}")


if __name__ == "__main__":
    main()
