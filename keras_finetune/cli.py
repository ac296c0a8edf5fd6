"""The `keras-finetune` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import warnings

from keras_finetune import __version__


def _number(convert, accept, expected: str):
    """An argparse `type`: `convert` the text, and refuse it unless `accept(value)`."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda value: value >= 1, "a positive integer")
_positive_float = _number(float, lambda value: math.isfinite(value) and value > 0, "a positive number")
_fraction = _number(float, lambda value: 0.0 <= value < 1.0, "a number in [0, 1)")


def _epoch(text: str) -> int | float:
    """An epoch count (an integer) or a fraction of the epochs (a number in [0, 1))."""
    try:
        value = int(text)
    except ValueError:
        return _fraction(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an epoch >= 0 or a fraction in [0, 1), received {text!r}")
    return value


def _unfreeze(text: str) -> int | str | None:
    """`all`, `none`, a number of layers from the top, or a layer name."""
    if text.lower() == "none":
        return None
    return int(text) if text.isdigit() else text


def _weights(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _add_folders(command, required: bool = True) -> None:
    command.add_argument("--data", required=required, metavar="DIR",
                         help="training images, one subfolder per class (image_dataset_from_directory layout)")
    command.add_argument("--val", metavar="DIR", help="validation images of the same classes (default: hold out --val-split of --data)")
    command.add_argument("--val-split", type=_fraction, default=0.2, metavar="F",
                         help="fraction of each class of --data held out when there is no --val (default: 0.2)")
    command.add_argument("--image-size", type=_positive_int, metavar="N",
                         help="images are resized to N x N (default: the model's, else 224)")
    command.add_argument("--epochs", type=_positive_int, default=10, help="epochs (default: 10)")
    command.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default: 32)")
    command.add_argument("--learning-rate", type=_positive_float,
                         help="(default: 1e-3; 1e-2 for train on the shipped glyphs base, the rate its head needs)")
    command.add_argument("--seed", type=int, default=0, help="seed of the split, shuffle and draws (default: 0)")
    command.add_argument("--out", default="keras-finetune-out", metavar="DIR",
                         help="where the model, classes.json, epochs.csv and report.png go (default: keras-finetune-out)")


def _add_model(command) -> None:
    command.add_argument("--model", required=True, metavar="PATH",
                         help="a .keras classifier with classes.json beside it (as train and distill write them)")
    command.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default: 32)")
    command.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    command.add_argument("--tta", type=_positive_int, default=0, metavar="N",
                         help="average each image's probabilities over N augmented views (test-time augmentation)")


def _add_train(commands) -> None:
    train = commands.add_parser(
        "train",
        help="fine-tune a pretrained network on an image folder",
        description=(
            "Fine-tune the shipped glyphs base, a keras.applications backbone or a .keras feature "
            "extractor on an image folder with fine_tune: dropout head, the base frozen for --frozen-epochs then unfrozen "
            "(--unfreeze) at --unfreeze-lr-factor times the rate (BatchNorm with learned statistics kept "
            "frozen), cosine schedule with warm-up, augmentation, MixUp/CutMix, label smoothing and SWA. "
            "A base without pretrained weights trains whole from the first epoch. Writes model.keras, "
            "classes.json, epochs.csv and report.png into --out; an interrupted run continues with --resume."
        ),
    )
    _add_folders(train, required=False)
    train.add_argument("--backbone", default="MobileNetV3Small", metavar="NAME|PATH",
                       help="glyphs (shipped with the package: grey 8x8 glyphs, no download), a "
                            "keras.applications name, or a .keras base (default: MobileNetV3Small)")
    train.add_argument("--weights", type=_weights, default="pretrained", metavar="pretrained|none|PATH",
                       help="the backbone's weights: pretrained (glyphs: its own; keras.applications: "
                            "ImageNet's, downloaded, needs network access; imagenet says the same), none, "
                            "or a local weights file (default: pretrained)")
    train.add_argument("--frozen-epochs", type=_epoch, metavar="E",
                       help="epochs with the base frozen, or a fraction of --epochs "
                            "(default: 0.25; 0 for a base without pretrained weights)")
    train.add_argument("--unfreeze", type=_unfreeze, default="all", metavar="all|N|LAYER|none",
                       help="what trains after the frozen epochs: the whole base, its top N blocks (layers where it has none), "
                            "everything from a layer up, or nothing (default: all)")
    train.add_argument("--unfreeze-lr-factor", type=_positive_float, metavar="F",
                       help="the base's rate over the head's (default: 0.1; 1 for a base without pretrained weights)")
    train.add_argument("--label-smoothing", type=_fraction, default=0.1, help="(default: 0.1)")
    train.add_argument("--swa", type=_epoch, default=0.75, metavar="E",
                       help="first epoch averaged by SWA, or a fraction of --epochs (default: 0.75)")
    train.add_argument("--no-swa", action="store_true", help="no weight averaging")
    train.add_argument("--no-augmentation", action="store_true", help="no flips, rotations, zoom, shifts, colour jitter")
    train.add_argument("--no-mixing", action="store_true", help="no MixUp/CutMix")
    train.add_argument("--early-stopping", type=_positive_int, metavar="N",
                       help="stop when the validation loss has not improved for N epochs (an SWA average "
                            "already started is kept and put in the model)")
    train.add_argument("--mixed-precision", action="store_true",
                       help="compute in float16 on a GPU, bfloat16 elsewhere (weights stay float32)")
    train.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs into --out/tensorboard")
    train.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out, with the arguments it was started with")


