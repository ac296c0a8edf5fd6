"""Test-time augmentation on the demo task: accuracy (paired over seeds) and time against a plain predict.

For each seed, the demo's `fine_tune` recipe trains on its 3-shot digits
(`keras_finetune.demo`); its held-out images (1767) are then predicted
plainly and with `tta_predict` (the glyphs base's one-pixel shifts, no
flips: a flipped digit is another digit; fastai's beta 0.25), once from
the arrays (views drawn in a `tf.data` map) and once from a
`keras.utils.PyDataset` of them (views drawn with the backend's ops, the
path without TensorFlow). Printed: the accuracy of each and their paired
difference to the plain prediction (mean ± std over seeds), and the median
time of each prediction with its ratio (TTA should cost n + 1 passes' work).

    python benchmarks/tta.py [--seeds 0,1,2,10,11,12,13,14] [--n 8]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_finetune import demo, glyphs, tta_predict  # noqa: E402
from keras_finetune.array_batches import ArrayBatches  # noqa: E402
from keras_finetune.layers import image_augmentation  # noqa: E402
from keras_finetune.pretrained import load_base  # noqa: E402


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,10,11,12,13,14")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        (images, labels), (held_out, truth) = demo.target_task("digits", 3, seed)
        model = demo.fine_tune_recipe(load_base("glyphs"), images, labels, seed, args.epochs).model
        model.predict(held_out[:32], verbose=0)  # traced before timing
        plain, plain_seconds = timed(lambda: model.predict(held_out, batch_size=32, verbose=0))
        row = {"plain predict": (plain, plain_seconds)}
        for name, data in (("tta_predict, arrays", held_out), ("tta_predict, PyDataset", ArrayBatches(held_out, truth, 32, 10, shuffle=False))):
            shifts = image_augmentation(**{**glyphs.AUGMENTATION, "seed": seed})
            row[name] = timed(lambda: tta_predict(model, data, shifts, n=args.n, flip=False, batch_size=32))
        rows.append({name: (100 * np.mean(predicted.argmax(-1) == truth), seconds) for name, (predicted, seconds) in row.items()})
        print(f"seed {seed:3d}: " + "  ".join(f"{accuracy:.1f}% ({seconds:.2f} s)" for accuracy, seconds in rows[-1].values()), flush=True)
    print(f"\n3-shot digits, fine_tune with every part, seeds {args.seeds}; tta_predict n={args.n}, shifts, no flips, beta 0.25")
    accuracy = {name: np.array([row[name][0] for row in rows]) for name in rows[0]}
    seconds = {name: np.array([row[name][1] for row in rows]) for name in rows[0]}
    print(f"  {'':24s} accuracy      paired to plain   median time, ratio to plain (n + 1 = {args.n + 1} passes' work)")
    for name in accuracy:
        difference = accuracy[name] - accuracy["plain predict"]
        paired = "" if name == "plain predict" else f"{difference.mean():+.1f} ± {difference.std():.1f}"
        ratio = np.median(seconds[name] / seconds["plain predict"])
        print(f"  {name:24s} {accuracy[name].mean():5.1f} ± {accuracy[name].std():4.1f} %  {paired:15s}   {np.median(seconds[name]):.3f} s  {ratio:.1f}")


if __name__ == "__main__":
    main()
