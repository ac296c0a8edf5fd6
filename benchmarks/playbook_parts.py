"""EMA, one-cycle and layer-wise decay on the demo task: accuracy paired over seeds, and time.

For each seed, the demo's `fine_tune` recipe (`keras_finetune.demo.RECIPE`:
3-shot handwritten digits on the shipped `glyphs` base, 60 epochs) trains
as the demo runs it, and once with each variant, from the same seed:

- EMA in place of SWA (`swa=None, ema=0.99`: with 2 steps an epoch, 120
  steps in all, the warm-up `(1 + n) / (10 + n)` sets the decay throughout);
- one-cycle in place of the cosine schedule (`schedule="one_cycle"`: one
  cycle for the frozen phase, one for the unfrozen one, as fastai's
  `fine_tune`);
- layer-wise decay 0.75 (`layer_decay=0.75`: the base's four convolution
  blocks at 0.75^4 ... 0.75 of the head's rate).

Printed: held-out accuracy (1767 images) of each, the paired difference to
the recipe (mean ± std over seeds, and how many seeds it helped), and the
median ratio of `fine_tune`'s wall time to the recipe's. Seeds 0-2 are the
demo's; 10-19 a set no setting was tuned on.

    python benchmarks/playbook_parts.py [--seeds 0,1,2,10,...,19]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_finetune import demo  # noqa: E402
from keras_finetune.pretrained import load_base  # noqa: E402

VARIANTS = {
    "fine_tune, every part (SWA, cosine)": {},
    "  EMA 0.99 in place of SWA": {"swa": None, "ema": 0.99},
    "  one-cycle in place of cosine": {"schedule": "one_cycle"},
    "  layer-wise decay 0.75": {"layer_decay": 0.75},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,10,11,12,13,14,15,16,17,18,19")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    accuracy = {name: [] for name in VARIANTS}
    seconds = {name: [] for name in VARIANTS}
    for seed in seeds:
        (images, labels), (held_out, truth) = demo.target_task("digits", 3, seed)
        for name, changes in VARIANTS.items():
            start = time.perf_counter()
            model = demo.fine_tune_recipe(load_base("glyphs"), images, labels, seed, args.epochs, **changes).model
            seconds[name].append(time.perf_counter() - start)
            accuracy[name].append(100 * np.mean(model.predict(held_out, batch_size=256, verbose=0).argmax(-1) == truth))
        print(f"seed {seed:3d}: " + "  ".join(f"{values[-1]:5.1f}" for values in accuracy.values()), flush=True)
    reference = next(iter(VARIANTS))
    print(f"\n3-shot digits, {args.epochs} epochs, seeds {args.seeds}; held-out accuracy, %")
    print(f"{'':38s}{'accuracy':>16s}{'paired difference':>22s}{'helped':>8s}{'time':>7s}")
    for name in VARIANTS:
        values = np.array(accuracy[name])
        line = f"{name:38s}{values.mean():9.1f} ± {values.std():4.1f}"
        if name != reference:
            difference = values - np.array(accuracy[reference])
            ratio = np.median(np.array(seconds[name]) / np.array(seconds[reference]))
            line += f"{difference.mean():+14.1f} ± {difference.std():3.1f}{np.sum(difference > 0):5d}/{len(seeds)}{ratio:7.2f}x"
        print(line)


if __name__ == "__main__":
    main()
