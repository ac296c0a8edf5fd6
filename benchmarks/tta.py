"""Test-time augmentation on the demo task: accuracy (paired over seeds) and time against a plain predict.

For each seed, the demo's `fine_tune` recipe trains on its 3-shot digits
(`keras_finetune.demo`); its held-out images (1767) are then predicted
plainly and with `tta_predict` (the glyphs base's one-pixel shifts, no
flips: a flipped digit is another digit; fastai's beta 0.25). Printed: the
accuracy of each and their paired difference (mean ± std over seeds), and
the median time of each prediction with its ratio (TTA should cost n + 1
passes' work).

    python benchmarks/tta.py [--seeds 0,1,2,10,11,12,13,14] [--n 8]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_finetune import demo, glyphs, tta_predict  # noqa: E402
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
        shifts = image_augmentation(**{**glyphs.AUGMENTATION, "seed": seed})
        tta, tta_seconds = timed(lambda: tta_predict(model, held_out, shifts, n=args.n, flip=False, batch_size=32))
        rows.append((seed, np.mean(plain.argmax(-1) == truth), np.mean(tta.argmax(-1) == truth), plain_seconds, tta_seconds))
        print(f"seed {seed:3d}: plain {rows[-1][1]:.1%}  tta {rows[-1][2]:.1%}  ({plain_seconds:.2f} s, {tta_seconds:.2f} s)", flush=True)
    _, plain, tta, plain_seconds, tta_seconds = (np.array(column) for column in zip(*rows))
    difference = 100 * (tta - plain)
    print(f"\n3-shot digits, fine_tune with every part, seeds {args.seeds}; tta_predict n={args.n}, shifts, no flips, beta 0.25")
    print(f"  plain predict   {100 * plain.mean():5.1f} ± {100 * plain.std():4.1f} %")
    print(f"  tta_predict     {100 * tta.mean():5.1f} ± {100 * tta.std():4.1f} %   paired {difference.mean():+.1f} ± {difference.std():.1f} points")
    print(f"  time: median {np.median(plain_seconds):.3f} s plain, {np.median(tta_seconds):.3f} s tta: "
          f"ratio {np.median(tta_seconds / plain_seconds):.1f} (n + 1 = {args.n + 1} passes' work)")


if __name__ == "__main__":
    main()
