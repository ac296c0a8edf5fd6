"""The `keras-finetune` command."""

from __future__ import annotations

import argparse
import os
import sys

from keras_finetune import __version__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-finetune",
        description="Fine-tuning parts for Keras 3 (TensorFlow backend).",
    )
    parser.add_argument("--version", action="version", version=f"keras-finetune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="transfer learning on scikit-learn's bundled digits (no download)",
        description=(
            "Pre-train a small CNN on digits 0-4, then learn digits 5-9 from a few labelled "
            "images per class: the same network from scratch, a linear probe on the frozen base, "
            "the copied two-fit recompile recipe, fine_tune with every part, and a 5x smaller "
            "network from scratch and distilled from the fine_tune model. Prints held-out "
            "accuracy and seconds per recipe and saves a PNG report of the fine_tune run."
        ),
    )
    demo.add_argument("--shots", type=_positive_int, default=3,
                      help="labelled images per target class (default: 3)")
    demo.add_argument("--seeds", type=_positive_int, default=3,
                      help="repetitions with different splits and initialisations (default: 3)")
    demo.add_argument("--epochs", type=_positive_int, default=100,
                      help="fine-tuning epochs (default: 100)")
    demo.add_argument("--pretrain-epochs", type=_positive_int, default=15,
                      help="pre-training epochs on digits 0-4 (default: 15)")
    demo.add_argument("--report", default="keras-finetune-demo.png",
                      help="PNG report of seed 0's fine_tune run (default: keras-finetune-demo.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.shots > 100:
        parser.error(f"--shots must be at most 100 (digits has ~180 images per class), received {args.shots}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    from keras_finetune.demo import run_demo

    run_demo(shots=args.shots, seeds=args.seeds, epochs=args.epochs,
             pretrain_epochs=args.pretrain_epochs, report=args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