def _add_distill(commands) -> None:
    distill = commands.add_parser(
        "distill",
        help="distil a .keras classifier into a smaller network on an image folder",
        description=(
            "Train a student (a keras.applications name, given a dropout head, or a .keras "
            "classifier) to match a .keras teacher's softened outputs and the labels of an image "
            "folder with the Distiller (loss alpha * student loss + (1 - alpha) * T^2 KL), cosine "
            "schedule with warm-up. Writes student.keras, classes.json, epochs.csv and report.png into --out; "
            "an interrupted run continues with --resume."
        ),
    )
    distill.add_argument("--teacher", metavar="PATH", help="the trained classifier, a .keras file (required unless --resume)")
    distill.add_argument("--student", metavar="NAME|PATH",
                         help="a keras.applications name or a .keras classifier (required unless --resume)")
    distill.add_argument("--student-weights", type=_weights, default=None, metavar="pretrained|none|PATH",
                         help="weights of a student given by name (default: none)")
    _add_folders(distill, required=False)
    distill.add_argument("--alpha", type=_fraction, default=0.1, help="weight of the loss on the labels (default: 0.1)")
    distill.add_argument("--temperature", type=_positive_float, default=3.0, help="(default: 3.0)")
    distill.add_argument("--resume", action="store_true",
                         help="continue the interrupted run in --out, with the arguments it was started with")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-finetune",
        description="Fine-tuning parts for Keras 3 (TensorFlow backend).",
    )
    parser.add_argument("--version", action="version", version=f"keras-finetune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="the fine-tuning playbook as an ablation, on the shipped glyphs base (no download)",
        description=(
            "Learn a target from a few labelled images per class on the shipped glyphs base "
            "(pretrained on 107 printed glyphs): scikit-learn's handwritten digits (--target digits) "
            "or 10 Greek letters the base never saw (--target greek). Rows: the same network from "
            "scratch, a linear probe on the frozen base, the copied two-fit recipe and the same made "
            "fair, fine_tune with every part and with each part removed, and a 7x smaller student "
            "from scratch and distilled. Prints held-out accuracy (mean ± std over seeds), each row's "
            "paired difference to fine_tune, seconds per run, and saves a PNG report."
        ),
    )
    demo.add_argument("--target", choices=("digits", "greek"), default="digits",
                      help="the target task (default: digits)")
    demo.add_argument("--shots", type=_positive_int, default=3,
                      help="labelled images per target class, at most 100 (default: 3)")
    demo.add_argument("--seeds", type=_positive_int, default=3,
                      help="repetitions with different images and initialisations (default: 3)")
    demo.add_argument("--first-seed", type=int, default=0,
                      help="the first seed; settings were tuned on 100-104 (default: 0)")
    demo.add_argument("--epochs", type=_positive_int, default=60,
                      help="epochs of every recipe; the two students train twice as many (default: 60)")
    demo.add_argument("--report", default="keras-finetune-demo.png",
                      help="PNG report of the first seed's fine_tune run and the ablation (default: keras-finetune-demo.png)")
    demo.add_argument("--jobs", type=_positive_int, default=None,
                      help="worker processes the runs are spread over (default: one per CPU core, at most 4)")
    _add_train(commands)
    _add_distill(commands)
    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy, per-class precision/recall and confusion matrix of a model on a labelled folder",
        description="Evaluate a saved classifier on an image folder whose subfolders are classes of the model.",
    )
    _add_model(evaluate)
    evaluate.add_argument("--data", required=True, metavar="DIR", help="labelled images, one subfolder per class")
    predict = commands.add_parser(
        "predict",
        help="the predicted class and its probability for each image",
        description="Predict the class of each image file (or of every image in the folders named), one line each.",
    )
    _add_model(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of them")
    predict.add_argument("--top-k", type=_positive_int, default=1, metavar="K",
                         help="the K most likely classes per image (default: 1)")
    return parser


def _train_arguments(args) -> dict:
    """`commands.train`'s arguments from the command line (all but --out and --resume)."""
    return {
        "data": args.data, "val": args.val, "val_split": args.val_split, "backbone": args.backbone,
        "weights": args.weights, "image_size": args.image_size, "epochs": args.epochs,
        "frozen_epochs": args.frozen_epochs, "unfreeze": args.unfreeze, "unfreeze_lr_factor": args.unfreeze_lr_factor,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate, "label_smoothing": args.label_smoothing,
        "augmentation": not args.no_augmentation, "mixing": not args.no_mixing,
        "swa": None if args.no_swa else args.swa, "early_stopping": args.early_stopping,
        "mixed_precision": args.mixed_precision, "tensorboard": args.tensorboard, "seed": args.seed,
    }


def _distill_arguments(args) -> dict:
    """`commands.distill`'s arguments from the command line (all but --out and --resume)."""
    return {
        "teacher": args.teacher, "student": args.student, "student_weights": args.student_weights, "data": args.data,
        "val": args.val, "val_split": args.val_split, "image_size": args.image_size, "epochs": args.epochs,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate, "alpha": args.alpha,
        "temperature": args.temperature, "seed": args.seed,
    }


# Each command that resumes: its arguments from the command line, and those it cannot start without.
_RESUMABLE = {"train": (_train_arguments, ("data",)), "distill": (_distill_arguments, ("teacher", "student", "data"))}


def _resumable(args) -> None:
    """`train` or `distill`: started, or with --resume continued with the arguments it was started with."""
    from keras_finetune import commands

    arguments_of, required = _RESUMABLE[args.command]
    run = getattr(commands, args.command)
    given = arguments_of(args)
    if not args.resume:
        missing = [f"--{name}" for name in required if given[name] is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required, unless --resume")
        run(**given, out=args.out)
        return
    saved = commands.resume_arguments(args.out, args.command)
    defaults = arguments_of(build_parser().parse_args([args.command]))
    for name, value in commands.run_record(given).items():  # paths absolute, as run.json keeps them
        if value != defaults[name] and value != saved.get(name):
            option = "--" + name.replace("_", "-")
            raise ValueError(
                f"--resume continues the run as it was started, with {option} {saved.get(name)!r}. Received: {value!r}"
            )
    print(f"Resuming the run in {args.out} with the arguments it was started with ({commands.RUN_FILE})")
    run(**saved, out=args.out, resume=True)


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _print_evaluation(result: dict) -> None:
    classes = result["classes"]
    width = max(len(name) for name in [*classes, "class"])
    correct = int(sum(result["confusion_matrix"][i][i] for i in range(len(classes))))
    print(f"accuracy {result['accuracy']:.1%} ({correct} of {result['images']} images)")
    for name, scores in result["per_class"].items():
        print(f"{name:<{width}}  precision {_percent(scores['precision']):>6}  "
              f"recall {_percent(scores['recall']):>6}  images {scores['images']}")
    columns = max(width, *(len(str(n)) for row in result["confusion_matrix"] for n in row))
    print("confusion matrix (rows: true class, columns: predicted class)")
    print(" " * width + "".join(f"  {name:>{columns}}" for name in classes))
    for name, row in zip(classes, result["confusion_matrix"]):
        print(f"{name:<{width}}" + "".join(f"  {count:>{columns}}" for count in row))


def _run(args) -> None:
    if args.command in _RESUMABLE:
        _resumable(args)
        return
    from keras_finetune import commands

    if args.command == "evaluate":
        result = commands.evaluate(args.model, args.data, batch_size=args.batch_size, tta=args.tta)
        if args.json:
            print(json.dumps(result))
        else:
            _print_evaluation(result)
    else:
        results = commands.predict(args.model, args.images, top_k=args.top_k, batch_size=args.batch_size, tta=args.tta)
        if args.json:
            print(json.dumps(results))
        for result in [] if args.json else results:
            print(f"{result['path']}  " + ", ".join(f"{t['class']} {t['probability']:.1%}" for t in result["top"]))


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Python warnings (ours: degenerate phases, an untrained base) as one line each on stderr."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"keras-finetune {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():  # the filters stay as they are: DeprecationWarnings are for developers
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo" and args.shots > 100:
        parser.error(f"--shots must be at most 100 (digits has ~180 images per class), received {args.shots}")
    if args.command == "demo" and args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the recipes have two phases), received {args.epochs}")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # AutoGraph's notes on traced functions
    if args.command == "demo":
        from keras_finetune.demo import run_demo

        run_demo(target=args.target, shots=args.shots, seeds=args.seeds, first_seed=args.first_seed,
                 epochs=args.epochs, report=args.report, jobs=args.jobs)
        return 0
    with _one_line_warnings(args.command):
        try:
            _run(args)
        except BrokenPipeError:  # the reader stopped early (`| head`): quiet, as other Unix tools are
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except (ValueError, ConnectionError, OSError) as error:  # bad input, a full disk: one line, no traceback
            print(f"keras-finetune {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
